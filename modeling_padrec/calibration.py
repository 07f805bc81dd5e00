"""Choosing a draft tree's shape for the hardware at hand, from a short calibration.

A deeper, larger tree decides more choices per target forward, but drafts longer and verifies more positions.
Which shape pays depends on the machine (how a forward's time grows with the positions it verifies) and on the
draft (how its confidence falls with depth). :func:`calibrate_tree` measures all three on a few requests that are
not the ones benchmarked (validation users):

1. **the acceptance profile**: the engine decodes the calibration requests with a wide, deep tree (``width``
   children per choice point, ``max_depth`` levels, no budget cut) and traces every round: each node's draft
   confidence, level and whether the target kept it. From it, the **acceptance curve**: the rate at which the
   target took a drafted choice it reached, by the draft's confidence in it (:func:`acceptance_curve`), over
   every drafted choice, and apart for the draft's first pick at a choice point and for its others (at the same
   confidence, the first pick is the likelier to be the target's choice);
2. **the draft's cost**: per round, its time against the forwards it ran and the nodes it stepped, fitted as
   ms = a + b · forwards + c · nodes (:func:`draft_cost_model`, non-negative least squares); and, where the chain
   is a candidate, the chain's own: the same requests decoded by the draft's chain ``max_depth`` choices deep,
   traced, each round's draft time fitted as ms = a + b · steps (:func:`chain_cost_model`), since a chain's
   one-token steps cost less per node than a tree level's masked forward;
3. **the target's cost**: one forward over n new positions under a tree mask, timed after a real prompt for n up
   to the largest tree seen (median of repeats).

Every (rank, depth, budget) is then replayed on the traced rounds: the nodes valued by the draft's log-probability,
by the acceptance curve or by the two curves by sibling order (``rank``: ``draft``, ``acceptance``, ``sibling``),
the tree cut to its first ``depth`` levels and its ``budget`` most valuable choice nodes (what
:class:`~modeling_padrec.engine.tree.TreeProposer` does), the accepted path cut where it leaves the cut tree, and
the draft charged for the forwards and nodes that growing that tree takes (:func:`growth`: the proposer does not
grow a branch the cut would drop). So is the draft's chain at every depth (each choice point's first pick;
``rank="chain"``): no tree at all is a candidate. The shape with the most choices decided per millisecond is
chosen. Two approximations: the replay keeps the traced tree's expanded branches, chosen by the draft's values
(ranked by acceptance, the proposer may expand others; where the traced tree's frontier dropped the chain's own
path, the replayed chain stops short); and it counts the target's own token at the end of every round as one
more choice (a correction or a bonus; rarely, a round ends before a forced token and gets none), so it slightly
favours small trees alike everywhere.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

import torch

from .engine import Engine, GenerationSettings
from .engine.tree import ancestor_mask, check_acceptance, log_acceptance

BUDGETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)
RANKS = ("draft", "acceptance", "sibling")  # what a tree's nodes are valued by


@dataclass
class TreeCalibration:
    """The chosen tree shape and what it was chosen from (``grid``: every replayed shape)."""

    width: int  # 1 when the chain was chosen (``rank="chain"``)
    depth: int
    budget: int | None  # None: no cut (the chain)
    requests: int
    rounds: int
    rank: str = "draft"  # one of RANKS, or "chain"
    acceptance: list[list[float]] | None = None  # [confidence, rate] pairs (acceptance_curve)
    # the same for the draft's first pick at a choice point, then for its other picks
    acceptance_by_sibling: list[list[list[float]]] | None = None
    target_ms: dict[int, float] = field(default_factory=dict)  # new positions → ms of one target forward
    draft_ms_by_level: list[float] = field(default_factory=list)  # mean draft ms to grow levels 1..k
    draft_ms_model: dict[str, float] = field(default_factory=dict)  # ms per round, per forward, per node
    # the chain's: ms per round and per draft step, fitted on the chain's own traced rounds (None: not a candidate)
    chain_draft_ms_model: dict[str, float] | None = None
    other_ms_per_round: float = 0.0
    grid: list[dict] = field(default_factory=list)
    confidence: list[dict] = field(default_factory=list)  # by level: the draft's confidence vs acceptance
    branching: list[dict] = field(default_factory=list)  # by item slot: where the chosen shape's nodes go

    @property
    def curve(self) -> list[tuple[float, float]] | None:
        """The acceptance curve(s) to build the engine with (None when the chosen shape is valued by the draft, or
        is the chain)."""
        if self.rank == "acceptance":
            return [tuple(p) for p in self.acceptance]
        if self.rank == "sibling":
            return [[tuple(p) for p in cv] for cv in self.acceptance_by_sibling]
        return None

    def to_json(self) -> dict:
        out = asdict(self)
        out["target_ms"] = {str(k): v for k, v in self.target_ms.items()}
        return out


@torch.no_grad()
def target_cost(engine: Engine, prompt: list[int], sizes: list[int], repeats: int = 5) -> dict[int, float]:
    """Median ms of one target forward over ``n`` new positions (a tree mask, a chain of tokens) after
    ``prompt``, for every ``n`` in ``sizes``."""
    scorer = engine.scorer
    device = scorer.device
    cache = scorer.new_cache()
    scorer.score(cache, torch.tensor([prompt], device=device))
    past = len(prompt)
    token = prompt[-1]
    out = {}
    for n in sizes:
        parents = list(range(-1, n - 1))
        mask = torch.ones(n, past + n, dtype=torch.bool)
        mask[:, past:] = ancestor_mask(parents)
        mask = mask[None, None].to(device)
        ids = torch.full((1, n), token, device=device)
        positions = torch.arange(past, past + n, device=device)[None]
        times = []
        for _ in range(repeats + 1):
            t0 = engine.clock()
            scorer.score(cache, ids, positions, mask)
            times.append(1000 * (engine.clock() - t0))
            scorer.keep(cache, past, 0)
        out[n] = statistics.median(times[1:])  # the first is a warm-up
    return out


def _interpolate(table: dict[int, float], n: int) -> float:
    keys = sorted(table)
    if n <= keys[0]:
        return table[keys[0]]
    for lo, hi in zip(keys, keys[1:], strict=False):
        if n <= hi:
            return table[lo] + (table[hi] - table[lo]) * (n - lo) / (hi - lo)
    lo, hi = keys[-2], keys[-1]  # beyond the grid: extend the last segment
    return table[hi] + (table[hi] - table[lo]) * (n - hi) / (hi - lo)


def _branch_heads(parent: list[int], choice: list[bool]) -> list[int]:
    """For every node, the choice node that starts its branch (a forced node belongs to the branch above it)."""
    heads = []
    for i, p in enumerate(parent):
        heads.append(i if choice[i] else heads[p])
    return heads


def sibling_orders(parent: list[int], choice: list[bool]) -> list[int]:
    """For every choice node, its place among the choices drafted at the same choice point (0: the draft's best,
    which the proposer creates first); -1 for a forced node."""
    seen: dict[int, int] = {}
    orders = []
    for p, c in zip(parent, choice, strict=True):
        if c:
            orders.append(seen.get(p, 0))
            seen[p] = orders[-1] + 1
        else:
            orders.append(-1)
    return orders


def _values(round_: dict, curve=None) -> list[float]:
    """Every node's value in a round traced from a tree valued by the draft: the trace's own score (the draft's
    cumulative log-probability), or with ``curve`` (one or one per sibling order, as
    :func:`~modeling_padrec.engine.tree.check_acceptance` takes) the sum of the log acceptance rates of the path's
    choices."""
    if curve is None:
        return round_["score"]
    curves = check_acceptance(curve)
    parent, choice, score = round_["parent"], round_["choice"], round_["score"]
    heads = _branch_heads(parent, choice)
    orders = sibling_orders(parent, choice)
    values: list[float] = []
    for i, p in enumerate(parent):
        if not choice[i]:
            values.append(values[p])
            continue
        above, base = (score[heads[p]], values[heads[p]]) if p >= 0 else (0.0, 0.0)
        values.append(base + log_acceptance(curves, math.exp(score[i] - above), orders[i]))
    return values


def _chain_cut(round_: dict, depth: int) -> tuple[list[int], set[int]]:
    """(branch head of every node, the choice nodes kept) of a traced tree cut to the chain a draft proposes:
    its first pick at every choice point, ``depth`` choices deep (shorter where the traced tree did not grow it)."""
    parent, choice, level = round_["parent"], round_["choice"], round_["level"]
    heads = _branch_heads(parent, choice)
    orders = sibling_orders(parent, choice)
    kept: set[int] = set()
    for i, p in enumerate(parent):  # parents come first
        if orders[i] == 0 and level[i] <= depth and (p < 0 or heads[p] in kept):
            kept.add(i)
    return heads, kept


def _cut(round_: dict, depth: int, budget: int | None, curve=None) -> tuple[list[int], set[int]]:
    """(branch head of every node, the choice nodes kept) of a traced tree cut to ``depth`` levels and its
    ``budget`` most valuable choice nodes, a node never without its parent (what the proposer does); with
    ``curve="chain"``, to the chain (:func:`_chain_cut`)."""
    if curve == "chain":
        return _chain_cut(round_, depth)
    parent, choice, level = round_["parent"], round_["choice"], round_["level"]
    score = _values(round_, curve)
    heads = _branch_heads(parent, choice)
    ranked = sorted(
        (i for i in range(len(parent)) if choice[i] and level[i] <= depth), key=lambda i: (-score[i], i)
    )
    kept: set[int] = set()
    for i in ranked:
        if len(kept) == budget:
            break
        above = parent[i]
        if above < 0 or heads[above] in kept:
            kept.add(i)
    return heads, kept


def replay(round_: dict, depth: int, budget: int | None, curve=None) -> tuple[int, int]:
    """(positions verified, choices accepted) of one traced round had its tree been cut to ``depth`` levels
    and ``budget`` choice nodes, valued by the draft or by the acceptance ``curve`` (``"chain"``: had the draft
    proposed its chain ``depth`` choices deep instead)."""
    parent, choice = round_["parent"], round_["choice"]
    heads, kept = _cut(round_, depth, budget, curve)
    positions = round_["waiting"] + sum(1 for i in range(len(parent)) if heads[i] in kept)
    accepted = 0
    for node in round_["path"]:
        if heads[node] not in kept:
            break
        accepted += choice[node]
    return positions, accepted


def growth(round_: dict, depth: int, budget: int | None, curve=None) -> tuple[int, int]:
    """(draft forwards, nodes stepped) to grow the tree of one traced round cut to ``depth`` levels and ``budget``
    choice nodes (the catch-up before it not counted). The proposer expands a branch by stepping the draft through
    its nodes (one forward per token depth for all branches of a level), and skips a branch worth no more than the
    ``budget``-th best so far: the cut would drop it with everything below it. With ``curve="chain"``: the chain's
    steps, one forward per token of every choice's run but the last."""
    parent, choice, level = round_["parent"], round_["choice"], round_["level"]
    heads = _branch_heads(parent, choice)
    run: dict[int, int] = {}
    for h in heads:
        run[h] = run.get(h, 0) + 1
    if curve == "chain":
        _, kept = _chain_cut(round_, depth)
        # the chain steps over the run of every choice a later choice follows
        stepped = sum(run[heads[parent[i]]] for i in kept if parent[i] >= 0)
        return stepped, stepped
    values = _values(round_, curve)
    grown = {heads[p] for i, p in enumerate(parent) if p >= 0 and choice[i]}
    forwards = nodes = 0
    for lv in range(1, depth):
        expanded = [b for b in grown if level[b] == lv]
        upto = sorted(values[b] for b in run if level[b] <= lv)
        if budget is not None and len(upto) >= budget:
            expanded = [b for b in expanded if values[b] > upto[-budget]]
        if expanded:
            forwards += max(run[b] for b in expanded)
            nodes += sum(run[b] for b in expanded)
    return forwards, nodes


