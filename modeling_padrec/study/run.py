"""Run the study's groups, resumably: train each missing draft, bench the group, keep the per-request results.

A group's results are a folder ``<results>/groups/<group name>/`` written whole or not at all (staged, then moved
into place): ``group.json`` (the group, the bench settings, the hardware, the target's path and weights digest,
every draft's training time and final metrics, the bench's wall time) and ``requests.jsonl`` (one line per method
and request: latency, target forwards, tokens, draft time and steps, and the draft's acceptance by step and by
item slot). A group whose folder exists is done; a draft whose folder holds a model is trained; a draft training
that was killed resumes from its last checkpoint. So ``padrec study run`` can be stopped at any time and run again.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PadrecError
from .plan import Group, draft_settings

ENGINE_DEPTH = 5  # choices per chain round, as in the reference bench
TARGET_RECIPES = {"ref": "reference-target", "deep": "deep-target"}  # the make target that builds each target
TREE = {
    "budget": 6,
    "width": 3,
    "depth": 2,
}  # the shape the reference bench's calibration chose on Instruments


@dataclass
class StudyPaths:
    """Where the study reads and writes: ``runs`` (targets, distillation caches, drafts: not committed),
    ``data`` (the dataset folders), ``results`` (the committed per-group results)."""

    runs: Path = Path("runs")
    data: Path = Path("../shared/data")
    results: Path = Path("results/study")

    def target(self, group: Group) -> Path:
        """``runs/<target>/<dataset>/target``: ``ref`` from ``make reference-target``, ``deep`` from ``make
        deep-target``."""
        if group.target not in TARGET_RECIPES:
            raise PadrecError(
                f"group {group.name}: unknown target {group.target!r} (the study knows {', '.join(TARGET_RECIPES)})"
            )
        return self.runs / group.target / group.dataset / "target"

    def cache(self, group: Group) -> Path:
        """The target's lists and features the drafts are distilled from; the training seed also picks the
        training users, so each seed has its own (seed 0's is the reference drafts' cache)."""
        name = "distill-cache" if group.seed == 0 else f"distill-cache-seed{group.seed}"
        return self.runs / group.target / group.dataset / name

    def draft(self, group: Group, variant: str) -> Path:
        return self.runs / "study" / group.dataset / group.target / group.draft_name(variant)

    def group_dir(self, group: Group) -> Path:
        return self.results / "groups" / group.name


@dataclass
class RunSettings:
    users: int = 200  # test users benched per group
    draft_users: int = 4000  # training users per draft (the reference drafts' recipe)
    device: str = "cpu"
    progress: bool = True  # progress bars (the study's own lines are always printed)
    jobs: int = 1  # a group's drafts trained at once, each in a process of its own


def is_done(group: Group, paths: StudyPaths) -> bool:
    return (paths.group_dir(group) / "group.json").is_file()


def train_missing(group: Group, paths: StudyPaths, settings: RunSettings) -> dict[str, dict]:
    """Train every draft of the group that has no model yet, ``settings.jobs`` at a time; returns each draft's
    training record.

    With several jobs the group's distillation cache is built first, then each draft trains in a spawned process
    with ``torch.get_num_threads() // jobs`` threads: the same computation as in turn, so the same draft."""
    from ..draft_training import prepare_distillation, train_draft
    from ..target import weights_digest

    target = paths.target(group)
    if not (target / "padrec_target.json").is_file():
        recipe = TARGET_RECIPES[group.target]
        raise PadrecError(f"{target}: no target; build it first (make {recipe} DATA={group.dataset})")
    data, cache = paths.data / group.dataset, paths.cache(group)
    weights, todo = weights_digest(target), {}
    for variant in group.variants:
        out = paths.draft(group, variant)
        if (out / "model.safetensors").is_file():
            _check_distilled_from(out, target, weights)
        else:
            todo[variant] = dict(
                target_dir=target, data=data, out=out, depth=group.depth, max_steps=group.steps,
                seed=group.seed, max_users=settings.draft_users, cache_dir=str(cache), **draft_settings(variant),
            )  # fmt: skip
    workers = min(settings.jobs, len(todo))
    if workers > 1:
        _say(f"study: distillation cache {cache} (seed {group.seed}, {settings.draft_users} users)")
        prepare_distillation(target, data, cache, seed=group.seed, max_users=settings.draft_users)
        _train_in_processes(todo, workers, group)
    else:
        for kwargs in todo.values():
            _say(_training_line(kwargs["out"], group))
            train_draft(**kwargs)
    return {variant: training_record(paths.draft(group, variant)) for variant in group.variants}


