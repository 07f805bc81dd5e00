"""``padrec bench``: every decoding method on the same requests, interleaved, with the lossless check.

Methods, all under the same catalog constraint and greedy decoding:

* ``ar``: ``target.generate`` with no assistant, the reference every ratio is taken against;
* ``prompt_lookup``: transformers' prompt-lookup decoding (no model, n-grams of the prompt);
* ``small_lm``: a standalone small Qwen2 assistant (``padrec train-assistant``), vanilla speculative decoding;
* one method per PAD-Rec draft folder (``assistant_model=draft``), named after its position signals.

For every request (one test user) all methods run back to back in one process, in an order rotated from request
to request, so machine drift hits them alike. The first ``warmup`` requests are run and thrown away. Every
method's output must equal AR's token for token; the first that does not stops the run with
:class:`BenchMismatch` naming the request, and nothing is reported.

Per request, each method's time is split three ways: drafting (inside the candidate generator's
``get_candidates``), verification (inside the target's forward passes) and the rest (``generate``'s own
bookkeeping, logits processors, cache handling) — the per-round profile the report carries.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .decoding import Recommender
from .errors import PadrecError
from .evaluate import ranking_metrics
from .fileio import check_output_dir, staged_dir

REPORT_KEYS = (
    "speedup",
    "speedup_p10",
    "speedup_p90",
    "latency_ms_median",
    "latency_ms_p90",
    "tau",
    "alpha_by_step",
    "alpha_by_slot",
    "identical",
    "recall@10",
    "ndcg@10",
    "target_forwards_mean",
    "draft_ms_per_step",
)


class BenchMismatch(PadrecError):
    """A method's output differed from AR greedy output: the run is not lossless, so nothing is reported."""


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One decoding method: a name, the extra ``generate`` arguments, and (for a PAD-Rec draft) the draft,
    attached to the target only while its own requests run so its hooks never touch the other methods."""

    name: str
    kind: str  # ar | prompt_lookup | small_lm | draft
    generate_kwargs: dict = field(default_factory=dict)
    draft: torch.nn.Module | None = None
    source: str | None = None
    info: dict = field(default_factory=dict)

    def run(self, rec: Recommender, user: str, split: str, recorder: RoundRecorder):
        if self.draft is not None:
            self.draft.attach(rec.target.model, rec.token_map)
        try:
            with recorder:
                return rec.recommend(user, split, **self.generate_kwargs)
        finally:
            if self.draft is not None:
                self.draft.detach()


def _where(path) -> str:
    """A local folder as an absolute path (reports are read from elsewhere later); a repo id as given."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def draft_method_name(config) -> str:
    """``pad-rec`` (both position signals), ``item-only``, ``step-only`` or ``no-position``."""
    item, step = config.use_item_position, config.use_step_position
    return {(True, True): "pad-rec", (True, False): "item-only", (False, True): "step-only"}.get(
        (item, step), "no-position"
    )


