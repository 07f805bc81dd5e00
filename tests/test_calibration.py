"""Tree calibration: the replay of a cut tree, the confidence table, and the replay against real traces."""

from __future__ import annotations

import math

import pytest
import torch
from draft_world import EOS, SEP, make_world, perturbed

from modeling_padrec.calibration import (
    _chain_cut,
    acceptance_curve,
    chain_cost_model,
    confidence_by_level,
    draft_cost_model,
    growth,
    replay,
    sibling_orders,
)
from modeling_padrec.draft import new_draft
from modeling_padrec.engine import CatalogTrie, Engine, GenerationSettings

# root ─ a(choice, -0.1) ─ a'(forced) ─ c(choice, -0.3)
#      └ b(choice, -0.9) ─ d(choice, -1.0)
ROUND = {
    "waiting": 2,
    "parent": [-1, 0, 1, -1, 3],
    "choice": [True, False, True, True, True],
    "score": [-0.1, -0.1, -0.3, -0.9, -1.0],
    "level": [1, 1, 2, 1, 2],
    "path": [0, 1, 2],
}


def test_replay_cuts_by_depth_and_budget():
    assert replay(ROUND, depth=2, budget=10) == (2 + 5, 2)  # the whole tree; a, c accepted
    assert replay(ROUND, depth=1, budget=10) == (2 + 3, 1)  # level 1 only: a, a', b
    assert replay(ROUND, depth=2, budget=2) == (2 + 3, 2)  # the two most confident: a (with a') and c
    assert replay(ROUND, depth=2, budget=1) == (2 + 2, 1)
    # d is more confident than nothing but its parent b is cut: never kept without it
    round_ = {**ROUND, "score": [-0.1, -0.1, -3.0, -0.9, -1.0]}
    assert replay(round_, depth=2, budget=3) == (2 + 4, 1)


def test_replay_by_acceptance_values_each_choice_by_the_curve():
    # confidences: a 0.905, c 0.819 (exp(-0.3 - -0.1)), b 0.407, d 0.905 (exp(-1.0 - -0.9))
    curve = [(0.0, 0.2), (0.5, 0.6), (0.9, 0.95)]
    # values: a log .95, c log .95 + log .6, b log .2, d log .2 + log .95
    assert replay(ROUND, depth=2, budget=2, curve=curve) == (2 + 3, 2)  # a (with a') and c, as by the draft
    # a curve that trusts b's kind of confidence more than c's: b outranks c
    flat = [
        (0.0, 0.5),
        (0.85, 0.9),
    ]  # a .9, c .5, b .5, d .9 -> values a -0.105, c -0.798, b -0.693, d -0.799
    assert replay(ROUND, depth=2, budget=2, curve=flat) == (
        2 + 3,
        1,
    )  # a, a', b: c is cut, so is its acceptance
    assert replay(ROUND, depth=2, budget=2) == (2 + 3, 2)  # by the draft, c (-0.3) beats b (-0.9)


def test_sibling_orders_follow_creation_at_each_choice_point():
    assert sibling_orders(ROUND["parent"], ROUND["choice"]) == [
        0,
        -1,
        0,
        1,
        0,
    ]  # a first, b second at the root
    # root ─ x, y, z; x ─ x'(forced) ─ u, v
    assert sibling_orders([-1, -1, -1, 0, 3, 3], [True, True, True, False, True, True]) == [0, 1, 2, -1, 0, 1]


def test_replay_by_sibling_curves_values_first_picks_apart():
    # a and d are first picks (confidences .905, .905), c a first pick (.819), b the root's second pick (.407)
    pooled = [(0.0, 0.5), (0.85, 0.9)]  # a .9, c .5, b .5, d .9: b's -0.693 beats c's -0.798
    assert replay(ROUND, depth=2, budget=2, curve=pooled) == (2 + 3, 1)  # a, a', b
    # by sibling order: a first pick of .819 is taken at .8, a second pick of .407 at .3: c beats b
    siblings = [[(0.0, 0.8), (0.85, 0.9)], [(0.0, 0.3)]]
    assert replay(ROUND, depth=2, budget=2, curve=siblings) == (2 + 3, 2)  # a, a', c: both accepted
    # one curve for every sibling is the pooled curve
    assert replay(ROUND, depth=2, budget=2, curve=[pooled]) == replay(ROUND, depth=2, budget=2, curve=pooled)


