"""padrec's engine is lossless: its greedy lists equal stock constrained ``generate`` token for token, with no
draft and with untrained, agreeing and adversarial drafts, at any depth, list length, catalog shape and prompt.
Its sampling matches plain constrained sampling in distribution (chi-square against exact probabilities)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from draft_world import BOS, EOS, REC, SEP, agreeing_draft, make_world, perturbed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from modeling_padrec.bench import choice_positions
from modeling_padrec.draft import new_draft
from modeling_padrec.engine import CatalogTrie, Engine, GenerationSettings
from modeling_padrec.engine.scoring import TargetScorer


class AdversarialDraft(torch.nn.Module):
    """A draft that ranks tokens backwards: its top proposal is the one the wrapped draft likes least."""

    def __init__(self, draft):
        super().__init__()
        self.inner, self.config = draft, draft.config

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        out.logits = None if out.logits is None else -out.logits
        return out

    def head_logits(self, features):
        return -self.inner.head_logits(features)


def catalog_items(world, rng: random.Random, shape: str, num_items: int) -> list[tuple[int, ...]]:
    """Items over the world's token layout: ``random`` codes, ``chains`` (long forced runs: few items, deep
    codes) or ``collisions`` (items that share every code but the last, a disambiguation level)."""
    tm = world.token_map
    levels, codes = tm.levels, len(tm.level_token_ids[0])
    if shape == "chains":
        num_items = min(num_items, 3)
    if shape == "collisions":
        head = [rng.randrange(codes) for _ in range(levels - 1)]
        raw = [(*head, i % codes) for i in range(num_items)]
    else:
        raw = [tuple(rng.randrange(codes) for _ in range(levels)) for _ in range(num_items)]
    return sorted({tuple(tm.level_token_ids[lv][c] for lv, c in enumerate(code)) for code in raw})


def decode_both(world, items, prompt, draft=None, depth=None):
    world.items = items
    trie = CatalogTrie(torch.tensor(items), SEP, EOS, world.list_len)
    max_new = world.list_len * (world.token_map.levels + 1)
    expected = world.generate(prompt, max_new_tokens=max_new)
    engine = Engine(world.target, trie, draft, depth, GenerationSettings(max_new_tokens=max_new))
    return expected, engine.generate(prompt), trie


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    levels=st.integers(1, 4),
    codes=st.integers(2, 4),
    num_items=st.integers(1, 14),
    list_len=st.integers(1, 20),
    shape=st.sampled_from(["random", "chains", "collisions"]),
    draft_kind=st.sampled_from(["none", "untrained", "agreeing", "adversarial", "noisy", "block"]),
    depth=st.integers(1, 32),
    history=st.lists(st.integers(0, 100), max_size=6),
    seed=st.integers(0, 1000),
    lora=st.booleans(),
)
def test_engine_greedy_equals_stock_generate(
    levels, codes, num_items, list_len, shape, draft_kind, depth, history, seed, lora
):
    bigram = draft_kind == "agreeing"
    world = make_world(levels=levels, codes=codes, num_items=1, list_len=list_len, seed=seed, lora=lora and not bigram,
                       bigram=bigram)  # fmt: skip
    rng = random.Random(seed)
    items = catalog_items(world, rng, shape, num_items)
    world.items = items
    prompt = world.prompt([h % len(items) for h in history])  # empty history: <s> <|rec|>
    draft = None
    if draft_kind == "untrained":
        draft = new_draft(world.target, world.token_map, depth=min(depth, 8), seed=seed)
    elif draft_kind == "agreeing":
        draft = agreeing_draft(world, depth=min(depth, 8))
    elif draft_kind == "adversarial":
        draft = AdversarialDraft(agreeing_draft(world, depth=min(depth, 8)))
    elif draft_kind == "noisy":
        draft = perturbed(new_draft(world.target, world.token_map, depth=4, seed=seed), scale=2.0, seed=seed)
    elif draft_kind == "block":
        draft = new_draft(world.target, world.token_map, depth=4, seed=seed, forced_inputs="block")
        draft = perturbed(draft, scale=2.0, seed=seed)
    expected, got, trie = decode_both(world, items, prompt, draft, depth if draft is not None else None)
    assert got.output_ids == expected
    choices = choice_positions(trie, expected)
    assert got.choices == choices and got.forced_tokens == len(expected) - choices
    if draft is None:
        assert got.target_forwards == choices  # one forward per position where the catalog leaves a choice
    else:
        assert got.target_forwards <= max(choices, 1)
    if draft_kind == "agreeing":  # a draft that is always right needs the perfect-draft number of forwards
        assert got.target_forwards == (0 if choices == 0 else 1 + -(-(choices - 1) // (depth + 1)))
        assert all(r.accepted == r.drafted for r in got.rounds)


@pytest.mark.parametrize("prompt", [[REC], [BOS, REC], [BOS, 6, 9, REC], [BOS] + [6, 9, SEP] * 30 + [REC]])
def test_prompts_of_any_length(prompt):
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=3)
    draft = new_draft(world.target, world.token_map, depth=3)
    for d in (None, draft):
        expected, got, _ = decode_both(world, world.items, torch.tensor([prompt]), d)
        assert got.output_ids == expected


def test_no_hooks_and_the_draft_reads_the_engines_features():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=1, lora=True)
    draft = new_draft(world.target, world.token_map, depth=3)
    lm = TargetScorer(world.target).lm
    seen = []
    original = draft.forward

    def spy(input_ids, target_features, **kwargs):
        seen.append((input_ids.shape[1], target_features.detach().clone(), kwargs.get("step_ids")))
        return original(input_ids, target_features, **kwargs)

    draft.forward = spy
    fused = draft.decode_step

    def spy_step(input_ids, target_features, step, cache, **kwargs):
        seen.append((input_ids.shape[1], target_features.detach().clone(), step))
        return fused(input_ids, target_features, step, cache, **kwargs)

    draft.decode_step = spy_step
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.modules()]
    prompt = world.prompt([0, 1])
    _, got, _ = decode_both(world, world.items, prompt, draft)
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.modules()] == hooks
    # the first draft call catches up on the prompt with the target's true features, step 0
    n, features, step = seen[0]
    assert n == prompt.shape[1] and step == 0
    with torch.no_grad():
        true = lm.get_decoder()(input_ids=prompt).last_hidden_state
    torch.testing.assert_close(features, true, atol=1e-5, rtol=1e-4)
    assert got.draft_steps == len(seen)


@pytest.mark.parametrize("forced_inputs", ["chain", "block"])
@pytest.mark.parametrize("seed", range(4))
def test_draft_steps_over_forced_tokens_are_counted(seed, forced_inputs):
    """A chain round's draft forwards are the catch-up, one step per token after the first the target had not run
    (the trie's forced run) and one per drafted token before the round's last choice; the forced ones are the
    steps a draft reading only choices would skip: every step but the catch-up and those over drafted choices.
    A block draft reads the forced run after the catch-up in one forward, and each drafted choice with its forced
    run in one more."""
    world = make_world(levels=3, codes=3, num_items=12, list_len=5, seed=seed, lora=True)
    world.items = catalog_items(world, random.Random(seed), "chains" if seed % 2 else "random", 12)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = new_draft(world.target, world.token_map, depth=4, seed=seed, forced_inputs=forced_inputs)
    draft = perturbed(draft, scale=0.5, seed=seed)
    engine = Engine(world.target, trie, draft, 3, GenerationSettings(max_new_tokens=40))
    got = engine.generate(world.prompt([0, 1]), trace=True)
    assert got.trace and got.forced_draft_steps > 0
    for r in got.trace:
        last = max(i for i, c in enumerate(r["choice"]) if c)
        if forced_inputs == "chain":  # catch-up, waiting - 1 forced, every token before ``last``
            assert r["draft_steps"] == r["waiting"] + last
            assert r["draft_steps"] - r["forced_steps"] == 1 + sum(r["choice"][:last])
        else:  # catch-up, the forced run after it, then each choice before ``last`` with its run
            assert r["forced_steps"] == (r["waiting"] > 1)
            assert r["draft_steps"] == 1 + r["forced_steps"] + sum(r["choice"][:last])
    assert got.forced_draft_steps == sum(r["forced_steps"] for r in got.trace)
    assert got.draft_steps == sum(r["draft_steps"] for r in got.trace)


def test_the_draft_head_reads_only_the_allowed_rows_where_the_draft_can():
    """A PAD-Rec draft's head is read row by row at a choice (the rows of the allowed tokens, same logits as the
    full head's); a draft without ``head_reads_rows`` (a wrapper, or remote code saved before it) gets the full
    head, indexed."""
    from modeling_padrec.engine.proposers import DraftProposer

    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=2)
    draft = new_draft(world.target, world.token_map, depth=3)
    fast, wrapped = DraftProposer(draft), DraftProposer(AdversarialDraft(draft))
    assert fast.head_rows and not wrapped.head_rows
    feature = torch.randn(1, 1, draft.config.hidden_size, generator=torch.Generator().manual_seed(0))
    allowed = torch.tensor(world.token_map.level_token_ids[1][:3])
    with torch.no_grad():
        full = draft.head_logits(feature)[0, -1][fast.rows[allowed]]
        torch.testing.assert_close(fast.scores(feature, allowed), full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(wrapped.scores(feature, allowed), -full, atol=1e-5, rtol=1e-5)


def test_max_new_tokens_cuts_the_list():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=2)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    prompt = world.prompt([0])
    full = world.generate(prompt, max_new_tokens=9)
    for limit in (1, 2, 4, 5):
        for draft in (None, new_draft(world.target, world.token_map, depth=3)):
            engine = Engine(world.target, trie, draft, settings=GenerationSettings(max_new_tokens=limit))
            assert engine.generate(prompt).output_ids == full[:limit]


def test_bad_arguments():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    with pytest.raises(ValueError, match="prompt"):
        Engine(world.target, trie).generate([])
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(do_sample=True, temperature=0.0)
    other = make_world(levels=2, codes=3, num_items=7, list_len=3, hidden=64)
    with pytest.raises(ValueError, match="hidden_size"):
        Engine(world.target, trie, new_draft(other.target, other.token_map))


# --------------------------------------------------------------------------- sampling


def exact_list_probabilities(world, trie, prompt, temperature):
    """P(list) under plain constrained sampling, by teacher-forcing every valid list (a small catalog)."""
    lists = []
    for first, second in itertools.permutations(world.items, 2):
        lists.append([*first, SEP, *second, EOS])
    probs = {}
    for tokens in lists:
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logits = world.target(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        state, logp = trie.start(), 0.0
        for pos, tok in enumerate(tokens):
            allowed = state.allowed()
            if len(allowed) > 1:
                logp += float(torch.log_softmax(logits[pos, allowed], -1)[allowed.index(tok)])
            state.advance(tok)
        probs[tuple(tokens)] = math.exp(logp)
    assert abs(sum(probs.values()) - 1) < 1e-4
    return probs


def chi_square_p(samples: list[tuple], probs: dict) -> float:
    keys = list(probs)
    observed = [sum(s == k for s in samples) for k in keys]
    assert sum(observed) == len(samples)  # every sample is a valid list
    total = sum(probs.values())
    expected = [probs[k] / total * len(samples) for k in keys]
    return chisquare(observed, expected).pvalue


@pytest.mark.slow
def test_speculative_sampling_matches_plain_constrained_sampling():
    world = make_world(levels=2, codes=3, num_items=5, list_len=2, seed=4, sharpness=2.0)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, 2)
    prompt = world.prompt([0, 1])[0].tolist()
    temperature, n = 0.8, 1500
    probs = exact_list_probabilities(world, trie, prompt, temperature)
    draft = perturbed(new_draft(world.target, world.token_map, depth=3), scale=1.0)  # often wrong
    sampling = GenerationSettings(do_sample=True, temperature=temperature, max_new_tokens=6)
    gen = torch.Generator().manual_seed(0)
    for d in (None, draft):
        engine = Engine(world.target, trie, d, settings=sampling)
        samples = [tuple(engine.generate(prompt, generator=gen).output_ids) for _ in range(n)]
        assert chi_square_p(samples, probs) > 1e-3, "engine sampling is not plain constrained sampling"
        if d is not None:  # the draft was really asked and really overruled
            outs = [engine.generate(prompt, generator=gen) for _ in range(50)]
            assert any(r.accepted < r.drafted for o in outs for r in o.rounds)
    torch.manual_seed(0)
    stock = [tuple(world.generate(torch.tensor([prompt]), do_sample=True, temperature=temperature,
                                  max_new_tokens=6)) for _ in range(600)]  # fmt: skip
    assert chi_square_p(stock, probs) > 1e-3  # the exact distribution is stock sampling's
