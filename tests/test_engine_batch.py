"""Batched decoding is lossless per row: every request's output in a continuously batched run equals that
request decoded alone (and stock constrained ``generate``), whatever the batch size, the mixture of prompt and
list lengths, the draft, or the cut by ``max_new_tokens``."""

from __future__ import annotations

import random

import pytest
import torch
from draft_world import EOS, SEP, make_world
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import catalog_items
from test_engine_tree import make_draft
from transformers import DynamicCache

from modeling_padrec.draft import new_draft
from modeling_padrec.engine import CatalogTrie, Engine, GenerationSettings
from modeling_padrec.engine.batch import RaggedCache


def prompts_for(world, rng: random.Random, count: int) -> list[list[int]]:
    """Prompts of mixed lengths: empty histories up to a dozen items."""
    n = len(world.items)
    return [world.prompt([rng.randrange(n) for _ in range(rng.choice([0, 1, 3, 12]))])[0].tolist()
            for _ in range(count)]  # fmt: skip


def batch_outputs(engine: Engine, prompts, batch_size: int, **kwargs) -> dict:
    outputs = {}
    for index, out in engine.generate_batch(prompts, batch_size=batch_size, **kwargs):
        assert index not in outputs, f"request {index} finished twice"
        outputs[index] = out
    assert sorted(outputs) == list(range(len(prompts)))
    return outputs


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    levels=st.integers(1, 3),
    codes=st.integers(2, 4),
    num_items=st.integers(1, 14),
    list_len=st.integers(1, 8),
    shape=st.sampled_from(["random", "chains", "collisions"]),
    draft_kind=st.sampled_from(["none", "untrained", "agreeing", "adversarial", "noisy", "block"]),
    depth=st.integers(1, 8),
    batch_size=st.integers(1, 6),
    requests=st.integers(1, 9),
    cut=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_batched_rows_equal_batch_one_and_stock_generate(
    levels, codes, num_items, list_len, shape, draft_kind, depth, batch_size, requests, cut, seed
):
    bigram = draft_kind in ("agreeing", "adversarial")
    world = make_world(levels=levels, codes=codes, num_items=1, list_len=list_len, seed=seed, bigram=bigram)
    rng = random.Random(seed)
    world.items = catalog_items(world, rng, shape, num_items)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, list_len)
    full = list_len * (levels + 1)
    max_new = rng.randrange(1, full + 1) if cut else full
    draft = None if draft_kind == "none" else make_draft(world, draft_kind, depth, seed)
    engine = Engine(world.target, trie, draft, depth if draft is not None else None,
                    GenerationSettings(max_new_tokens=max_new))  # fmt: skip
    prompts = prompts_for(world, rng, requests)
    outputs = batch_outputs(engine, prompts, batch_size)
    for i, prompt in enumerate(prompts):
        alone = engine.generate(prompt)
        assert outputs[i].output_ids == alone.output_ids
        assert outputs[i].output_ids == world.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        # the same rounds as alone: the same proposals, accepted lengths and forwards
        assert outputs[i].target_forwards == alone.target_forwards
        if draft_kind != "block":  # alone, a block draft reads a run in one forward; the batch steps it
            assert outputs[i].forced_draft_steps == alone.forced_draft_steps
        assert [r.to_json() for r in outputs[i].rounds] == [r.to_json() for r in alone.rounds]


@pytest.mark.parametrize("with_draft", [False, True])
def test_sampled_rows_equal_batch_one_with_the_same_generators(with_draft):
    world = make_world(levels=3, codes=3, num_items=20, list_len=4, seed=5)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = new_draft(world.target, world.token_map, depth=3, seed=1) if with_draft else None
    settings_ = GenerationSettings(do_sample=True, temperature=1.0, max_new_tokens=16)
    engine = Engine(world.target, trie, draft, None, settings_)
    prompts = prompts_for(world, random.Random(0), 7)

    def generators():
        return [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]

    outputs = batch_outputs(engine, prompts, 3, generators=generators())
    alone = [engine.generate(p, generator=g) for p, g in zip(prompts, generators(), strict=True)]
    assert [outputs[i].output_ids for i in range(len(prompts))] == [a.output_ids for a in alone]
    assert len({tuple(a.output_ids) for a in alone}) > 1  # sampling did vary between requests


def test_continuous_batching_admits_waiting_requests_as_rows_finish():
    world = make_world(levels=2, codes=3, num_items=9, list_len=3, seed=2)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    engine = Engine(world.target, trie, settings=GenerationSettings(max_new_tokens=9))
    # short and long requests: a cut request finishes early and its row is reused
    prompts = prompts_for(world, random.Random(1), 11)
    order = [i for i, _ in engine.generate_batch(prompts, batch_size=4)]
    assert sorted(order) == list(range(11))
    finished = []
    for _ in engine.generate_batch(prompts, batch_size=4, progress=finished.append):
        pass
    assert sum(finished) == 11


def test_ragged_cache_squeeze_select_and_concat_keep_each_rows_positions():
    torch.manual_seed(0)
    ragged = RaggedCache(DynamicCache(), 3, "cpu")
    keys = torch.randn(3, 2, 6, 4)
    ragged.cache.update(keys, keys + 1, 0)  # a forward appends 6 slots to every row
    ragged.extend(
        torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    )

    def rows_positions(r):
        layer = r.cache.layers[0]
        return [layer.keys[b][:, r.valid[b]].tolist() for b in range(r.rows)]

    before = rows_positions(ragged)
    ragged.squeeze(slack=0)
    assert (
        ragged.length == 6 and rows_positions(ragged) == before
    )  # the widest row has no holes: nothing moves
    ragged.select([0, 1])
    ragged.squeeze(slack=0)
    assert ragged.length == 3 and rows_positions(ragged) == before[:2]
    joining = RaggedCache(DynamicCache(), 1, "cpu")
    extra = torch.randn(1, 2, 5, 4)
    joining.cache.update(extra, extra, 0)
    joining.extend(torch.ones(1, 5, dtype=torch.bool))
    ragged.concat(joining)
    assert ragged.rows == 3 and ragged.length == 5
    assert rows_positions(ragged) == before[:2] + [extra[0].tolist()]
    mask = ragged.mask(torch.ones(3, 2, 2, dtype=torch.bool))
    assert mask.shape == (3, 1, 2, 7) and mask[0, 0, 0].tolist() == [True] * 3 + [False] * 2 + [True] * 2


def test_bad_batch_arguments():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=1)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = new_draft(world.target, world.token_map, depth=3)
    with pytest.raises(ValueError, match="batch_size"):
        list(Engine(world.target, trie).generate_batch([[1]], batch_size=0))
    with pytest.raises(ValueError, match="draft trees decode one request at a time"):
        list(Engine(world.target, trie, draft, 3, width=2, budget=4).generate_batch([[1]], batch_size=2))
    with pytest.raises(ValueError, match="2 generators for 1 prompts"):
        list(Engine(world.target, trie).generate_batch([[1]], generators=[None, None]))
    with pytest.raises(ValueError, match="at least one token"):
        list(Engine(world.target, trie).generate_batch([[1], []], batch_size=2))