def _nnls(columns: list[list[float]], y: list[float]) -> list[float]:
    """Non-negative least squares of ``y`` on the ``columns`` (a handful): exact, by trying every active set."""
    x = torch.tensor(columns, dtype=torch.float64).T
    target = torch.tensor(y, dtype=torch.float64)
    k = x.shape[1]
    best, best_err = [0.0] * k, float((target**2).sum())
    for mask in range(1, 2**k):
        subset = [j for j in range(k) if mask >> j & 1]
        coef = torch.linalg.lstsq(x[:, subset], target[:, None]).solution[:, 0]
        if bool((coef < 0).any()):
            continue
        err = float(((x[:, subset] @ coef - target) ** 2).sum())
        if err < best_err - 1e-12:
            best, best_err = [0.0] * k, err
            for j, c in zip(subset, coef.tolist(), strict=True):
                best[j] = c
    return best


def draft_cost_model(rounds: list[dict]) -> tuple[float, float, float]:
    """(ms per round, ms per draft forward, ms per node stepped): a non-negative least-squares fit of every traced
    round's draft time (catch-up included: one forward and one node per token)."""
    ones = [1.0] * len(rounds)
    forwards = [float(r["draft_steps"]) for r in rounds]
    nodes = [float(r["draft_steps"] - r["tree_forwards"] + r["tree_nodes"]) for r in rounds]
    ms = [1000 * r["draft_seconds"] for r in rounds]
    return tuple(_nnls([ones, forwards, nodes], ms))


