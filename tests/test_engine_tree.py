"""Draft trees are lossless: greedy lists equal stock constrained ``generate`` token for token at any width,
budget and depth; a tree of width one is the chain, forwards and rounds included; the tree's attention mask and
positions give every node exactly the state of a plain causal pass over its path; sampled trees match plain
constrained sampling in distribution."""

from __future__ import annotations

import math
import random

import pytest
import torch
from draft_world import EOS, SEP, agreeing_draft, make_world, perturbed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import AdversarialDraft, catalog_items, chi_square_p, exact_list_probabilities

from modeling_padrec.bench import choice_positions
from modeling_padrec.calibration import _cut, growth, sibling_orders
from modeling_padrec.draft import new_draft
from modeling_padrec.engine import CatalogTrie, Engine, GenerationSettings
from modeling_padrec.engine.acceptance import Chooser
from modeling_padrec.engine.proposers import DraftProposer, Proposal
from modeling_padrec.engine.tree import (
    FLOOR,
    TreeProposer,
    ancestor_mask,
    check_acceptance,
    log_acceptance,
    token_depths,
)


def make_draft(world, kind: str, depth: int, seed: int):
    if kind == "untrained":
        return new_draft(world.target, world.token_map, depth=min(depth, 8), seed=seed)
    if kind == "agreeing":
        return agreeing_draft(world, depth=min(depth, 8))
    if kind == "adversarial":
        return AdversarialDraft(agreeing_draft(world, depth=min(depth, 8)))
    if kind == "block":  # reads a choice and its forced run on one feature (forced_inputs="block")
        draft = new_draft(world.target, world.token_map, depth=4, seed=seed, forced_inputs="block")
        return perturbed(draft, scale=2.0, seed=seed)
    return perturbed(new_draft(world.target, world.token_map, depth=4, seed=seed), scale=2.0, seed=seed)


def random_curve(rng: random.Random) -> list[tuple[float, float]]:
    """A valid acceptance curve: confidences from 0 rising, rates in [0, 1] never falling (0 and 1 included
    sometimes, so values tie and hit the floor)."""
    n = rng.randint(1, 5)
    edges = [0.0] + sorted(rng.sample([i / 20 for i in range(1, 20)], n - 1))
    rates = sorted(rng.choice([0.0, 1.0, rng.random()]) for _ in range(n))
    return list(zip(edges, rates, strict=True))


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    levels=st.integers(1, 4),
    codes=st.integers(2, 4),
    num_items=st.integers(1, 14),
    list_len=st.integers(1, 12),
    shape=st.sampled_from(["random", "chains", "collisions"]),
    draft_kind=st.sampled_from(["untrained", "agreeing", "adversarial", "noisy", "block"]),
    depth=st.integers(1, 10),
    width=st.integers(1, 5),
    budget=st.one_of(st.none(), st.integers(1, 24)),
    cut=st.booleans(),
    history=st.lists(st.integers(0, 100), max_size=5),
    seed=st.integers(0, 1000),
    lora=st.booleans(),
    ranked=st.booleans(),
)
def test_tree_greedy_equals_stock_generate(
    levels,
    codes,
    num_items,
    list_len,
    shape,
    draft_kind,
    depth,
    width,
    budget,
    cut,
    history,
    seed,
    lora,
    ranked,
):
    bigram = draft_kind == "agreeing"
    world = make_world(levels=levels, codes=codes, num_items=1, list_len=list_len, seed=seed, lora=lora and not bigram,
                       bigram=bigram)  # fmt: skip
    items = catalog_items(world, random.Random(seed), shape, num_items)
    world.items = items
    prompt = world.prompt([h % len(items) for h in history])
    full = list_len * (levels + 1)
    max_new = random.Random(seed).randint(1, full) if cut else full  # trees cut by the length limit too
    expected = world.generate(prompt, max_new_tokens=max_new)
    trie = CatalogTrie(torch.tensor(items), SEP, EOS, list_len)
    draft = make_draft(world, draft_kind, depth, seed)
    sets = GenerationSettings(max_new_tokens=max_new)
    rng = random.Random(seed)
    curve = None  # valued by an acceptance curve, one or one per sibling order
    if ranked:
        curve = (
            random_curve(rng) if rng.random() < 0.5 else [random_curve(rng) for _ in range(rng.randint(1, 3))]
        )
    got = Engine(
        world.target, trie, draft, depth, sets, width=width, budget=budget, acceptance=curve
    ).generate(prompt)
    assert got.output_ids == expected
    choices = choice_positions(trie, expected)
    assert got.choices == choices and got.forced_tokens == len(expected) - choices
    assert got.target_forwards <= max(choices, 1)
    if width == 1 and budget is None and not ranked:  # a tree of width one is the chain
        chain = Engine(world.target, trie, draft, depth, sets).generate(prompt)
        assert got.target_forwards == chain.target_forwards
        if draft_kind != "block":  # a block chain reads a run in one forward, the tree one depth at a time
            assert (got.draft_steps, got.forced_draft_steps) == (chain.draft_steps, chain.forced_draft_steps)
        assert [r.to_json() for r in got.rounds] == [r.to_json() for r in chain.rounds]