def _check_distilled_from(draft: Path, target: Path, weights: str) -> None:
    """Refuse a trained draft distilled from another training of the target than the one in ``runs`` now, whose
    weights digest is ``weights`` (a draft written before drafts recorded their target's weights is taken as it
    is)."""
    from ..draft_training import distilled_from

    recorded = distilled_from(draft)
    if recorded and recorded != weights:
        raise PadrecError(
            f"{draft}: distilled from another training of {target} (weights {recorded}; the target's are now "
            f"{weights}); delete the draft folder to train it again from this target"
        )


def _training_line(out: Path, group: Group) -> str:
    return f"study: training {out} ({group.steps} steps, depth {group.depth}, seed {group.seed})"


def _train_in_processes(todo: dict[str, dict], workers: int, group: Group) -> None:
    """``train_draft(**kwargs)`` for every draft in ``todo``, ``workers`` at a time in spawned processes (not
    forked: a fork would inherit this process's torch thread pools). On the first failure the drafts not started
    are cancelled; the ones training finish (or stop at their checkpoints), then the failure is raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from ..draft_training import train_draft

    threads = max(1, torch.get_num_threads() // workers)
    _say(
        f"study: {len(todo)} drafts, {workers} at a time, each in a process of its own with {threads} thread(s)"
    )
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
        initargs=(threads,),
    )  # fmt: skip
    try:
        futures = []
        for kwargs in todo.values():
            _say(_training_line(kwargs["out"], group))
            futures.append(pool.submit(train_draft, **kwargs))
        for future in futures:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def training_record(draft_dir: Path) -> dict:
    """A trained draft's CPU cost and final metrics, from its own ``train_log.jsonl`` (read as
    ``training.training_seconds`` does, across resumes) and ``padrec_draft.json``."""
    from ..training import LOG_NAME, read_log, training_seconds

    meta = json.loads((draft_dir / "padrec_draft.json").read_text())
    seconds = training_seconds(read_log(draft_dir / LOG_NAME))
    return {
        "train_seconds": None if seconds is None else round(seconds, 2),
        "steps": meta["args"]["max_steps"],
        "final": meta.get("final"),
    }


def bench_group(group: Group, paths: StudyPaths, settings: RunSettings, records: dict) -> Path:
    """Bench the group's drafts (engine chain and tree each, with ``ar`` and ``ar-jf``) on the same users,
    interleaved; write the group's results folder."""
    from ..bench import BenchConfig, TreeSpec, acceptance_counts, bench_run
    from ..fileio import staged_dir
    from ..target import weights_digest

    drafts = [f"{v}={paths.draft(group, v)}" for v in group.variants]
    only = ["ar-jf", *group.variants, *(f"tree:{v}" for v in group.variants)]
    cfg = BenchConfig(
        target=str(paths.target(group)), data=str(paths.data / group.dataset), drafts=drafts,
        users=settings.users, device=settings.device, only=only, engine_depth=ENGINE_DEPTH,
        tree=TreeSpec(**TREE), seed=group.seed, temperature=group.temperature or None,
    )  # fmt: skip
    _say(f"study: benching {group.name} on {settings.users} users")
    result = bench_run(cfg, progress=settings.progress)
    report, runs, token_map = result.report, result.runs, result.rec.token_map
    slot_of = token_map.slot_table().tolist()
    out = paths.group_dir(group)
    with staged_dir(out) as tmp:
        summary = {
            "group": group.to_json(),
            "bench": {
                "users": settings.users, "engine_depth": ENGINE_DEPTH, "tree": TREE, "methods": list(runs),
                "wall_s": report["wall_s"], "config": report["config"],
            },
            "hardware": report["hardware"],
            "target": {"path": str(paths.target(group)), "weights": weights_digest(paths.target(group))},
            "drafts": records,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        (tmp / "group.json").write_text(json.dumps(summary, indent=2) + "\n")
        with open(tmp / "requests.jsonl", "w") as f:
            for name, measurements in runs.items():
                for m in measurements:
                    by_step, by_slot = acceptance_counts(m, slot_of, token_map.levels)
                    record = {
                        "method": name, "user": m.user, "latency_ms": round(m.latency_ms, 3),
                        "target_forwards": m.target_forwards, "tokens": len(m.output_ids),
                        "draft_ms": round(m.draft_ms, 3), "draft_steps": m.draft_steps,
                        "by_step": by_step, "by_slot": by_slot,
                    }  # fmt: skip
                    f.write(json.dumps(record, separators=(",", ":")) + "\n")
    return out


def run_groups(
    groups: list[Group], paths: StudyPaths, settings: RunSettings, limit: int | None = None
) -> list:
    """Run every group not done yet (at most ``limit`` of them), in order; returns the groups run."""
    ran = []
    for group in groups:
        if limit is not None and len(ran) >= limit:
            break
        if is_done(group, paths):
            continue
        t0 = time.time()
        _say_other_trainings(group, paths)
        records = train_missing(group, paths, settings)
        bench_group(group, paths, settings, records)
        _say(f"study: {group.name} done in {time.time() - t0:.0f} s -> {paths.group_dir(group)}")
        ran.append(group)
    return ran


def _say_other_trainings(group: Group, paths: StudyPaths) -> None:
    """A line when the done groups of this dataset and target recorded other target weights than the target in
    ``runs`` has now (it was trained again): the new group's seed then pools with theirs over two trainings."""
    from ..target import weights_digest

    target = paths.target(group)
    if not (target / "padrec_target.json").is_file():
        return  # train_missing says how to build it
    ours, others = weights_digest(target), {}
    for summary_path in sorted((paths.results / "groups").glob("*/group.json")):
        summary = json.loads(summary_path.read_text())
        done = summary["group"]
        weights = (summary.get("target") or {}).get("weights")
        if (done["dataset"], done["target"]) == (group.dataset, group.target) and weights not in (None, ours):
            others.setdefault(weights, []).append(done["name"])
    for weights, names in others.items():
        _say(
            f"study: note: {target} (weights {ours}) is not the training {', '.join(names)} benched (weights "
            f"{weights}); the report will pool {group.name}'s seed with theirs over both"
        )


def estimate_cpu(groups: list[Group], paths: StudyPaths) -> dict | None:
    """The CPU time the groups not done yet would take, at the rates the done groups measured on this machine:
    training seconds per step (by unrolled depth; another depth is scaled in proportion, the unrolled steps being
    most of a step's work) and benching seconds per method and user. Drafts that already have a model, or that
    an earlier group in the list trains, are not counted; distillation caches are not counted. None when no
    group is done."""
    per_step: dict[int, list[float]] = {}
    bench_rates = []
    for group in groups:
        summary_path = paths.group_dir(group) / "group.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        for record in summary["drafts"].values():
            if record.get("train_seconds") and record.get("steps"):
                per_step.setdefault(group.depth, []).append(record["train_seconds"] / record["steps"])
        bench = summary["bench"]
        bench_rates.append(bench["wall_s"] / (len(bench["methods"]) * bench["users"]))
    if not per_step or not bench_rates:
        return None
    rate = {d: statistics.median_high(v) for d, v in per_step.items()}

    def step_seconds(depth: int) -> float:
        known = min(rate, key=lambda d: abs(d - depth))
        return rate[known] * depth / known

    seen: set[Path] = set()
    train_s = bench_s = 0.0
    todo = [g for g in groups if not is_done(g, paths)]
    for group in todo:
        for variant in group.variants:
            out = paths.draft(group, variant)
            if out not in seen and not (out / "model.safetensors").is_file():
                train_s += group.steps * step_seconds(group.depth)
            seen.add(out)
        methods = 2 + 2 * len(group.variants)  # ar, ar-jf, and each draft as a chain and as a tree
        bench_s += statistics.median_high(bench_rates) * methods * RunSettings.users
    return {"groups": len(todo), "train_s": round(train_s), "bench_s": round(bench_s)}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