def chain_cost_model(rounds: list[dict]) -> tuple[float, float]:
    """(ms per round, ms per draft step): the chain's draft time per round fitted on rounds of the chain itself
    (non-negative least squares). A chain steps one token at a time through the draft's one-token fast path,
    which costs less per node than a tree level's masked many-node forward: charged by the tree's fit, deep chains
    looked dearer than they are."""
    ones = [1.0] * len(rounds)
    steps = [float(r["draft_steps"]) for r in rounds]
    return tuple(_nnls([ones, steps], [1000 * r["draft_seconds"] for r in rounds]))


def _reached(rounds: list[dict]):
    """(level, the draft's confidence, accepted, sibling order) of every drafted choice whose choice point the
    target reached (its parent is on the accepted path, or is the root); the confidence is the draft's probability
    of it there."""
    for r in rounds:
        on_path = set(r["path"])
        parent, choice, score, level = r["parent"], r["choice"], r["score"], r["level"]
        heads = _branch_heads(parent, choice)
        orders = sibling_orders(parent, choice)
        for i, p in enumerate(parent):
            if not choice[i] or not (p < 0 or p in on_path):
                continue
            above = score[heads[p]] if p >= 0 else 0.0
            yield level[i], math.exp(score[i] - above), i in on_path, orders[i]