@pytest.mark.parametrize("draft_kind", ["untrained", "agreeing", "noisy", "block"])
@pytest.mark.parametrize("sample", [False, True])
def test_width_one_is_the_chain(draft_kind, sample):
    for seed in range(3):
        world = make_world(
            levels=3, codes=4, num_items=30, list_len=5, seed=seed, bigram=draft_kind == "agreeing"
        )
        trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
        draft = make_draft(world, draft_kind, 4, seed)
        sets = GenerationSettings(do_sample=sample, temperature=0.9, max_new_tokens=20)
        prompt = world.prompt([0, 1])
        outs = []
        for width in (None, 1):
            engine = Engine(world.target, trie, draft, 4, sets, width=width)
            outs.append(engine.generate(prompt, generator=torch.Generator().manual_seed(seed)))
        chain, tree = outs
        assert tree.output_ids == chain.output_ids
        assert (tree.target_forwards, tree.choices) == (chain.target_forwards, chain.choices)
        if draft_kind != "block":  # a block chain reads a run in one forward, the tree one depth at a time
            assert (tree.draft_steps, tree.forced_draft_steps) == (
                chain.draft_steps,
                chain.forced_draft_steps,
            )
        assert [r.to_json() for r in tree.rounds] == [r.to_json() for r in chain.rounds]


def test_maximum_width_whole_lists_and_repeated_items():
    """Every allowed child at every choice point, trees deep enough to reach EOS, and a catalog so small that
    sibling branches list the same items in other orders."""
    world = make_world(levels=2, codes=3, num_items=4, list_len=4, seed=5)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = perturbed(new_draft(world.target, world.token_map, depth=4, seed=5), scale=2.0, seed=5)
    prompt = world.prompt([0])
    expected = world.generate(prompt, max_new_tokens=12)
    engine = Engine(world.target, trie, draft, 8, GenerationSettings(max_new_tokens=12), width=8)
    seen_eos_in_tree = []
    original = engine.proposer.propose

    def spy(*args):
        proposal = original(*args)
        seen_eos_in_tree.append(proposal.tokens.count(EOS))
        return proposal

    engine.proposer.propose = spy
    got = engine.generate(prompt)
    assert got.output_ids == expected
    assert max(seen_eos_in_tree) > 1  # several branches of one tree end the list
    assert got.target_forwards == 2  # the prefill, then one tree holding every valid list


