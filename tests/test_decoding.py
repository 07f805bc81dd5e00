"""Recommender and ForwardCounter on the tiny target: forward counts, output ids, batched == one by one."""

from __future__ import annotations

import json

import pytest
import torch

from modeling_padrec.data import code_token, load_dataset
from modeling_padrec.decoding import ForwardCounter, Recommender
from modeling_padrec.errors import PadrecError, TargetError
from modeling_padrec.target import build_preset_base, load_target
from modeling_padrec.tokenization import build_tokenizer


@pytest.fixture(scope="module")
def dataset(synthetic_dir):
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="module")
def rec(tiny_target, dataset):
    return Recommender(load_target(tiny_target), dataset)


def test_forward_counter_counts_each_forward_of_a_plain_model(dataset):
    tok = build_tokenizer(dataset.index)
    model = build_preset_base("qwen2-tiny", tok, seed=0).eval()
    ids = torch.tensor([[tok.bos_token_id, 10, 11, 12]])
    for new in (1, 7):
        with ForwardCounter(model) as counter, torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert out.shape[1] - ids.shape[1] == new
        assert counter.count == new
    with ForwardCounter(model) as counter, torch.inference_mode():
        model(ids)
        model(ids)
    assert counter.count == 2
    with torch.inference_mode():
        model(ids)  # after exit the hook is gone
    assert counter.count == 2


def test_recommend_output_excludes_the_prompt(rec, dataset):
    tm = rec.token_map
    user = dataset.eval_users("test")[0]
    r = rec.recommend(user)
    assert r.prompt_ids == rec.prompt(user, "test") and r.prompt_ids[-1] == tm.rec_id
    assert r.prompt_ids[0] == tm.bos_id
    levels = dataset.index.levels
    assert len(r.output_ids) == rec.list_len * (levels + 1) == rec.max_new_tokens
    assert r.output_ids[-1] == tm.eos_id and tm.rec_id not in r.output_ids
    assert r.output_ids[levels :: levels + 1][:-1] == [tm.sep_id] * (rec.list_len - 1)
    assert r.items == rec.items(r.output_ids) and len(set(r.items)) == rec.list_len and None not in r.items
    # the same call, made by hand, returns prompt + output
    ids = torch.tensor([r.prompt_ids])
    full = rec.generate(ids, torch.ones_like(ids))[0].tolist()
    assert full == r.prompt_ids + r.output_ids
    # the engine (default): one target forward per position where the catalog leaves a choice
    assert r.target_forwards == r.extra["choices"] == len(r.output_ids) - r.extra["forced_tokens"]
    assert json.loads(json.dumps(r.to_json()))["target_forwards"] == r.target_forwards
    # stock generate: one target forward per new token (PEFT wrapper included), the same list
    stock = rec.recommend(user, engine=None, do_sample=False)
    assert stock.output_ids == r.output_ids and stock.target_forwards == len(r.output_ids)


def test_recommend_history_is_cut_to_history_len(tiny_target, dataset):
    target = load_target(tiny_target)
    target.meta.history_len = 4
    rec4 = Recommender(target, dataset)
    user = dataset.eval_users("test")[0]
    history = dataset.history(user, "test")
    assert len(history) > 4
    prompt = rec4.prompt(user, "test")
    assert len(prompt) == 1 + 4 * (dataset.index.levels + 1)
    assert rec4.items(prompt[1:-1]) == history[-4:]
    assert len(rec4.recommend(user).items) == rec4.list_len


def test_recommend_batch_equals_recommend(rec, dataset):
    users = dataset.eval_users("test")[:10]
    lengths = {len(rec.prompt(u, "test")) for u in users}
    assert len(lengths) > 1, "the batch should need left padding"
    batched = rec.recommend_batch(users, batch_size=4)
    assert list(batched) == users
    for u in users:
        assert batched[u] == rec.recommend(u).items


def test_list_len_override(tiny_target, dataset):
    rec3 = Recommender(load_target(tiny_target), dataset, list_len=3)
    r = rec3.recommend(dataset.eval_users("valid")[0], "valid")
    assert len(r.items) == 3 == len(set(r.items)) and len(r.output_ids) == 3 * (dataset.index.levels + 1)


def test_recommend_with_prompt_lookup_is_lossless(rec, dataset):
    for user in dataset.eval_users("test")[:3]:
        plain = rec.recommend(user)
        assisted = rec.recommend(user, prompt_lookup_num_tokens=3)
        assert assisted.output_ids == plain.output_ids
        assert 1 <= assisted.target_forwards <= plain.target_forwards


def test_target_rejects_another_catalog(tiny_target, dataset, tmp_path, shared_data):
    target = load_target(tiny_target)
    with pytest.raises(TargetError, match="tokens"):
        Recommender(target, load_dataset(shared_data / "Instruments"))  # 5 tokens per item
    # same number of levels, other codes: the token layout differs
    folder = tmp_path / "other"
    folder.mkdir()
    levels = dataset.index.levels
    index = {str(i): [code_token(lv, i if lv == 0 else i % 2) for lv in range(levels)] for i in range(40)}
    (folder / "o.index.json").write_text(json.dumps(index))
    (folder / "o.inter.json").write_text(json.dumps({"u": [0, 1, 2, 3]}))
    with pytest.raises(TargetError):
        Recommender(target, load_dataset(folder))


def test_engine_and_generate_paths_write_the_same_lists(tiny_target, dataset):
    target = load_target(tiny_target)
    engine, stock = Recommender(target, dataset), Recommender(target, dataset, engine="generate")
    users = dataset.eval_users("test")[:12]
    assert engine.recommend_batch(users) == stock.recommend_batch(users, batch_size=5)
    for user in users[:4]:
        a, b = engine.recommend(user), stock.recommend(user)
        assert a.output_ids == b.output_ids and a.target_forwards < b.target_forwards
    with pytest.raises(PadrecError, match="--engine"):
        Recommender(target, dataset, engine="vllm")


def test_merged_lora_target_decodes_the_same_lists(tiny_target, dataset):
    merged = load_target(tiny_target, merge_lora=True)
    assert not hasattr(merged.model, "peft_config")  # plain transformers layers, no LoRA wrappers
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    users = dataset.eval_users("test")[:12]
    plain = Recommender(load_target(tiny_target), dataset).recommend_batch(users)
    assert Recommender(merged, dataset).recommend_batch(users) == plain