def acceptance_curve(
    rounds: list[dict], bins: int = 10, first: bool | None = None
) -> list[tuple[float, float]]:
    """The rate at which the target takes a drafted choice it reached, by the draft's confidence in it: the
    choices in ``bins`` groups of equal size by confidence (equal confidences never split), pooled with their
    neighbours until the rate never falls as the confidence rises (pool-adjacent-violators). ``first``: True for
    the draft's first pick at each choice point only, False for its other picks only, None for all. Returns
    ``[(confidence, rate), ...]``, the first at confidence 0, for :class:`~modeling_padrec.engine.tree.TreeProposer`."""
    pairs = sorted((c, a) for _, c, a, order in _reached(rounds) if first is None or (order == 0) == first)
    if not pairs:
        which = {None: "", True: " first-pick", False: " later-pick"}[first]
        raise ValueError(f"acceptance curve: the traced rounds reached no{which} drafted choice")
    size = max(1, math.ceil(len(pairs) / bins))
    groups: list[list] = []  # [first confidence, count, accepted]
    last = None
    for c, a in pairs:
        if groups and (groups[-1][1] < size or last == c):
            groups[-1][1] += 1
            groups[-1][2] += a
        else:
            groups.append([c, 1, int(a)])
        last = c
    pooled: list[list] = []
    for g in groups:
        pooled.append(list(g))
        while len(pooled) > 1 and pooled[-2][2] / pooled[-2][1] > pooled[-1][2] / pooled[-1][1]:
            top = pooled.pop()
            pooled[-1][1] += top[1]
            pooled[-1][2] += top[2]
    pooled[0][0] = 0.0
    return [(c, round(a / n, 6)) for c, n, a in pooled]


