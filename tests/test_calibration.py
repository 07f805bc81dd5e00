"""Tree calibration: the replay of a cut tree, the confidence table, and the replay against real traces."""

from __future__ import annotations

import torch
from draft_world import EOS, SEP, make_world, perturbed

from modeling_padrec.calibration import confidence_by_level, replay
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
