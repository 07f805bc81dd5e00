"""``padrec bench --throughput``: users per second and latency against the batch size, for every way of decoding.

Methods, all on the same users and the same target:

* ``generate`` — the reference: stock ``generate`` greedy under the catalog constraint, in left-padded batches;
* ``ar-jf`` — padrec's engine without a draft (jump-forward over forced tokens), continuously batched;
* ``chain:NAME`` — the engine with draft NAME proposing chains of ``engine_depth`` choices, continuously batched;
* ``tree:NAME`` — the engine with a draft tree of ``tree`` choice nodes; trees decode one request at a time, so
  this method runs at batch size 1 only.
* ``perfect:D`` and ``perfect:list`` — bounds, not ways to serve: the batched engine with a :class:`PerfectDraft`
  that proposes the target's own list (known from an untimed run) at no cost, ``D`` choices a round (the chains'
  depth) or the whole list in one round. No draft of that depth can serve more users per second than
  ``perfect:D`` on this machine, nor any draft more than ``perfect:list`` (up to run-to-run noise).

Per batch size the methods run one after another in rotated order (no method always first), ``repeats`` times;
users per second is the median over repeats. Latency is per user: for ``generate`` the time of the user's batch,
for the engine from the user's admission to the batch until its list is complete. Every list of every method at
every batch size must equal the reference's at the smallest batch size; the benchmark refuses to report
otherwise. Speculation *pays* at a batch size where a drafting method serves more users per second than every
method that does not draft (``generate``, ``ar-jf``); the bounds take no part in that, nor in the best method.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .bench import BenchMismatch, _where, draft_method_name, first_difference
from .decoding import ForwardCounter
from .engine.batch import BatchDecoder
from .engine.proposers import Proposal
from .engine.scoring import causal_lm
from .errors import PadrecError
from .examples import left_pad
from .fileio import check_output_dir, staged_dir

PLOT = "throughput.png"
SPECULATIVE = ("chain:", "tree:")
BOUND = "perfect:"


@dataclass
class ThroughputConfig:
    target: str
    data: str
    drafts: list[str] = field(default_factory=list)
    split: str = "test"
    users: int = 128
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    list_len: int | None = None
    device: str = "cpu"
    merge_lora: bool = False
    engine_depth: int | None = None  # choices per chain round (default: each draft's trained depth)
    tree: int | None = None  # choice nodes per draft tree (batch size 1 only); None: no tree method
    tree_width: int = 3
    tree_depth: int | None = None
    repeats: int = 1
    seed: int = 0

    def __post_init__(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise PadrecError(f"--batch-sizes: positive integers, got {self.batch_sizes}")
        self.batch_sizes = sorted(set(self.batch_sizes))
        if self.repeats < 1:
            raise PadrecError(f"--repeats must be >= 1, got {self.repeats}")


@dataclass
class Run:
    """One method over the users at one batch size: lists, per-user latency, target forwards summed over users
    (a batch's forward counts once for each of its rows), and seconds spent in the target's decoder (its layers,
    not the LM head) and in the draft (its prefill and proposals)."""

    outputs: list[list[int]]
    latency_ms: list[float]
    forwards: int
    target_seconds: float
    draft_seconds: float = 0.0


@dataclass
class Cell:
    """One method at one batch size: the lists, per-user latencies, and per repeat the wall time and the seconds
    in the target's decoder and in the draft."""

    outputs: list[list[int]] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    forwards: int = 0
    walls: list[float] = field(default_factory=list)
    target_seconds: list[float] = field(default_factory=list)
    draft_seconds: list[float] = field(default_factory=list)

    def add(self, run: Run, wall: float) -> None:
        self.outputs, self.forwards = run.outputs, run.forwards
        self.latency_ms += run.latency_ms
        self.walls.append(wall)
        self.target_seconds.append(run.target_seconds)
        self.draft_seconds.append(run.draft_seconds)

    def wall_share(self) -> dict[str, float] | None:
        """Shares of the wall-clock (all repeats) in the target's decoder, the draft and everything else."""
        if not self.target_seconds:
            return None
        wall = sum(self.walls)
        target, draft = sum(self.target_seconds) / wall, sum(self.draft_seconds) / wall
        return {"target": round(target, 3), "draft": round(draft, 3), "other": round(1 - target - draft, 3)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)


def _decoder(rec) -> torch.nn.Module:
    """The target's decoder (under PEFT, merged or not): what both ``generate`` and the engine run per forward."""
    return causal_lm(rec.target.model).get_decoder()


def run_generate(rec, prompts: list[list[int]], batch_size: int) -> Run:
    """Stock ``generate`` in left-padded batches (a user's latency is its batch's time)."""
    outputs, latency, forwards, target_seconds = [], [], 0, 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = left_pad(chunk, rec.token_map.pad_id)
        with ForwardCounter(_decoder(rec)) as counter:  # one decoder forward per generate step
            t0 = time.perf_counter()
            seqs = rec.generate(batch["input_ids"], batch["attention_mask"])
            if counter.sync:
                torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t0)
        width = batch["input_ids"].shape[1]
        outputs += [rec.trim(row) for row in seqs[:, width:].tolist()]
        latency += [ms] * len(chunk)
        forwards += counter.count * len(chunk)
        target_seconds += counter.seconds
    return Run(outputs, latency, forwards, target_seconds)