def confidence_by_level(rounds: list[dict], bins: int = 5) -> list[dict]:
    """How well the draft's own probability of a drafted choice predicts that the target takes it, by level.

    A drafted choice counts once the target reached its choice point (its parent is on the accepted path, or is
    the root); its confidence is the draft's probability of it there. Per level: the mean confidence, the
    acceptance rate, and both per confidence bin (a reliability curve), with the expected calibration error."""
    by_level: dict[int, list[tuple[float, bool]]] = {}
    for lv, c, a, _ in _reached(rounds):
        by_level.setdefault(lv, []).append((c, a))
    out = []
    for lv in sorted(by_level):
        pairs = by_level[lv]
        curve = []
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            cell = [(c, a) for c, a in pairs if lo <= c < hi or (b == bins - 1 and c == 1.0)]
            if cell:
                curve.append({
                    "bin": [lo, hi], "n": len(cell),
                    "confidence": round(sum(c for c, _ in cell) / len(cell), 4),
                    "accepted": round(sum(a for _, a in cell) / len(cell), 4),
                })  # fmt: skip
        ece = sum(c["n"] * abs(c["confidence"] - c["accepted"]) for c in curve) / len(pairs)
        out.append({
            "level": lv, "drafted": len(pairs),
            "confidence": round(sum(c for c, _ in pairs) / len(pairs), 4),
            "accepted": round(sum(a for _, a in pairs) / len(pairs), 4),
            "ece": round(ece, 4), "curve": curve,
        })  # fmt: skip
    return out


def branching_by_slot(
    rounds: list[dict], depth: int, budget: int, slot_of, slot_names, curve=None
) -> list[dict]:
    """Where the tree of the chosen shape spends its choice nodes: per item slot of the drafted token, the share
    of kept choice nodes, and how many of them the target accepted."""
    counts: dict[int, list[int]] = {}
    for r in rounds:
        _, kept = _cut(r, depth, budget, curve)
        on_path = set(r["path"])
        for i in kept:
            cell = counts.setdefault(slot_of[r["tokens"][i]], [0, 0])
            cell[0] += 1
            cell[1] += i in on_path
    total = sum(c[0] for c in counts.values()) or 1
    return [
        {"slot": slot_names[s], "share": round(n / total, 4), "kept": n, "accepted": round(a / n, 4)}
        for s, (n, a) in sorted(counts.items())
    ]