def test_replay_of_the_chain_takes_every_first_pick():
    # the chain: a (a' forced) then c; b and d are nobody's first pick on the chain's path
    assert replay(ROUND, depth=2, budget=None, curve="chain") == (2 + 3, 2)
    assert replay(ROUND, depth=1, budget=None, curve="chain") == (2 + 2, 1)
    # to draft c the chain steps over a and a' (one forward each); it never steps over its last choice
    assert growth(ROUND, depth=2, budget=None, curve="chain") == (2, 2)
    assert growth(ROUND, depth=1, budget=None, curve="chain") == (0, 0)
    # the target took b, the root's second pick: the chain decides nothing beyond the target's own token
    round_ = {**ROUND, "path": [3, 4]}
    assert replay(round_, depth=2, budget=None, curve="chain") == (2 + 3, 0)


def test_the_chain_replayed_from_a_traced_tree_is_the_chain_the_engine_drafts():
    """On the same state (a request's first drafted round), the chain cut from a traced tree is the chain the
    engine's own chain proposes, token for token, and costs the draft forwards it ran."""
    compared = 0
    for seed in range(4):
        world = make_world(levels=3, codes=4, num_items=40, list_len=4, seed=seed)
        trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
        draft = perturbed(new_draft(world.target, world.token_map, depth=4, seed=seed), scale=1.0, seed=seed)
        sets = GenerationSettings(max_new_tokens=16)
        prompt = world.prompt([0, 1])
        tree = Engine(world.target, trie, draft, 3, sets, width=4).generate(prompt, trace=True).trace[0]
        chain = Engine(world.target, trie, draft, 3, sets).generate(prompt, trace=True).trace[0]
        heads, kept = _chain_cut(tree, 3)
        nodes = [i for i in range(len(tree["parent"])) if heads[i] in kept]
        if sum(tree["choice"][i] for i in nodes) < 3 and len(chain["tokens"]) > len(nodes):
            continue  # the traced tree did not grow the chain's whole path (a wider frontier beat it)
        assert [tree["tokens"][i] for i in nodes] == chain["tokens"]
        positions, accepted = replay(tree, 3, None, "chain")
        assert positions == chain["waiting"] + len(chain["tokens"])
        assert accepted == sum(chain["choice"][n] for n in chain["path"])
        catch_up = tree["draft_steps"] - tree["tree_forwards"]
        assert growth(tree, 3, None, "chain")[0] == chain["draft_steps"] - catch_up
        compared += 1
    assert compared >= 3


def test_growth_steps_only_the_branches_that_can_survive_the_cut():
    # the draft steps a (2 nodes: a, a') and b (1 node) to grow level 2: one forward per token depth
    assert growth(ROUND, depth=2, budget=None) == (2, 3)
    assert growth(ROUND, depth=2, budget=2) == (2, 2)  # b is the 2nd best so far: its children can't be kept
    assert growth(ROUND, depth=2, budget=1) == (0, 0)  # a fills the budget: nothing below it is kept
    assert growth(ROUND, depth=1, budget=None) == (0, 0)  # one level: nothing is grown


def one_choice_point(pairs):
    """Rounds of a single drafted choice each, reached at the root: (confidence, accepted) per round."""
    return [
        {"parent": [-1], "choice": [True], "score": [math.log(c)], "level": [1], "path": [0] if a else []}
        for c, a in pairs
    ]


def test_acceptance_curve_pools_until_it_rises():
    pairs = [(0.1, 0), (0.2, 1), (0.3, 1), (0.4, 0), (0.6, 0), (0.7, 1), (0.8, 1), (0.9, 1)]
    curve = acceptance_curve(one_choice_point(pairs), bins=4)
    # groups of two: rates 0.5, 0.5, 0.5, 1.0 -> already non-decreasing
    assert [(round(c, 6), r) for c, r in curve] == [(0.0, 0.5), (0.3, 0.5), (0.6, 0.5), (0.8, 1.0)]
    falling = [(0.1, 1), (0.2, 1), (0.3, 0), (0.4, 0), (0.6, 1), (0.7, 1)]
    curve = acceptance_curve(one_choice_point(falling), bins=3)
    # rates 1.0, 0.0, 1.0: the first two pool to 0.5
    assert [(round(c, 6), r) for c, r in curve] == [(0.0, 0.5), (0.6, 1.0)]
    ties = [(0.5, 1)] * 5 + [(0.9, 0)]
    assert acceptance_curve(one_choice_point(ties), bins=6) == [(0.0, round(5 / 6, 6))]  # ties never split
    with pytest.raises(ValueError, match="no drafted choice"):
        acceptance_curve([])