def run_engine(rec, engine, prompts: list[list[int]], batch_size: int, draft=None) -> Run:
    """The engine: continuous batching (with ``draft``, a batch proposer such as :class:`PerfectDraft`, in place
    of the engine's own), or one request at a time for a draft tree."""
    outputs: list = [None] * len(prompts)
    latency: list = [None] * len(prompts)
    forwards, request_draft_seconds = 0, 0.0
    batched = None if engine.width is not None and draft is None else BatchDecoder(engine, batch_size, draft)
    with ForwardCounter(engine.scorer.decoder) as timer:
        if batched is not None:
            results = batched.run(prompts)
        else:
            results = ((i, engine.generate(p)) for i, p in enumerate(prompts))
        for i, out in results:
            outputs[i], latency[i] = rec.trim(out.output_ids), 1000 * out.seconds
            forwards += out.target_forwards
            request_draft_seconds += out.draft_seconds
    # a batch's rows share each proposal's time (every row's output carries it): the decoder counts it once
    draft_seconds = request_draft_seconds if batched is None else batched.draft_seconds
    return Run(outputs, latency, forwards, timer.seconds, draft_seconds)


class PerfectDraft:
    """A batch proposer that knows the answer: each row's next tokens of the target's own list ``lists[index]``,
    ``depth`` choices a round with the forced run after the last one (None: the rest of the list), at no cost.
    What it reaches bounds every draft of that depth on the same engine and machine; it is not a way to serve,
    since it needs the list it is asked for. Used through ``run_engine(..., draft=...)``."""

    reads_features = False

    def __init__(self, lists: list[list[int]], depth: int | None):
        self.lists, self.depth = lists, depth

    def prefill(self, rows) -> None:
        pass

    def select(self, rows: list[int]) -> None:
        pass

    def propose(self, rows) -> list[Proposal]:
        proposals = []
        for row in rows:
            request, proposal = row.request, Proposal()
            state, room = request.state.copy(), request.room()
            for token in self.lists[row.index][request.written :]:
                choice = state.forced() is None
                if state.done or len(proposal.tokens) >= room or (choice and proposal.choices == self.depth):
                    break
                state.advance(token)
                proposal.tokens.append(token)
                proposal.choice.append(choice)
                proposal.q.append(None)
            proposals.append(proposal)
        return proposals


