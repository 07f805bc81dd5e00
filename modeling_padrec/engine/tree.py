"""Draft trees over the catalog trie: many candidate continuations, verified in one target forward.

A chain bets a whole round on one path. A tree spends its budget where the draft is unsure: at every choice
point it keeps the ``width`` best children by the draft, restricted to what the catalog allows there; a forced
run extends a child without spending a choice. Every node has a value, the sum over its path of one term per
choice: the draft's log-probability of that choice (EAGLE-2's cumulative probability), or, given a calibrated
``acceptance`` curve, the log of the rate at which the target accepted drafted choices of that confidence (the
path's chance to be accepted, when the draft's own probabilities are not calibrated); with one curve per sibling
order, the draft's best child at a choice point and its later children are valued by curves of their own (at the
same confidence the draft's first pick is the likelier to be the target's). Growth is level by level
(a level = one more choice on a path): the ``width`` most valuable open ends of the last level are expanded, up
to ``depth`` levels. Greedy trees are then cut back to the ``budget`` most valuable choice nodes (their forced
runs come with them); a branch no better than the ``budget``-th best branch so far can only be cut, so it is
never expanded (the same tree, fewer draft steps). Sampled trees rank by the draft, stop drawing once
``budget`` choices are drawn, and are never cut afterwards, so that every choice point's candidates stay draws
without replacement from the draft's distribution there (which recursive rejection sampling needs to be exact).

The draft steps every node it expands through, one forward per token depth for all branches at once, under a
tree attention mask (a node sees the sequence and its own ancestors) with per-node positions; a single open
branch takes the draft's one-token fast path. With ``width=1`` the tree is exactly the chain
:class:`~.proposers.DraftProposer` drafts.

This file imports only torch and its sibling files: it ships as Hub remote code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .acceptance import Chooser
from .proposers import DraftProposer, Proposal
from .scoring import crop
from .trie import ListState

FLOOR = 1e-6  # the smallest acceptance rate a value takes the log of


def check_acceptance(acceptance) -> list[list[tuple[float, float]]]:
    """Calibrated acceptance curves, one per sibling order, as ``[[(confidence, rate), ...], ...]``: the k-th curve
    is for the draft's k-th best child at a choice point (the last one for every later child); one curve
    ``[(confidence, rate), ...]`` is for every child alike. In a curve, a drafted choice of draft probability ``p``
    is accepted at the rate of the last entry whose confidence is at most ``p``; confidences start at 0 and rise
    strictly, rates lie in [0, 1] and never fall (a more confident draft is not accepted less often)."""
    acceptance = list(acceptance)
    single = not acceptance or (len(acceptance[0]) == 2 and not hasattr(acceptance[0][0], "__len__"))
    curves = [acceptance] if single else acceptance
    return [_check_curve(curve) for curve in curves]


def _check_curve(curve) -> list[tuple[float, float]]:
    curve = [(float(c), float(r)) for c, r in curve]
    if not curve or curve[0][0] != 0.0:
        raise ValueError(
            "an acceptance curve needs at least one (confidence, rate) entry, the first at confidence 0"
        )
    for (c0, r0), (c1, r1) in zip(curve, curve[1:], strict=False):
        if not c1 > c0 or r1 < r0:
            raise ValueError(f"acceptance curve: confidences must rise and rates never fall, got {curve}")
    if not all(0.0 <= r <= 1.0 for _, r in curve):
        raise ValueError(f"acceptance curve: rates must lie in [0, 1], got {curve}")
    return curve


def log_acceptance(curves: list[list[tuple[float, float]]], confidence: float, order: int = 0) -> float:
    """log of the rate the curve of sibling ``order`` (0: the draft's best child at its choice point) gives a
    drafted choice of draft probability ``confidence`` (at least ``FLOOR``); ``curves`` as
    :func:`check_acceptance` returns them."""
    curve = curves[min(order, len(curves) - 1)]
    rate = curve[0][1]
    for c, r in curve:
        if c > confidence:
            break
        rate = r
    return math.log(max(rate, FLOOR))


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """``(n, n)`` boolean: entry (i, j) is True when node j is node i or one of its ancestors (parents first)."""
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def token_depths(parents: list[int]) -> list[int]:
    """Depth of every node below the root (0 for the root's children)."""
    depths: list[int] = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


@dataclass
class _Branch:
    """A choice node and the forced run after it (node ids ``first .. last``), the list state after them, and
    the path's value (the draft's cumulative log-probability, or the log of its calibrated acceptance)."""

    first: int
    last: int
    state: ListState
    score: float
    parent: _Branch | None
    open: bool  # the next token is a choice that may still be drafted
    level: int = 1  # choices on the path, this one included
    index: int = 0  # creation order: ties in score keep parents before children


class TreeProposer(DraftProposer):
    """A PAD-Rec draft proposing a tree of continuations per round.

    Args:
        draft: a PAD-Rec draft model (any of the four ablations).
        depth: most choices on one path (default: the draft's trained depth).
        width: children kept per expanded choice point, and choice points expanded per level.
        budget: most choice nodes per tree (default: no cut beyond ``depth`` levels of ``width``).
        acceptance: a calibrated acceptance curve, or one per sibling order (:func:`check_acceptance`), to value
            greedy trees by instead of the draft's log-probabilities (``modeling_padrec.calibration.acceptance_curve``
            fits them).
    """

    def __init__(
        self,
        draft: torch.nn.Module,
        depth: int | None = None,
        width: int = 2,
        budget: int | None = None,
        acceptance=None,
    ):
        super().__init__(draft, depth)
        if width < 1:
            raise ValueError(f"tree width must be >= 1, got {width}")
        if budget is not None and budget < 1:
            raise ValueError(f"tree budget must be >= 1, got {budget}")
        self.width, self.budget = int(width), budget
        self.acceptance = None if acceptance is None else check_acceptance(acceptance)

    @torch.no_grad()
    def propose(
        self, sequence: list[int], committed: int, state: ListState, chooser: Chooser, max_tokens: int
    ) -> Proposal:
        t0 = time.perf_counter()
        root_feature, root_step = self._catch_up(sequence, committed)
        catch_up = self.forwards  # the catch-up's forwards (the tree's own are counted in ``_steps``)
        self._base = self.known  # draft cache length at the root: tree nodes are appended after it
        self._root_step = root_step
        # nodes of the tree
        self._tok: list[int] = []
        self._par: list[int] = []
        self._choice: list[bool] = []
        self._q: list[torch.Tensor | None] = []
        self._depth: list[int] = []
        self._slot: list[int] = []  # draft cache index once stepped, else -1
        self._feature: list[torch.Tensor | None] = []
        self._input: list[torch.Tensor | None] = []  # the feature each stepped node read
        self._steps = 0
        self._stepped = 0  # tree nodes in the draft cache
        root = _Branch(-1, -1, state.copy(), 0.0, None, True)
        branches: list[_Branch] = []
        frontier, drawn, level_seconds = [root], 0, []
        sample_budget = self.budget if not chooser.greedy else None
        cut_budget = self.budget if chooser.greedy else None
        curve = self.acceptance if chooser.greedy else None
        for _level in range(self.depth):
            if not frontier:
                break
            # the first level's only end is the root, whose feature the catch-up gave
            ends = [root_feature] if frontier[0] is root else self._expand_features(frontier, root_feature)
            new: list[_Branch] = []
            for branch, end in zip(frontier, ends, strict=True):
                allowed = branch.state.allowed_tensor(self.device)
                scores = self.scores(end, allowed)
                k = min(self.width, len(allowed))
                if sample_budget is not None:
                    k = min(k, sample_budget - drawn)
                if k <= 0:
                    continue
                if chooser.greedy:
                    picks = torch.sort(scores, descending=True, stable=True).indices[:k]
                    logq, q = torch.log_softmax(scores, dim=-1), None
                else:
                    q = chooser.probs(scores)
                    picks, logq = chooser.draw(q, k), q.log()
                drawn += len(picks)
                for order, j in enumerate(picks.tolist()):  # greedy picks: the draft's best first
                    value = (
                        float(logq[j])
                        if curve is None
                        else log_acceptance(curve, math.exp(float(logq[j])), order)
                    )
                    child = self._add_branch(branch, int(allowed[j]), value, q, max_tokens)
                    child.index = len(branches)
                    branches.append(child)
                    new.append(child)
            frontier = sorted((b for b in new if b.open), key=lambda b: (-b.score, b.index))[: self.width]
            if cut_budget is not None and len(branches) >= cut_budget:
                # the cut keeps the ``budget`` best branches (ties: the earlier); no descendant of a branch worth
                # no more than the budget-th best can beat them, so it is not grown
                floor = sorted(b.score for b in branches)[-cut_budget]
                frontier = [b for b in frontier if b.score > floor]
            level_seconds.append(time.perf_counter() - t0)
        crop(self.cache, committed)  # drop every position drafted on the draft's own features
        keep = self._cut(branches) if cut_budget is not None else branches
        proposal = self._proposal(keep)
        proposal.level_seconds = level_seconds
        proposal.draft_steps, proposal.forced_steps = catch_up + self._steps, self.forced_steps
        proposal.tree_forwards, proposal.tree_nodes = self._steps, self._stepped
        proposal.draft_seconds = time.perf_counter() - t0
        return proposal

    # ------------------------------------------------------------------ growing

    def _add_branch(
        self, parent: _Branch, token: int, value: float, q: torch.Tensor | None, max_tokens: int
    ) -> _Branch:
        """A choice node with ``token`` below ``parent``'s last node, then the forced run the catalog appends."""
        state = parent.state.copy()
        depth = self._depth[parent.last] + 1 if parent.last >= 0 else 0
        first = self._node(token, parent.last, True, q, depth)
        state.advance(token)
        last = first
        while not state.done and depth + 1 < max_tokens:
            forced = state.forced()
            if forced is None:
                break
            depth += 1
            last = self._node(forced, last, False, None, depth)
            state.advance(forced)
        is_open = not state.done and depth + 1 < max_tokens and state.forced() is None
        level = parent.level + 1 if parent.first >= 0 else 1
        return _Branch(first, last, state, parent.score + value, parent, is_open, level)

    def _node(self, token: int, parent: int, choice: bool, q, depth: int) -> int:
        self._tok.append(token)
        self._par.append(parent)
        self._choice.append(choice)
        self._q.append(q)
        self._depth.append(depth)
        self._slot.append(-1)
        self._feature.append(None)
        self._input.append(None)
        return len(self._tok) - 1

    def _expand_features(self, frontier: list[_Branch], root_feature: torch.Tensor) -> list[torch.Tensor]:
        """Step the draft through every node of the frontier's branches (one forward per token depth for all
        branches); returns the feature at each branch's last node (none for the root, whose logits exist)."""
        runs = [list(range(b.first, b.last + 1)) for b in frontier if b.first >= 0]
        if not runs:
            return []
        for offset in range(max(len(r) for r in runs)):
            self._step_nodes([r[offset] for r in runs if len(r) > offset], root_feature)
        return [self._feature[r[-1]] for r in runs]

    def _step_nodes(self, nodes: list[int], root_feature: torch.Tensor) -> None:
        """One draft forward over ``nodes`` (each reads the feature :meth:`_input_of` gives it)."""
        inputs = [self._input_of(n, root_feature) for n in nodes]
        for n, feature in zip(nodes, inputs, strict=True):
            self._input[n] = feature
        self.forced_steps += not any(self._choice[n] for n in nodes)  # a forward over forced nodes only
        ancestors = [self._ancestor_slots(n) for n in nodes]
        if len(nodes) == 1 and len(ancestors[0]) == self._stepped:
            # a single path: the draft's one-token fast path sees exactly the node's ancestors
            node = nodes[0]
            self._slot[node] = self.known
            step = self._root_step + self._depth[node]
            self._feature[node] = self._step(self._tok[node], inputs[0], step)
            self._steps += 1
            self._stepped += 1
            return
        past = self.known
        mask = torch.zeros(1, 1, len(nodes), past + len(nodes), dtype=torch.bool)
        mask[..., : self._base] = True
        rows = [row for row, slots in enumerate(ancestors) for _ in range(len(slots) + 1)]
        cols = [c for row, slots in enumerate(ancestors) for c in (*slots, past + row)]
        mask[0, 0, rows, cols] = True
        depth = torch.tensor([[self._depth[n] for n in nodes]], device=self.device)
        ids = torch.tensor([[self._tok[n] for n in nodes]], device=self.device)
        args = (ids, torch.cat(inputs, dim=1))
        kwargs = dict(position_ids=self._base + depth, attention_mask=mask.to(self.device), cache=self.cache,
                      compute_logits=False)  # fmt: skip
        if self.fused:  # the draft's fast path, several tokens under the tree mask
            out = self.draft.decode_step(*args, self._root_step + depth, tables=self.tables, **kwargs)
        else:
            out = self.draft(*args, step_ids=self._root_step + depth, **kwargs)
        for row, node in enumerate(nodes):
            self._slot[node] = past + row
            self._feature[node] = out.features[:, row : row + 1]
        self._steps += 1
        self._stepped += len(nodes)

    def _input_of(self, node: int, root_feature: torch.Tensor) -> torch.Tensor:
        """The feature ``node`` reads: its parent's predicted feature (the root's: the catch-up's), or, for a
        forced node of a draft trained with ``forced_inputs="block"``, what its parent read (as the chain
        reads a choice and its forced run in one forward)."""
        parent = self._par[node]
        if parent < 0:
            return root_feature
        return self._input[parent] if self.block and not self._choice[node] else self._feature[parent]

    def _ancestor_slots(self, node: int) -> list[int]:
        """Draft-cache slots of ``node``'s ancestors below the root (every one is stepped before it)."""
        slots, a = [], self._par[node]
        while a >= 0:
            slots.append(self._slot[a])
            a = self._par[a]
        return slots

    # ------------------------------------------------------------------ the proposal

    def _cut(self, branches: list[_Branch]) -> list[_Branch]:
        """The ``budget`` most valuable branches (a branch's parent is worth at least as much, and ranks first)."""
        ranked = sorted(branches, key=lambda b: (-b.score, b.index))
        kept: set[int] = set()
        for b in ranked:
            if len(kept) == self.budget:
                break
            if b.parent is None or b.parent.first < 0 or id(b.parent) in kept:
                kept.add(id(b))
        return [b for b in branches if id(b) in kept]

    def _proposal(self, branches: list[_Branch]) -> Proposal:
        """The kept branches' nodes, parents first (creation order), re-indexed."""
        ordered = sorted(branches, key=lambda b: b.first)
        nodes = [n for b in ordered for n in range(b.first, b.last + 1)]
        index = {n: i for i, n in enumerate(nodes)}
        return Proposal(
            tokens=[self._tok[n] for n in nodes],
            choice=[self._choice[n] for n in nodes],
            q=[self._q[n] for n in nodes],
            parent=[index[self._par[n]] if self._par[n] >= 0 else -1 for n in nodes],
            score=[b.score for b in ordered for _ in range(b.first, b.last + 1)],
            level=[b.level for b in ordered for _ in range(b.first, b.last + 1)],
        )