def test_acceptance_curves_of_first_and_later_picks():
    # ROUND reaches a (first pick, taken), b (second pick, not taken) at the root and c (first pick, taken)
    assert acceptance_curve([ROUND], bins=1, first=True) == [(0.0, 1.0)]
    assert acceptance_curve([ROUND], bins=1, first=False) == [(0.0, 0.0)]
    assert acceptance_curve([ROUND], bins=1) == [(0.0, round(2 / 3, 6))]
    with pytest.raises(ValueError, match="no later-pick drafted choice"):
        acceptance_curve(one_choice_point([(0.5, 1)]), first=False)


def chain_round(steps, forwards, nodes, ms):
    return {"draft_steps": steps, "tree_forwards": forwards, "tree_nodes": nodes, "draft_seconds": ms / 1000}


def test_draft_cost_model_recovers_a_linear_cost_and_stays_non_negative():
    shapes = [(3, 1, 1), (6, 3, 8), (9, 5, 20), (4, 2, 2), (12, 6, 30), (7, 3, 12)]
    rounds = [chain_round(s, f, n, 0.5 + 0.2 * s + 0.1 * (s - f + n)) for s, f, n in shapes]
    a, b, c = draft_cost_model(rounds)
    assert abs(a - 0.5) < 1e-6 and abs(b - 0.2) < 1e-6 and abs(c - 0.1) < 1e-6
    # a cost that falls with the nodes stepped fits no negative coefficient
    rounds = [chain_round(s, f, n, 5.0 + 0.3 * s - 0.05 * (s - f + n)) for s, f, n in shapes]
    assert min(draft_cost_model(rounds)) >= 0.0


def test_chain_cost_model_recovers_a_per_step_cost_and_stays_non_negative():
    steps = [3, 7, 12, 5, 15, 9]
    rounds = [chain_round(s, 0, 0, 1.5 + 0.4 * s) for s in steps]
    a, b = chain_cost_model(rounds)
    assert abs(a - 1.5) < 1e-6 and abs(b - 0.4) < 1e-6
    # a time that falls with the steps fits no negative slope: the mean, per round
    a, b = chain_cost_model([chain_round(s, 0, 0, 9.0 - 0.2 * s) for s in steps])
    assert b == 0.0 and abs(a - (9.0 - 0.2 * sum(steps) / len(steps))) < 1e-6


def test_confidence_counts_reached_choice_points_only():
    levels = confidence_by_level([ROUND])
    one, two = levels
    assert one["level"] == 1 and one["drafted"] == 2 and one["accepted"] == 0.5  # a kept, b not
    assert abs(one["confidence"] - (0.9048 + 0.4066) / 2) < 1e-3
    assert two["drafted"] == 1 and two["accepted"] == 1.0  # c (d's choice point, b, was never reached)
    assert abs(two["confidence"] - 0.8187) < 1e-3  # exp(-0.3 - -0.1)


def test_replay_of_the_full_tree_is_what_happened():
    world = make_world(levels=3, codes=3, num_items=20, list_len=4, seed=3)
    trie = CatalogTrie(torch.tensor(world.items), SEP, EOS, world.list_len)
    draft = perturbed(new_draft(world.target, world.token_map, depth=4, seed=3), scale=1.0, seed=3)
    engine = Engine(world.target, trie, draft, 3, GenerationSettings(max_new_tokens=16), width=2)
    out = engine.generate(world.prompt([0, 1]), trace=True)
    assert len(out.trace) == out.target_forwards - 1  # every round after the prefill
    for r, rnd in zip(out.trace, out.rounds, strict=True):
        positions, accepted = replay(r, depth=3, budget=1000)
        assert positions == r["waiting"] + len(r["parent"])
        assert accepted == sum(r["choice"][n] for n in r["path"])
        assert len(r["path"]) == rnd.accepted
        assert len(r["level_seconds"]) <= 3
        assert growth(r, depth=3, budget=None) == (r["tree_forwards"], r["tree_nodes"])