def calibrate_tree(
    rec,
    draft,
    users: list[str],
    split: str = "valid",
    width: int = 3,
    max_depth: int = 10,
    budgets: tuple[int, ...] = BUDGETS,
    progress=None,
    rank: str = "auto",
) -> TreeCalibration:
    """Measure, replay, choose (see the module's docstring). ``users``: the calibration requests (the first is a
    warm-up); ``rec``: a :class:`~modeling_padrec.decoding.Recommender`; ``rank``: what the tree's nodes are
    valued by, ``"draft"``, ``"acceptance"`` or ``"auto"`` (both replayed, the better shape chosen)."""
    if len(users) < 2:
        raise ValueError("tree calibration needs at least 2 requests (the first is a warm-up)")
    if rank != "auto" and rank not in RANKS:
        raise ValueError(f"tree rank must be auto or one of {', '.join(RANKS)}, got {rank!r}")
    engine = Engine(rec.target.model, rec.trie, draft, max_depth, GenerationSettings(max_new_tokens=rec.max_new_tokens),
                    width=width)  # fmt: skip
    rounds, other_ms, prompts = [], [], []
    for i, user in enumerate(users):
        prompt = rec.prompt(user, split)
        out = engine.generate(prompt, trace=True)
        if progress is not None:
            progress.update(1)
        if i == 0:
            continue
        prompts.append(prompt)
        rounds += out.trace
        n_rounds = max(out.target_forwards, 1)
        other_ms.append(1000 * (out.seconds - out.draft_seconds - out.forward_seconds) / n_rounds)
    largest = max(r["waiting"] + len(r["parent"]) for r in rounds)
    sizes = sorted(
        {n for n in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if n < largest} | {largest}
    )
    prompt = sorted(prompts, key=len)[len(prompts) // 2]
    target_ms = target_cost(engine, prompt, sizes)
    levels = max(len(r["level_seconds"]) for r in rounds)
    draft_ms = [
        1000 * statistics.mean(r["level_seconds"][min(k, len(r["level_seconds"])) - 1] for r in rounds)
        for k in range(1, levels + 1)
    ]
    other = statistics.mean(other_ms)
    per_round, per_forward, per_node = draft_cost_model(rounds)
    ranks = (*RANKS, "chain") if rank == "auto" else (rank,)
    chain_model = None
    if "chain" in ranks:  # the chain's own cost: the same requests decoded by the draft's chain, traced
        chain = Engine(rec.target.model, rec.trie, draft, max_depth,
                       GenerationSettings(max_new_tokens=rec.max_new_tokens))  # fmt: skip
        chain_rounds = [r for p in prompts for r in chain.generate(p, trace=True).trace]
        chain_model = chain_cost_model(chain_rounds)
    curve = acceptance_curve(rounds)
    by_sibling = []
    for first in (True, False):
        try:
            by_sibling.append(acceptance_curve(rounds, first=first))
        except ValueError:  # no choice of that kind was reached: the pooled curve stands in
            by_sibling.append(curve)
    curves = {"draft": None, "acceptance": curve, "sibling": by_sibling, "chain": "chain"}
    catch_up = [r["draft_steps"] - r["tree_forwards"] for r in rounds]
    grid = []
    for rank_ in ranks:
        values = curves[rank_]
        for depth in range(1, levels + 1):
            for budget in (None,) if rank_ == "chain" else budgets:
                replays = [replay(r, depth, budget, values) for r in rounds]
                grown = [growth(r, depth, budget, values) for r in rounds]
                positions = statistics.mean(p for p, _ in replays)
                choices = statistics.mean(a for _, a in replays) + 1
                if rank_ == "chain":  # a chain's steps (catch-up included) at the chain's own cost
                    draft = statistics.mean(
                        chain_model[0] + chain_model[1] * (c + f)
                        for c, (f, _) in zip(catch_up, grown, strict=True)
                    )
                else:
                    draft = statistics.mean(
                        per_round + per_forward * (c + f) + per_node * (c + n)
                        for c, (f, n) in zip(catch_up, grown, strict=True)
                    )
                ms = draft + statistics.mean(_interpolate(target_ms, p) for p, _ in replays) + other
                grid.append({
                    "rank": rank_, "depth": depth, "budget": budget, "positions": round(positions, 2),
                    "choices_per_round": round(choices, 3), "draft_ms": round(draft, 3), "ms_per_round": round(ms, 3),
                    "choices_per_ms": round(choices / ms, 5),
                })  # fmt: skip
    # the most choices per ms; on a tie the smaller tree (the chain first)
    best = max(grid, key=lambda g: (g["choices_per_ms"], -(g["budget"] or 0)))
    tm = rec.token_map
    branching = branching_by_slot(
        rounds, best["depth"], best["budget"], tm.slot_table().tolist(), tm.slot_names(), curves[best["rank"]]
    )
    return TreeCalibration(
        width=1 if best["rank"] == "chain" else width, depth=best["depth"], budget=best["budget"],
        requests=len(users) - 1, rounds=len(rounds), rank=best["rank"], acceptance=[[c, r] for c, r in curve],
        acceptance_by_sibling=[[[c, r] for c, r in cv] for cv in by_sibling],
        target_ms={k: round(v, 4) for k, v in target_ms.items()}, draft_ms_by_level=[round(d, 4) for d in draft_ms],
        draft_ms_model={"per_round": round(per_round, 4), "per_forward": round(per_forward, 4),
                        "per_node": round(per_node, 4)},
        chain_draft_ms_model=None if chain_model is None else {
            "per_round": round(chain_model[0], 4), "per_step": round(chain_model[1], 4), "rounds": len(chain_rounds)},
        other_ms_per_round=round(other, 4), grid=grid, confidence=confidence_by_level(rounds), branching=branching,
    )  # fmt: skip
