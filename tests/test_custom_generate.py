"""The engine's ``custom_generate`` recipe, in process: left-padded batches, the catalog file, settings read from
``generate``'s arguments, and the refusals. The Hub path (by repo id, no padrec) is tested in test_hub.py."""

from __future__ import annotations

import torch
from draft_world import EOS, PAD, SEP, make_world
from safetensors.torch import save_file

from modeling_padrec.draft import new_draft
from modeling_padrec.engine import CatalogTrie, Engine, GenerationSettings
from modeling_padrec.engine.custom_generate import check_catalog, generate


def _world_with_catalog(tmp_path):
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=3)
    draft = new_draft(world.target, world.token_map, depth=3, seed=3)
    folder = tmp_path / "draft"
    draft.save_pretrained(folder)
    items = torch.tensor(world.items, dtype=torch.int32)
    save_file({"item_token_ids": items, "sep_token_id": torch.tensor(SEP), "eos_token_id": torch.tensor(EOS),
               "list_len": torch.tensor(3)}, folder / "catalog.safetensors")  # fmt: skip
    draft.name_or_path = str(folder)
    return world, draft, folder


def test_a_left_padded_batch_gives_each_row_its_engine_list(tmp_path):
    world, draft, folder = _world_with_catalog(tmp_path)
    prompts = [world.prompt([0, 1])[0].tolist(), world.prompt([2])[0].tolist()]
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, 3)
    world.target.generation_config.pad_token_id = PAD
    for kwargs in (
        {"assistant_model": draft},
        {"catalog": str(folder)},
        {"assistant_model": draft, "tree_width": 2},
        {"assistant_model": draft, "tree_budget": 3, "tree_acceptance": [(0.0, 0.4), (0.6, 0.9)]},
    ):
        out = generate(world.target, input_ids=ids, attention_mask=mask, **kwargs)
        for r, prompt in enumerate(prompts):
            expected = Engine(world.target, trie, settings=GenerationSettings(max_new_tokens=9)).generate(
                prompt
            )
            got = out[r, width:].tolist()
            assert got[: len(expected.output_ids)] == expected.output_ids
            assert all(t == PAD for t in got[len(expected.output_ids) :])
            assert expected.output_ids == world.generate(torch.tensor([prompt]), max_new_tokens=9)
    result = generate(
        world.target, input_ids=ids, attention_mask=mask, catalog=str(folder), return_dict_in_generate=True
    )
    assert torch.equal(result.sequences[:, :width], ids)


def test_sampling_settings_come_from_generate_arguments(tmp_path):
    world, draft, _ = _world_with_catalog(tmp_path)
    prompt = world.prompt([0])
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, 3)
    outs = set()
    for seed in range(12):
        out = generate(world.target, input_ids=prompt, assistant_model=draft, do_sample=True, temperature=5.0,
                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
        new = out[0, prompt.shape[1] :].tolist()
        state = trie.walk(new)
        assert state.done and not state.invalid  # every sampled list is a valid one
        outs.add(tuple(new))
    assert len(outs) > 1  # it really sampled
    short = generate(world.target, input_ids=prompt, assistant_model=draft, max_new_tokens=2)
    assert short.shape[1] == prompt.shape[1] + 2


def test_refusals(tmp_path):
    world, draft, folder = _world_with_catalog(tmp_path)
    prompt = world.prompt([0])
    trained = torch.tensor(world.items)
    check_catalog(trained, torch.cat([trained, trained[:1] * 0 + trained[0]]), "here")  # appended rows pass
    for bad, message in (
        (trained[[1, 0, *range(2, len(trained))]], "other codes"),
        (trained[:-1], "fewer items"),
        (trained[:, :1], "expected"),
    ):
        try:
            generate(world.target, input_ids=prompt, assistant_model=draft, catalog=bad)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"accepted a bad catalog ({message})")
    for kwargs, message in (
        ({}, "pass assistant_model"),
        ({"catalog": str(tmp_path)}, "catalog.safetensors"),
    ):
        try:
            generate(world.target, input_ids=prompt, **kwargs)
        except (ValueError, OSError) as e:
            assert message in str(e)
        else:
            raise AssertionError(message)