def run_throughput(cfg: ThroughputConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Measure every method at every batch size; check every list against the reference; write ``out``
    (report.json, report.md, throughput.png). Returns the report."""
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .decoding import Recommender
    from .draft import load_draft
    from .hardware import hardware_info
    from .target import load_target

    if out is not None:
        check_output_dir(out, "report.json")
    torch.manual_seed(cfg.seed)
    dataset = load_dataset(cfg.data)
    target = load_target(cfg.target, device=cfg.device, merge_lora=cfg.merge_lora)
    rec = Recommender(target, dataset, list_len=cfg.list_len, engine="generate")
    users = dataset.eval_users(cfg.split)[: cfg.users]
    if not users:
        raise PadrecError(f"{cfg.data}: no users with a non-empty {cfg.split} target list")
    prompts = [rec.prompt(u, cfg.split) for u in users]
    engines = {"ar-jf": rec.engine()}
    for spec in cfg.drafts:  # DIR or NAME=DIR
        name, _, path = spec.rpartition("=")
        draft = load_draft(path, rec.token_map, device=rec.device, dataset=dataset)
        name = name or draft_method_name(draft.config)
        if f"chain:{name}" in engines:
            raise PadrecError(f"--draft {spec}: a second draft named {name}; name them NAME=DIR")
        engines[f"chain:{name}"] = rec.engine(draft, cfg.engine_depth)
        if cfg.tree is not None:
            engines[f"tree:{name}"] = rec.engine(draft, cfg.tree_depth, cfg.tree_width, cfg.tree)
    # the bounds' answers: the target's own lists, from an untimed run (checked like every method's below)
    answers = run_engine(rec, engines["ar-jf"], prompts, max(cfg.batch_sizes)).outputs
    depths = sorted({e.proposer.depth for n, e in engines.items() if n.startswith("chain:")})
    bounds = {f"{BOUND}{d}": PerfectDraft(answers, d) for d in depths}
    bounds[f"{BOUND}list"] = PerfectDraft(answers, None)
    names = ["generate", *engines, *bounds]

    def run(name: str, batch: int, subset: list[list[int]]):
        if name == "generate":
            return run_generate(rec, subset, batch)
        if name in bounds:
            return run_engine(rec, engines["ar-jf"], subset, batch, draft=bounds[name])
        return run_engine(rec, engines[name], subset, batch)

    def sizes(name: str) -> list[int]:
        return [1] if name.startswith("tree:") else cfg.batch_sizes

    for name in names:  # untimed warm-up: lazy initialisation stays out of the figures
        run(name, min(2, sizes(name)[0]), prompts[:2])
    cells = {name: {b: Cell() for b in sizes(name)} for name in names}
    total = sum(len(sizes(n)) for n in names) * cfg.repeats
    bar = tqdm(total=total, desc="throughput", disable=not progress, file=sys.stderr)
    t_start, turn = time.time(), 0
    for _ in range(cfg.repeats):
        for batch in cfg.batch_sizes:
            here = [n for n in names if batch in sizes(n)]
            shift = turn % len(here)
            turn += 1
            for name in here[shift:] + here[:shift]:
                t0 = time.perf_counter()
                result = run(name, batch, prompts)
                cells[name][batch].add(result, time.perf_counter() - t0)
                bar.update(1)
    bar.close()
    reference = cells["generate"][cfg.batch_sizes[0]].outputs
    for name in names:
        for batch, cell in cells[name].items():
            for i, (got, ref) in enumerate(zip(cell.outputs, reference, strict=True)):
                if got != ref:
                    pos = first_difference(got, ref)
                    raise BenchMismatch(
                        f"{name} at batch size {batch} is not lossless: user {users[i]} differs from generate at "
                        f"batch size {cfg.batch_sizes[0]} at generated token {pos}"
                    )
    report = summarize(cfg, cells, users, rec)
    report["hardware"] = hardware_info(cfg.device)
    report["wall_s"] = round(time.time() - t_start, 1)
    if out is not None:
        with staged_dir(out) as tmp:
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (tmp / "report.md").write_text(throughput_markdown(report))
            plot_throughput(report, tmp / PLOT)
    return report


def summarize(cfg: ThroughputConfig, cells: dict, users: list[str], rec) -> dict:
    methods = {}
    for name, by_batch in cells.items():
        methods[name] = {}
        for batch, cell in by_batch.items():
            ups = statistics.median(len(users) / w for w in cell.walls)
            methods[name][str(batch)] = {
                "users_per_s": round(ups, 3),
                "latency_p50_ms": _pct(cell.latency_ms, 50),
                "latency_p90_ms": _pct(cell.latency_ms, 90),
                "target_forwards_per_user": round(cell.forwards / len(users), 3),
                "wall_share": cell.wall_share(),
                "identical": 1.0,  # checked above: every list equals the reference's
            }
    for by_batch in methods.values():
        for batch, m in by_batch.items():
            ref = methods["generate"].get(batch)
            m["x_generate"] = round(m["users_per_s"] / ref["users_per_s"], 3) if ref else None
    pays: dict[str, bool | None] = {}
    for batch in map(str, cfg.batch_sizes):
        drafting = [
            m[batch]["users_per_s"] for n, m in methods.items() if n.startswith(SPECULATIVE) and batch in m
        ]
        plain = [
            m[batch]["users_per_s"] for n, m in methods.items() if not n.startswith((*SPECULATIVE, BOUND))
        ]
        pays[batch] = (max(drafting) > max(plain)) if drafting else None
    stops = next((int(b) for b, p in pays.items() if p is False), None)
    served = [n for n in methods if not n.startswith(BOUND)]
    best = {b: max((n for n in served if b in methods[n]), key=lambda n: methods[n][b]["users_per_s"])
            for b in map(str, cfg.batch_sizes)}  # fmt: skip
    config = {k: v for k, v in cfg.__dict__.items()}
    config.update(target=_where(cfg.target), data=_where(cfg.data), drafts=[_where(d.rpartition("=")[2]) for d in cfg.drafts],
                  measured_requests=len(users), list_len=rec.list_len)  # fmt: skip
    return {
        "config": config,
        "methods": methods,
        "speculation_pays": pays,
        "speculation_stops_paying_at": stops,
        "best": best,
    }


def _batch_table(cfg: dict, methods: dict, cell) -> list[str]:
    """A markdown table, one row per batch size and one column per method; ``cell(m)`` renders a method's figures
    at that batch size (``m`` is None where the method did not run)."""
    lines = ["| batch | " + " | ".join(f"`{n}`" for n in methods) + " |", "|---:|" + "---:|" * len(methods)]
    for batch in map(str, cfg["batch_sizes"]):
        lines.append("| " + " | ".join([batch, *(cell(methods[name].get(batch)) for name in methods)]) + " |")
    return lines


def _speed_cell(m: dict | None) -> str:
    if m is None:
        return "—"
    return f"{m['users_per_s']:.2f} ({m['x_generate']:.2f}×)<br>{m['latency_p50_ms']:.0f} / {m['latency_p90_ms']:.0f} ms"


def _share_cell(m: dict | None) -> str:
    share = (m or {}).get("wall_share")
    # target / draft / other, in Cell.wall_share's order
    return "—" if share is None else " / ".join(f"{100 * v:.0f}" for v in share.values())


def throughput_markdown(report: dict) -> str:
    cfg, hw, methods = report["config"], report["hardware"], report["methods"]
    device = hw.get("gpu") or f"{hw['cpu']}, {hw['torch_threads']} torch thread(s)"
    lines = [
        "# padrec throughput benchmark",
        "",
        f"{cfg['measured_requests']} users of `{cfg['data']}` ({cfg['split']}), target `{cfg['target']}`"
        f"{' (LoRA merged)' if cfg['merge_lora'] else ''}, on {device}; torch {hw['torch']}, transformers "
        f"{hw['transformers']}. Chain depth: {cfg['engine_depth'] or 'each draft trained depth'}; "
        f"{cfg['repeats']} run(s) per cell, interleaved. Every list equals stock `generate`'s (identical = 1.0).",
        "",
        "Users per second (× batched stock `generate` at the same batch size), latency per user p50 / p90 ms:",
        "",
        *_batch_table(cfg, methods, _speed_cell),
    ]
    if any(m.get("wall_share") for by_batch in methods.values() for m in by_batch.values()):
        lines += [
            "",
            "Where the wall-clock goes, % in the target's decoder / in the draft / in the rest (the host's side of "
            "decoding: catalog walks, masks, cache bookkeeping; the LM head; `generate`'s own loop):",
            "",
            *_batch_table(cfg, methods, _share_cell),
        ]
    stops = report["speculation_stops_paying_at"]
    lines += [
        "",
        *(
            [
                f"`{BOUND}D` and `{BOUND}list` are bounds, not ways to serve: the engine with a draft that proposes "
                "the target's own list at no cost, D choices a round or the whole list at once. A draft of depth D "
                f"(accepting at most everything, at some cost) cannot serve more users per second than `{BOUND}D` "
                "on this machine, up to run-to-run noise.",
                "",
            ]
            if any(n.startswith(BOUND) for n in methods)
            else []
        ),
        "Best method per batch size: " + ", ".join(f"{b}: `{n}`" for b, n in report["best"].items()) + ".",
        "",
        (
            f"Speculation stops paying at batch size {stops}: from there a method without a draft serves more "
            "users per second."
            if stops is not None
            else "Speculation pays at every batch size measured."
            if any(report["speculation_pays"].values())
            else "No drafting method was measured."
        ),
        "",
    ]
    return "\n".join(lines)


def plot_throughput(report: dict, path: Path) -> Path:
    from .plots import _figure, _save

    fig, ax = _figure(figsize=(6, 4))
    for name, by_batch in report["methods"].items():
        xs = [int(b) for b in by_batch]
        ys = [by_batch[b]["users_per_s"] for b in by_batch]
        ax.plot(xs, ys, marker="o", label=name, linestyle=":" if name.startswith(BOUND) else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("users per second")
    hw = report["hardware"]
    device = hw.get("gpu") or f"{hw['cpu']} ({hw['torch_threads']} threads)"
    ax.set_title(f"throughput, {report['config']['measured_requests']} users\n{device}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
