"""CatalogListConstraint: exactly N distinct catalog items then EOS, step by step and inside ``generate``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from modeling_padrec.constraint import CatalogListConstraint, parse_list
from modeling_padrec.data import load_dataset
from modeling_padrec.examples import ItemEncoder
from modeling_padrec.target import build_preset_base
from modeling_padrec.tokenization import TokenMap, build_tokenizer

PAD, EOS, SEP, REC = 0, 1, 2, 3
MAX_LEVELS, MAX_CODES = 4, 4
VOCAB = 4 + MAX_LEVELS * MAX_CODES


def tok_id(level: int, code: int) -> int:
    return 4 + level * MAX_CODES + code


@st.composite
def catalogs(draw):
    """(item token ids, list_len): unique codes over small per-level alphabets, disjoint ids per level."""
    levels = draw(st.integers(1, MAX_LEVELS))
    sizes = [draw(st.integers(1, MAX_CODES)) for _ in range(levels)]
    code = st.tuples(*(st.integers(0, s - 1) for s in sizes))
    codes = draw(st.lists(code, min_size=1, max_size=12, unique=True))
    items = [[tok_id(lv, c) for lv, c in enumerate(cd)] for cd in codes]
    return items, draw(st.integers(1, len(items)))


def split_list(generated: list[int]) -> list[tuple[int, ...]]:
    assert generated[-1] == EOS and EOS not in generated[:-1]
    parts, current = [], []
    for tok in generated[:-1]:
        if tok == SEP:
            parts.append(tuple(current))
            current = []
        else:
            current.append(tok)
    return [*parts, tuple(current)]


def decode_step_by_step(constraint, prompt, scores, sample_gen=None):
    """Feed one score row per step; check the mask each time; greedy (or sampled) choice among allowed ids."""
    ids = list(prompt)
    steps = 0
    while True:
        row = scores[steps % len(scores)].clone()
        out = constraint(torch.tensor([ids]), row[None])[0]
        finite = torch.isfinite(out)
        assert finite.any()
        assert torch.equal(out[finite], row[finite])  # allowed tokens keep their score
        assert torch.isneginf(out[~finite]).all()  # everything else is -inf
        if sample_gen is None:
            nxt = int(out.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(out, -1), 1, generator=sample_gen))
        assert finite[nxt]
        ids.append(nxt)
        steps += 1
        if nxt == EOS:
            return ids[len(prompt) :]
        assert steps <= 200, "the constraint never closed the list"


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    catalog=catalogs(),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
    sample=st.booleans(),
    prompt=st.lists(st.integers(0, VOCAB - 1).filter(lambda t: t != REC), max_size=8),
)
def test_random_scores_always_give_a_valid_list(catalog, seed, ties, sample, prompt):
    items, list_len = catalog
    constraint = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(24, VOCAB, generator=gen) * 3
    if ties:
        scores = scores.round()  # many equal scores: argmax ties must not break the list
    generated = decode_step_by_step(constraint, [*prompt, REC], scores, gen if sample else None)
    parts = split_list(generated)
    levels = len(items[0])
    assert len(parts) == list_len
    assert all(list(p) in items for p in parts)
    assert len(set(parts)) == list_len  # no item twice
    assert len(generated) == list_len * (levels + 1)
    lookup = {tuple(t): i for i, t in enumerate(items)}
    assert parse_list(generated, lookup, SEP, EOS) == [lookup[p] for p in parts]


@settings(max_examples=150, deadline=None, database=None)
@given(catalog=catalogs(), tail=st.lists(st.integers(0, VOCAB - 1), max_size=30))
def test_invalid_prefixes_do_not_crash(catalog, tail):
    items, list_len = catalog
    constraint = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len)
    ids = torch.tensor([[5, REC, *tail]])
    out = constraint(ids, torch.zeros(1, VOCAB))
    assert out.shape == (1, VOCAB) and torch.isfinite(out).any()
    allowed = constraint.allowed(tail[len(tail) - tail[::-1].index(REC) :] if REC in tail else tail)
    assert allowed and all(0 <= t < VOCAB for t in allowed)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == sorted(allowed)


def test_allowed_by_hand():
    items = [[4, 8], [4, 9], [5, 8]]
    c = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len=2)
    assert sorted(c.allowed([])) == [4, 5]
    assert sorted(c.allowed([4])) == [8, 9]
    assert c.allowed([4, 8]) == [SEP]
    assert sorted(c.allowed([4, 8, SEP])) == [4, 5]
    assert c.allowed([4, 8, SEP, 4]) == [9]  # <4 8> is used
    assert c.allowed([4, 8, SEP, 4, 9]) == [EOS]  # list full
    assert c.allowed([4, 8, SEP, 4, 9, EOS]) == [EOS]
    assert c.allowed([4, 4]) == [EOS]  # not a prefix of any item: close the list
    assert c.allowed([9, 9, SEP]) == [EOS]  # a finished part that is no item
    one = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len=1)
    assert one.allowed([5, 8]) == [EOS]
    with pytest.raises(ValueError, match="list_len"):
        CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len=0)


def test_catalog_smaller_than_the_list_stops_after_every_item():
    items = [[4, 8], [5, 9]]
    c = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len=5)
    generated = decode_step_by_step(
        c, [REC], torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(0))
    )
    assert sorted(i for i in parse_list(generated, {(4, 8): 0, (5, 9): 1}, SEP, EOS)) == [0, 1]


def test_rows_of_a_batch_are_independent():
    items = [[4, 8], [4, 9], [5, 8]]
    c = CatalogListConstraint(torch.tensor(items), SEP, EOS, REC, list_len=2)
    rows = [[PAD, PAD, PAD, PAD, 7, REC, 4], [7, 7, REC, 4, 8, SEP, 4], [REC, 5, 8, SEP, 4, 9, EOS]]
    scores = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    batched = c(torch.tensor(rows), scores.clone())
    for r, row in enumerate(rows):
        assert torch.equal(batched[r], c(torch.tensor([row]), scores[r : r + 1].clone())[0])
    assert torch.isfinite(batched[1]).nonzero().flatten().tolist() == [9]


# --------------------------------------------------------------------------- inside generate


@pytest.fixture(scope="module")
def setup(synthetic_dir):
    """Untrained tiny Qwen2 target and assistant over the synthetic catalog's tokens, plus prompts."""
    ds = load_dataset(synthetic_dir)
    tok = build_tokenizer(ds.index)
    tm = TokenMap.from_tokenizer(tok, ds.index)
    enc = ItemEncoder(tm, ds)
    target = build_preset_base("qwen2-tiny", tok, seed=0).eval()
    assistant = build_preset_base("qwen2-tiny", tok, seed=1).eval()
    prompts = [torch.tensor([enc.prompt(ds.history(u, "test"), 20)]) for u in ds.eval_users("test")[:3]]
    list_len = 4
    constraint = CatalogListConstraint.from_token_map(tm, ds.index, list_len)
    lookup = {tuple(t): i for i, t in enumerate(enc.item_tokens)}
    return dict(
        ds=ds,
        tm=tm,
        target=target,
        assistant=assistant,
        prompts=prompts,
        c=constraint,
        lookup=lookup,
        n=list_len,
    )