def test_tree_mask_and_positions_match_a_causal_pass_over_each_path():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3, seed=2, lora=True)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    engine = Engine(world.target, trie)
    seq = world.prompt([0, 1])[0].tolist()
    cache = engine.scorer.new_cache()
    engine.scorer.score(cache, torch.tensor([seq[:-2]]))  # two prompt tokens still waiting
    committed = len(seq) - 2
    a, b = world.items[0], world.items[3]
    tokens = [a[0], a[1], SEP, b[0], b[1], b[1]]
    parent = [-1, 0, 1, -1, 3, 3]  # two branches from the root, one splitting again
    proposal = Proposal(tokens, [True] * 6, [None] * 6, parent)
    hidden, _, _ = engine._verify(cache, seq, committed, proposal)
    depths = token_depths(parent)
    for node in range(len(tokens)):
        path = [n for n in range(len(tokens)) if ancestor_mask(parent)[node, n]]
        assert len(path) == depths[node] + 1
        ids = torch.tensor([seq + [tokens[n] for n in path]])
        with torch.no_grad():
            plain = engine.scorer.decoder(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(hidden[0, 2 + node], plain, atol=1e-5, rtol=1e-4)


def test_batched_tree_steps_equal_stepping_each_path():
    """The draft expands a level of the tree in one forward under a tree mask; every node's predicted feature
    equals the one the draft computes stepping along the node's own path alone."""
    world = make_world(levels=3, codes=3, num_items=20, list_len=3, seed=7)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = new_draft(world.target, world.token_map, depth=4, seed=7)
    engine = Engine(world.target, trie, draft, 3, GenerationSettings(max_new_tokens=12), width=3)
    prompt = world.prompt([0, 1])[0].tolist()
    state = trie.start()
    seq = list(prompt)
    cache = engine.scorer.new_cache()
    hidden = engine.scorer.score(cache, torch.tensor([seq]))
    first = trie.start().allowed()[0]
    seq.append(first)
    state.advance(first)
    seq += state.forced_run()
    tree = engine.proposer
    tree.reset()
    tree.feed(hidden)
    tree.propose(seq, len(prompt), state, Chooser(GenerationSettings()), 12)
    stepped = [n for n, s in enumerate(tree._slot) if s >= 0]
    assert len(stepped) > 3 and tree._steps < len(stepped)  # several nodes per forward
    for node in stepped:
        path = []
        n = node
        while n >= 0:
            path.append(tree._tok[n])
            n = tree._par[n]
        alone = DraftProposer(draft, 3)
        alone.feed(hidden)
        feature, step = alone._catch_up(seq, len(prompt))
        for token in reversed(path):
            feature = alone._step(token, feature, step)
            step += 1
        torch.testing.assert_close(tree._feature[node], feature, atol=1e-5, rtol=1e-4)


def test_bad_tree_arguments():
    world = make_world(levels=2, codes=3, num_items=7, list_len=3)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = new_draft(world.target, world.token_map, depth=3)
    with pytest.raises(ValueError, match="width"):
        Engine(world.target, trie, draft, width=0)
    with pytest.raises(ValueError, match="budget"):
        Engine(world.target, trie, draft, width=2, budget=0)
    with pytest.raises(ValueError, match="needs a draft"):
        Engine(world.target, trie, width=2)
    with pytest.raises(ValueError, match="needs a draft"):
        Engine(world.target, trie, acceptance=[(0.0, 0.5)])
    assert isinstance(Engine(world.target, trie, draft, width=2).proposer, TreeProposer)
    assert isinstance(Engine(world.target, trie, draft, acceptance=[(0.0, 0.5)]).proposer, TreeProposer)
    for bad, words in (
        ([], "at least one"),
        ([(0.1, 0.5)], "confidence 0"),
        ([(0.0, 0.5), (0.5, 0.4)], "never fall"),
        ([(0.0, 0.5), (0.0, 0.6)], "must rise"),
        ([(0.0, 0.5), (0.5, 1.5)], r"\[0, 1\]"),
        ([[(0.0, 0.5)], []], "at least one"),  # one curve per sibling order: each is checked
        ([[(0.0, 0.5)], [(0.0, 0.5), (0.5, 0.4)]], "never fall"),
    ):
        with pytest.raises(ValueError, match=words):
            check_acceptance(bad)
    # one curve is every sibling's; a list of curves is one per sibling order, whatever its length
    assert check_acceptance([(0, 0.5), (0.5, 0.9)]) == [[(0.0, 0.5), (0.5, 0.9)]]
    assert check_acceptance([[(0, 0.5), (0.5, 0.9)]]) == [[(0.0, 0.5), (0.5, 0.9)]]
    assert check_acceptance([[(0, 0.9)], [(0, 0.2), (0.5, 0.4)]]) == [[(0.0, 0.9)], [(0.0, 0.2), (0.5, 0.4)]]
    curves = check_acceptance([[(0, 0.9)], [(0, 0.2), (0.5, 0.4)]])
    assert log_acceptance(curves, 0.3, 0) == math.log(0.9)  # the first pick's curve
    assert log_acceptance(curves, 0.3, 1) == math.log(0.2) and log_acceptance(curves, 0.6, 5) == math.log(0.4)


@pytest.mark.parametrize("ranked", [None, "one curve", "by sibling"])
def test_a_budget_cuts_the_full_tree_and_skips_growing_what_it_cuts(ranked):
    """A budgeted tree is the full tree cut to its ``budget`` most valuable choice nodes, node for node, and the
    draft does not step through the branches the cut drops: exactly the forwards and nodes :func:`growth`
    predicts from the full tree, and strictly fewer than growing the full tree somewhere."""
    saved = 0
    for seed in range(6):
        world = make_world(levels=3, codes=4, num_items=40, list_len=4, seed=seed)
        trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
        draft = perturbed(new_draft(world.target, world.token_map, depth=4, seed=seed), scale=1.0, seed=seed)
        rng = random.Random(seed)
        curve = {
            None: None,
            "one curve": random_curve(rng),
            "by sibling": [random_curve(rng), random_curve(rng)],
        }[ranked]
        sets = GenerationSettings(max_new_tokens=16)
        prompt = world.prompt([0, 1])
        budget = 2 + seed % 3
        first = {}
        for b in (None, budget):
            engine = Engine(world.target, trie, draft, 4, sets, width=3, budget=b, acceptance=curve)
            first[b] = engine.generate(prompt, trace=True).trace[0]  # the same state: the first drafted round
        full, cut = first[None], first[budget]
        if (
            ranked
        ):  # every choice adds the log of one of its sibling order's curve's rates to its path's value
            curves = check_acceptance(curve)
            orders = sibling_orders(full["parent"], full["choice"])
            for i, p in enumerate(full["parent"]):
                if full["choice"][i]:
                    logs = [math.log(max(r, FLOOR)) for _, r in curves[min(orders[i], len(curves) - 1)]]
                    step = full["score"][i] - (full["score"][p] if p >= 0 else 0.0)
                    assert min(abs(step - v) for v in logs) < 1e-9
        heads, kept = _cut(full, 4, budget)  # the trace's scores are the values the tree ranked by
        nodes = [i for i in range(len(full["parent"])) if heads[i] in kept]
        assert cut["tokens"] == [full["tokens"][i] for i in nodes]
        assert cut["parent"] == [
            nodes.index(full["parent"][i]) if full["parent"][i] >= 0 else -1 for i in nodes
        ]
        assert (cut["tree_forwards"], cut["tree_nodes"]) == growth(full, 4, budget)
        assert (full["tree_forwards"], full["tree_nodes"]) == growth(full, 4, None)
        assert cut["tree_nodes"] <= full["tree_nodes"]
        saved += full["tree_nodes"] - cut["tree_nodes"]
    assert saved > 0


@pytest.mark.slow
@pytest.mark.parametrize("width,budget", [(2, None), (3, 4)])
def test_tree_sampling_matches_plain_constrained_sampling(width, budget):
    world = make_world(levels=2, codes=3, num_items=5, list_len=2, seed=4, sharpness=2.0)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, 2)
    prompt = world.prompt([0, 1])[0].tolist()
    temperature, n = 0.8, 1500
    probs = exact_list_probabilities(world, trie, prompt, temperature)
    draft = perturbed(new_draft(world.target, world.token_map, depth=3), scale=1.0)  # often wrong
    sampling = GenerationSettings(do_sample=True, temperature=temperature, max_new_tokens=6)
    engine = Engine(world.target, trie, draft, 3, sampling, width=width, budget=budget)
    gen = torch.Generator().manual_seed(1)
    outs = [engine.generate(prompt, generator=gen) for _ in range(n)]
    assert chi_square_p([tuple(o.output_ids) for o in outs], probs) > 1e-3
    # the tree was really used: rounds that rejected a candidate, and paths through a later sibling
    assert any(r.accepted < r.drafted for o in outs for r in o.rounds)
    later_sibling = 0
    original = engine.proposer.propose

    def spy(*args):
        proposal = original(*args)
        spy.last = proposal
        return proposal

    engine.proposer.propose = spy
    for _ in range(200):
        engine.generate(prompt, generator=gen)
        later_sibling += sum(1 for t in spy.last.parents if t == -1) > 1
    assert later_sibling > 0


@pytest.mark.slow
def test_accepting_every_candidate_is_caught():
    """A mutation of the acceptance test that keeps the first candidate always fails the chi-square."""
    world = make_world(levels=2, codes=3, num_items=5, list_len=2, seed=4, sharpness=2.0)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, 2)
    prompt = world.prompt([0, 1])[0].tolist()
    probs = exact_list_probabilities(world, trie, prompt, 0.8)
    draft = perturbed(new_draft(world.target, world.token_map, depth=3), scale=1.0)
    engine = Engine(world.target, trie, draft, 3, GenerationSettings(do_sample=True, temperature=0.8, max_new_tokens=6),
                    width=2)  # fmt: skip
    import modeling_padrec.engine.acceptance as acceptance

    original = acceptance.Chooser.accept_among
    try:
        acceptance.Chooser.accept_among = lambda self, drafted, q, logits, allowed: (
            (0, drafted[0]) if drafted else original(self, drafted, q, logits, allowed)
        )
        gen = torch.Generator().manual_seed(2)
        samples = [tuple(engine.generate(prompt, generator=gen).output_ids) for _ in range(1500)]
    finally:
        acceptance.Chooser.accept_among = original
    assert chi_square_p(samples, probs) < 1e-3