def build_methods(
    rec: Recommender,
    drafts: list[str] = (),
    assistant: str | None = None,
    lookup_tokens: int | None = None,
    lookup_ngram: int = 2,
    depth: int | None = None,
) -> list[Method]:
    """AR, prompt lookup, the small-LM assistant (if given) and every draft folder (``DIR`` or ``NAME=DIR``).

    ``depth``: tokens drafted per round by every model-based method (default: each one's own
    ``num_assistant_tokens``, i.e. its trained depth); prompt lookup proposes ``lookup_tokens`` (default:
    ``depth``, else 5).
    """
    from .assistant import load_assistant
    from .draft import load_draft

    lookup_tokens = lookup_tokens or depth or 5

    methods = [
        Method("ar", "ar", info={"depth": 0}),
        Method(
            "prompt_lookup",
            "prompt_lookup",
            {"prompt_lookup_num_tokens": lookup_tokens, "max_matching_ngram_size": lookup_ngram},
            info={"depth": lookup_tokens, "max_matching_ngram_size": lookup_ngram},
        ),
    ]
    if assistant:
        model = load_assistant(assistant, rec.token_map, device=rec.device)
        trained = model.generation_config.num_assistant_tokens
        model.generation_config.num_assistant_tokens = depth or trained
        info = {"layers": model.config.num_hidden_layers, "depth": depth or trained, "trained_depth": trained}
        methods.append(
            Method("small_lm", "small_lm", {"assistant_model": model}, source=str(assistant), info=info)
        )
    named = []
    for spec in drafts:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or not name:  # a plain folder (which may itself contain "=")
            name, path = "", spec
        draft = load_draft(path, rec.token_map, device=rec.device)
        if depth:  # deeper than trained: the last step embedding is reused beyond it
            draft.generation_config.num_assistant_tokens = depth
        named.append((name or draft_method_name(draft.config), path, draft))
    taken = [n for n, _, _ in named]
    for name, path, draft in named:
        if taken.count(name) > 1:  # two drafts with the same signals: tell them apart by folder
            name = f"{name}:{Path(path).name}"
        info = {
            "depth": draft.generation_config.num_assistant_tokens,
            "trained_depth": draft.config.max_draft_steps,
            "use_item_position": draft.config.use_item_position,
            "use_step_position": draft.config.use_step_position,
        }
        methods.append(Method(name, "draft", {"assistant_model": draft}, draft, _where(path), info))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise PadrecError(f"--draft: two methods share a name ({names}); name them with NAME=DIR")
    return methods


# --------------------------------------------------------------------------- measuring one request


class RoundRecorder:
    """Records every speculation round of the target's ``generate`` calls and the time spent drafting.

    It wraps the candidate generator transformers builds for each assisted ``generate`` (an instance attribute
    shadowing ``_get_candidate_generator`` while the recorder is entered), so it works alike for prompt lookup,
    a small assistant and a PAD-Rec draft, and never changes what is generated. A round is recorded as
    ``(input length, drafted, accepted, kept)``: ``accepted`` is the longest prefix of the drafted tokens that the
    final sequence agrees with (what acceptance rates count, an accepted EOS included); ``kept`` is what
    ``generate`` kept of the draft before adding the target's own token (it cuts at EOS and at the length limit).
    On CUDA the clock is read after a synchronize, so asynchronous kernels are charged to the right side.
    """

    def __init__(self, model: torch.nn.Module):
        from .draft import causal_lm

        self.lm = causal_lm(model)
        self.sync = next(self.lm.parameters()).is_cuda
        self.rounds: list[tuple[int, int, int, int]] = []
        self.draft_seconds = 0.0
        self._pending: tuple[int, list[int]] | None = None

    def __enter__(self) -> RoundRecorder:
        self.rounds, self.draft_seconds, self._pending = [], 0.0, None
        self.lm._get_candidate_generator = self._make_generator
        return self

    def __exit__(self, *exc) -> None:
        self.lm.__dict__.pop("_get_candidate_generator", None)

    def _clock(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _make_generator(self, *args, **kwargs):
        generator = type(self.lm)._get_candidate_generator(self.lm, *args, **kwargs)
        get, update = generator.get_candidates, generator.update_candidate_strategy

        def get_candidates(input_ids, *a, **k):
            t0 = self._clock()
            out = get(input_ids, *a, **k)
            self.draft_seconds += self._clock() - t0
            start = input_ids.shape[1]
            self._pending = (start, out[0][0, start:].tolist())
            return out

        def update_candidate_strategy(input_ids, scores, num_matches):
            if self._pending is not None:
                start, drafted = self._pending
                accepted = first_difference(drafted, input_ids[0, start : start + len(drafted)].tolist())
                self.rounds.append((start, len(drafted), accepted, int(num_matches)))
                self._pending = None
            return update(input_ids, scores, num_matches)

        generator.get_candidates = get_candidates
        generator.update_candidate_strategy = update_candidate_strategy
        return generator


@dataclass
class Measurement:
    """One method on one request."""

    method: str
    user: str
    output_ids: list[int]
    items: list[int | None]
    latency_ms: float
    target_forwards: int
    verify_ms: float
    draft_ms: float
    rounds: list[tuple[int, int, int, int]]  # (start offset in the output, drafted, accepted, kept)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "user": self.user,
            "latency_ms": round(self.latency_ms, 3),
            "target_forwards": self.target_forwards,
            "verify_ms": round(self.verify_ms, 3),
            "draft_ms": round(self.draft_ms, 3),
            "rounds": [list(r) for r in self.rounds],
            "output_ids": self.output_ids,
            "items": self.items,
        }