def _generate(s, prompt, **kw):
    tm = s["tm"]
    with torch.inference_mode():
        out = s["target"].generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=s["n"] * (s["ds"].index.levels + 1),
            logits_processor=LogitsProcessorList([s["c"]]),
            pad_token_id=tm.pad_id,
            eos_token_id=tm.eos_id,
            **kw,
        )
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])
    return out[0, prompt.shape[1] :].tolist()


def _assert_valid(s, generated):
    tm = s["tm"]
    assert generated[-1] == tm.eos_id and generated.count(tm.eos_id) == 1
    assert len(generated) == s["n"] * (s["ds"].index.levels + 1)
    items = parse_list(generated, s["lookup"], tm.sep_id, tm.eos_id)
    assert len(items) == s["n"] and None not in items and len(set(items)) == s["n"]


ASSISTED = {
    "prompt_lookup": lambda s: {"prompt_lookup_num_tokens": 3},
    "assistant_model": lambda s: {"assistant_model": s["assistant"]},
}


def test_generate_greedy_and_sampled(setup):
    greedy = [_generate(setup, p, do_sample=False) for p in setup["prompts"]]
    for g in greedy:
        _assert_valid(setup, g)
    torch.manual_seed(0)
    sampled = [_generate(setup, p, do_sample=True, top_k=0, temperature=2.0) for p in setup["prompts"]]
    for s in sampled:
        _assert_valid(setup, s)
    assert sampled != greedy


@pytest.mark.parametrize("how", sorted(ASSISTED))
def test_assisted_greedy_equals_plain_greedy(setup, how):
    for p in setup["prompts"]:
        plain = _generate(setup, p, do_sample=False)
        assisted = _generate(setup, p, do_sample=False, **ASSISTED[how](setup))
        _assert_valid(setup, assisted)
        assert assisted == plain


@pytest.mark.parametrize("how", sorted(ASSISTED))
def test_assisted_sampling_gives_valid_lists(setup, how):
    torch.manual_seed(0)
    for p in setup["prompts"]:
        _assert_valid(setup, _generate(setup, p, do_sample=True, **ASSISTED[how](setup)))
