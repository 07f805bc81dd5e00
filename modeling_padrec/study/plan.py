"""What the study trains and measures: draft cells, grouped into bench groups, for each factor.

A *draft* is one trained PAD-Rec ablation: (dataset, target, variant, seed, steps, train depth). A *group* is the
drafts that are benched together, interleaved request by request on the same users: every variant trained with
one (dataset, target, seed, steps, train depth), decoded greedily or sampled. Factors share groups: the
ablation's groups at the base budget and depth are also the budget factor's and the depth factor's middle points,
the sampling factor benches drafts the other factors trained, and the target factor's reference cell is the budget
factor's smallest, so nothing is trained twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

VARIANTS = {  # the four-way ablation: variant -> (item-slot signal, draft-step signal)
    "pad-rec": (True, True),
    "item-only": (True, False),
    "step-only": (False, True),
    "no-position": (False, False),
}
UNGATED = "pad-rec-ungated"  # PAD-Rec with the step embedding added ungated: the gate's cheaper form
FACTORS = ("ablation", "budget", "depth", "sampling", "gate", "target")
DATASETS = ("Instruments", "Beauty", "beauty-timesplit")
BASE_STEPS, BUDGETS = 500, (150, 500, 1500)
BASE_DEPTH, DEPTHS = 12, (5, 12)  # unrolled steps in training; an engine round of 5 choices steps ~12 tokens
# the budget, depth and sampling factors compare the full draft with no signals
PAIR = ("pad-rec", "no-position")
# greedy vs sampling at temperature 1, at the smallest budget and at the base one (drafts of the budget factor)
SAMPLING_TEMPERATURE, SAMPLING_STEPS = 1.0, (BUDGETS[0], BASE_STEPS)
# the step gate's cost: PAD-Rec with and without its context gate, beside the no-position draft
GATE_VARIANTS, GATE_STEPS = ("pad-rec", UNGATED, "no-position"), (BUDGETS[0],)
# target size: the reference target (qwen2-small, 4 layers) and a deeper one at its width (qwen2-deep, 8 layers),
# each with its own distilled pair of drafts at the smallest budget
TARGETS, TARGET_STEPS = ("ref", "deep"), (BUDGETS[0],)


def draft_settings(variant: str) -> dict:
    """``train_draft`` arguments of a study variant."""
    if variant == UNGATED:
        return {"use_item_position": True, "use_step_position": True, "step_gate": "none"}
    item, step = VARIANTS[variant]
    return {"use_item_position": item, "use_step_position": step}


@dataclass(frozen=True, order=True)
class Group:
    """Drafts benched together: every ``variants`` draft of one (dataset, target, seed, steps, depth), decoded
    greedily (``temperature`` 0) or sampled at ``temperature`` (the drafts are the same either way)."""

    dataset: str
    seed: int
    steps: int = BASE_STEPS
    depth: int = BASE_DEPTH
    target: str = "ref"
    variants: tuple[str, ...] = tuple(VARIANTS)
    temperature: float = 0.0

    @property
    def name(self) -> str:
        """A stable folder name (the variants are part of it: a group of two is not a group of four)."""
        tag = "all" if self.variants == tuple(VARIANTS) else "+".join(self.variants)
        sampled = f"-t{self.temperature:g}" if self.temperature else ""
        return (
            f"{self.dataset}-{self.target}-seed{self.seed}-steps{self.steps}-depth{self.depth}-{tag}{sampled}"
        )

    @property
    def decoding(self) -> str:
        return f"T={self.temperature:g}" if self.temperature else "greedy"

    def draft_name(self, variant: str) -> str:
        return f"draft-{variant}-seed{self.seed}-steps{self.steps}-depth{self.depth}"

    def to_json(self) -> dict:
        return {**asdict(self), "variants": list(self.variants), "name": self.name}


def plan(factors=FACTORS, datasets=DATASETS, seeds=(0, 1, 2)) -> list[Group]:
    """Every group the chosen factors need, each once: the first dataset's four-way groups first (seed by
    seed), then its budget and depth groups (shortest training first), then the other datasets."""
    unknown = sorted(set(factors) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown factor(s) {', '.join(unknown)}; factors: {', '.join(FACTORS)}")
    groups: set[Group] = set()
    for seed in seeds:
        if "ablation" in factors:
            groups |= {Group(d, seed) for d in datasets}
        first = datasets[0]  # the budget and depth factors run on the first dataset only
        if "budget" in factors:
            groups |= {Group(first, seed, steps=s, variants=_pair(s, BASE_DEPTH)) for s in BUDGETS}
        if "depth" in factors:
            groups |= {Group(first, seed, depth=d, variants=_pair(BASE_STEPS, d)) for d in DEPTHS}
        if "sampling" in factors:  # each sampled group next to its greedy twin
            for s in SAMPLING_STEPS:
                groups.add(Group(first, seed, steps=s, variants=_pair(s, BASE_DEPTH)))
                groups.add(Group(first, seed, steps=s, variants=PAIR, temperature=SAMPLING_TEMPERATURE))
        if "gate" in factors:
            groups |= {Group(first, seed, steps=s, variants=GATE_VARIANTS) for s in GATE_STEPS}
        if "target" in factors:
            groups |= {
                Group(first, seed, steps=s, target=t, variants=PAIR) for s in TARGET_STEPS for t in TARGETS
            }
    # a pair group whose cell is also a full group is the full group (same drafts, more of them)
    full = {_key(g) for g in groups if g.variants == tuple(VARIANTS)}
    kept = [g for g in groups if g.variants == tuple(VARIANTS) or _key(g) not in full]
    return sorted(
        kept,
        key=lambda g: (
            g.dataset != datasets[0],
            len(g.variants) < len(VARIANTS),
            g.temperature,
            g.steps,
            g.seed,
            g.name,
        ),
    )


def _pair(steps: int, depth: int) -> tuple[str, ...]:
    return PAIR if (steps, depth) != (BASE_STEPS, BASE_DEPTH) else tuple(VARIANTS)


def _key(g: Group) -> tuple:
    return (g.dataset, g.seed, g.steps, g.depth, g.target, g.temperature)


def member_of(group: Group, base_steps: int = BASE_STEPS, base_depth: int = BASE_DEPTH) -> list[str]:
    """The factors a group's results count for: the four-way ablation at the base budget and depth; the budget
    factor at the base depth, the depth factor at the base budget (both need the pad-rec / no-position pair); the
    sampling factor (sampled groups, and their greedy twins) at the base depth and its budgets; the gate factor
    (groups with the ungated PAD-Rec draft) only that one; the target factor, greedy pair groups at the base depth
    (groups on any target but the reference count for it alone; the report keeps the budgets run on two targets)."""
    if UNGATED in group.variants:
        return ["gate"] if group.depth == base_depth else []
    pair = set(PAIR) <= set(group.variants)
    sized = pair and not group.temperature and group.depth == base_depth
    if group.target != "ref":
        return ["target"] if sized else []
    sampling = pair and group.depth == base_depth and group.steps in (SAMPLING_STEPS[0], base_steps)
    if group.temperature:
        return ["sampling"] if sampling else []
    factors = []
    if (group.steps, group.depth) == (base_steps, base_depth) and group.variants == tuple(VARIANTS):
        factors.append("ablation")
    if group.depth == base_depth and pair:
        factors.append("budget")
    if group.steps == base_steps and pair:
        factors.append("depth")
    if sampling:
        factors.append("sampling")
    if sized:
        factors.append("target")
    return factors