def measure(method: Method, rec: Recommender, user: str, split: str, recorder: RoundRecorder) -> Measurement:
    r = method.run(rec, user, split, recorder)
    offset = len(r.prompt_ids)
    return Measurement(
        method.name,
        user,
        r.output_ids,
        r.items,
        r.latency_ms,
        r.target_forwards,
        r.forward_ms,
        1000 * recorder.draft_seconds,
        [(start - offset, drafted, accepted, kept) for start, drafted, accepted, kept in recorder.rounds],
    )


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where ``a`` and ``b`` differ: the length of their common prefix."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# --------------------------------------------------------------------------- aggregation


def _pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 4)


def summarize(
    name: str, runs: list[Measurement], ar_runs: list[Measurement], rec: Recommender, split: str
) -> dict:
    """Every figure of one method over the measured requests (``runs`` and ``ar_runs`` aligned by request)."""
    slot_of = rec.token_map.slot_table().tolist()
    levels = rec.token_map.levels
    slot_names = [rec.token_map.level_letter(lv) for lv in range(levels)] + ["sep", "other"]
    ratios = [a.latency_ms / m.latency_ms for a, m in zip(ar_runs, runs, strict=True)]
    latencies = [m.latency_ms for m in runs]
    tokens = sum(len(m.output_ids) for m in runs)
    forwards = sum(m.target_forwards for m in runs)
    reached_step: list[int] = []
    accepted_step: list[int] = []
    reached_slot = [0] * len(slot_names)
    accepted_slot = [0] * len(slot_names)
    drafted_total = rounds_total = accepted_total = 0
    for m in runs:
        for start, drafted, accepted, _ in m.rounds:
            rounds_total += 1
            drafted_total += drafted
            accepted_total += accepted
            for k in range(min(accepted + 1, drafted)):  # step k is reached when steps < k were accepted
                pos = start + k
                slot = slot_of[m.output_ids[pos]] if pos < len(m.output_ids) else levels + 1
                for table, value in ((reached_step, 1), (accepted_step, int(k < accepted))):
                    table.extend([0] * (k + 1 - len(table)))
                    table[k] += value
                reached_slot[slot] += 1
                accepted_slot[slot] += int(k < accepted)
    lists = {m.user: m.items for m in runs}
    quality = ranking_metrics(lists, {u: rec.dataset.targets(split)[u] for u in lists})
    n = len(runs)
    draft_ms = sum(m.draft_ms for m in runs)
    verify_ms = sum(m.verify_ms for m in runs)
    total_ms = sum(latencies)
    per_round = max(rounds_total, 1)
    return {
        "method": name,
        "requests": n,
        "speedup": _pct(ratios, 50),
        "speedup_p10": _pct(ratios, 10),
        "speedup_p90": _pct(ratios, 90),
        "latency_ms_median": _pct(latencies, 50),
        "latency_ms_p90": _pct(latencies, 90),
        "tau": round(tokens / forwards, 4),
        "alpha_by_step": [round(a / r, 4) for a, r in zip(accepted_step, reached_step, strict=True)],
        "alpha_by_slot": {
            s: round(a / r, 4) for s, a, r in zip(slot_names, accepted_slot, reached_slot, strict=True) if r
        },
        "identical": round(
            sum(m.output_ids == a.output_ids for m, a in zip(runs, ar_runs, strict=True)) / n, 4
        ),
        **{k: quality[k] for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")},
        "target_forwards_mean": round(forwards / n, 3),
        "draft_ms_per_step": round(draft_ms / drafted_total, 4) if drafted_total else None,
        "rounds_mean": round(rounds_total / n, 3),
        "drafted_per_round": round(drafted_total / per_round, 4) if rounds_total else None,
        "accepted_per_round": round(accepted_total / per_round, 4) if rounds_total else None,
        "profile_ms_per_request": {
            "draft": round(draft_ms / n, 3),
            "verify": round(verify_ms / n, 3),
            "other": round((total_ms - draft_ms - verify_ms) / n, 3),
            "total": round(total_ms / n, 3),
        },
        "profile_ms_per_round": (
            {
                "draft": round(draft_ms / per_round, 3),
                "verify": round(verify_ms / per_round, 3),
                "other": round((total_ms - draft_ms - verify_ms) / per_round, 3),
            }
            if rounds_total
            else None
        ),
        "target_forward_ms_mean": round(verify_ms / forwards, 4),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class BenchConfig:
    target: str
    data: str
    drafts: list[str] = field(default_factory=list)
    assistant: str | None = None
    split: str = "test"
    users: int = 300
    list_len: int | None = None
    warmup: int = 3
    depth: int | None = None
    lookup_tokens: int | None = None
    lookup_ngram: int = 2
    device: str = "cpu"
    seed: int = 0


def run_bench(cfg: BenchConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Run every method on ``cfg.users`` requests, check losslessness, and (with ``out``) write the report
    folder: ``report.json``, ``report.md``, ``requests.jsonl`` and the PNG plots. Returns the report."""
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .hardware import hardware_info
    from .target import load_target

    if out is not None:
        check_output_dir(out, "report.json")
    torch.manual_seed(cfg.seed)
    dataset = load_dataset(cfg.data)
    target = load_target(cfg.target, device=cfg.device)
    rec = Recommender(target, dataset, list_len=cfg.list_len)
    users = dataset.eval_users(cfg.split)[: cfg.users]
    if not users:
        raise PadrecError(f"{cfg.data}: no users with a non-empty {cfg.split} target list")
    methods = build_methods(rec, cfg.drafts, cfg.assistant, cfg.lookup_tokens, cfg.lookup_ngram, cfg.depth)
    recorder = RoundRecorder(target.model)
    warm = users[: cfg.warmup]
    runs: dict[str, list[Measurement]] = {m.name: [] for m in methods}
    bar = tqdm(total=len(warm) + len(users), desc="bench", disable=not progress, file=sys.stderr)
    t0 = time.time()
    for i, user in enumerate(warm + users):
        shift = i % len(methods)
        measured = {}
        for method in methods[shift:] + methods[:shift]:  # rotated: no method always runs first
            measured[method.name] = measure(method, rec, user, cfg.split, recorder)
        reference = measured["ar"].output_ids
        for method in methods:
            got = measured[method.name].output_ids
            if got != reference:
                pos = first_difference(got, reference)
                where = f"warm-up request {i}" if i < len(warm) else f"request {i - len(warm)}"
                raise BenchMismatch(
                    f"method {method.name} is not lossless: {where} (user {user}) differs from ar at "
                    f"generated token {pos} ({got[pos] if pos < len(got) else 'end'} vs "
                    f"{reference[pos] if pos < len(reference) else 'end'})"
                )
        if i >= len(warm):
            for name, m in measured.items():
                runs[name].append(m)
        bar.update(1)
    bar.close()
    report = {
        "config": {
            **cfg.__dict__,
            "target": _where(cfg.target),
            "data": _where(cfg.data),
            "drafts": [m.source for m in methods if m.kind == "draft"],
            "list_len": rec.list_len,
            "measured_requests": len(users),
        },
        "hardware": hardware_info(cfg.device),
        "wall_s": round(time.time() - t0, 1),
        "methods": {
            m.name: {
                "kind": m.kind,
                "source": m.source,
                **m.info,
                **summarize(m.name, runs[m.name], runs["ar"], rec, cfg.split),
            }
            for m in methods
        },
    }
    if out is not None:
        write_report(report, runs, Path(out))
    return report


# --------------------------------------------------------------------------- the report


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def report_markdown(report: dict) -> str:
    """The report as Markdown tables: headline figures, acceptance, and where each method's time goes."""
    hw = report["hardware"]
    cfg = report["config"]
    lines = [
        "# padrec bench",
        "",
        f"{cfg['measured_requests']} requests ({cfg['split']} users of `{cfg['data']}`, list length "
        f"{cfg['list_len']}, {cfg['warmup']} warm-up requests excluded), methods interleaved request by request.",
        f"Hardware: {hw['cpu']}, {hw['cpu_count']} CPUs, torch {hw['torch']} ({hw['torch_threads']} threads), "
        f"transformers {hw['transformers']}, device {hw['device']}{', ' + hw['gpu'] if 'gpu' in hw else ''}.",
        "",
        "| method | speedup (p10–p90) | latency ms median / p90 | τ | identical | R@10 | N@10 "
        "| target fwd / request | draft ms / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"| {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
            f"| {m['latency_ms_median']:.1f} / {m['latency_ms_p90']:.1f} | {m['tau']:.3f} | {m['identical']:.3f} "
            f"| {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['target_forwards_mean']:.1f} "
            f"| {_fmt(m['draft_ms_per_step'])} |"
        )
    slots = sorted(
        {s for m in report["methods"].values() for s in m["alpha_by_slot"]}, key=lambda s: (len(s) > 1, s)
    )
    steps = max(len(m["alpha_by_step"]) for m in report["methods"].values())
    lines += [
        "",
        "## Acceptance",
        "",
        "| method | "
        + " | ".join(f"α{k}" for k in range(steps))
        + " | "
        + " | ".join(f"slot {s}" for s in slots)
        + " |",
        "|---|" + "---|" * (steps + len(slots)),
    ]
    for name, m in report["methods"].items():
        if m["kind"] == "ar":
            continue
        by_step = m["alpha_by_step"] + [None] * (steps - len(m["alpha_by_step"]))
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(a) for a in by_step)
            + " | "
            + " | ".join(_fmt(m["alpha_by_slot"].get(s)) for s in slots)
            + " |"
        )
    lines += [
        "",
        "## Where the time goes (ms per request; per round in brackets)",
        "",
        "| method | rounds | drafted / accepted per round | draft | verify (target forwards) | other | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        p, r = m["profile_ms_per_request"], m["profile_ms_per_round"] or {}
        lines.append(
            f"| {name} | {m['rounds_mean']:.1f} | {_fmt(m['drafted_per_round'], '.2f')} / "
            f"{_fmt(m['accepted_per_round'], '.2f')} | {p['draft']:.1f} ({_fmt(r.get('draft'), '.2f')}) "
            f"| {p['verify']:.1f} ({_fmt(r.get('verify'), '.2f')}) | {p['other']:.1f} "
            f"({_fmt(r.get('other'), '.2f')}) | {p['total']:.1f} |"
        )
    lines += [
        "",
        "speedup: median over requests of AR latency ÷ method latency (same request, same process). "
        "τ: generated tokens per target forward, bonus token included. α_k: acceptance of draft step k given "
        "steps < k were accepted, over every round (a PAD-Rec draft's blind first round, one token drafted before "
        "any target feature exists, included); by slot: the item slot of that position in the final list. "
        "identical: share of requests whose output equals AR's.",
        "",
        "Plots: [speedup](speedup.png) · [α by step](alpha_by_step.png) · [α by slot](alpha_by_slot.png) · "
        "[latency](latency.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, runs: dict[str, list[Measurement]], out: Path) -> Path:
    """Render every report file into a staged folder, then move it into place as ``out``."""
    from .plots import plot_report

    with staged_dir(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(report_markdown(report))
        with open(tmp / "requests.jsonl", "w") as f:
            for name in runs:
                for m in runs[name]:
                    f.write(json.dumps(m.to_json()) + "\n")
        plot_report(report, runs, tmp)
    return out
