"""``padrec bench``: every decoding method on the same requests, interleaved, with the lossless check.

Methods, all under the same catalog constraint and greedy decoding (or, with ``temperature``, all sampling):

* ``ar``: stock ``target.generate`` with no assistant, the reference every ratio is taken against;
* ``prompt_lookup``: transformers' prompt-lookup decoding (no model, n-grams of the prompt);
* ``small_lm``: a standalone small Qwen2 assistant (``padrec train-assistant``), vanilla speculative decoding;
* ``generate:NAME``: one per PAD-Rec draft folder through stock ``generate(assistant_model=draft)``, named after
  its position signals (``pad-rec``, ``item-only``, ``step-only``, ``no-position``);
* ``ar-jf``: padrec's engine with no draft (jump-forward over forced tokens, the target decides every choice);
* ``NAME``: one per draft through padrec's engine (drafting only at the choices, one forward per round);
* ``tree:NAME``: with ``--tree``, one per draft drafting a tree per round (:mod:`modeling_padrec.engine.tree`),
  its shape given (``--tree N``: N choice nodes) or chosen by a short calibration on validation users
  (``--tree auto``, :mod:`modeling_padrec.calibration`).

For every request (one test user) all methods run back to back in one process, in an order rotated from request
to request, so machine drift hits them alike. The first ``warmup`` requests are run and thrown away. Every
method's output must equal AR's token for token; the first that does not stops the run with
:class:`BenchMismatch` naming the request, and nothing is reported. Sampled runs (``--temperature``) cannot be
compared token for token: each sampled list must be a complete list of distinct catalog items, and that the
engine samples from the target's own distribution is guarded by a chi-square property test
(``tests/test_engine.py``).

Per request, each method's time is split three ways: drafting (inside the candidate generator's
``get_candidates``), verification (inside the target's forward passes) and the rest (``generate``'s own
bookkeeping, logits processors, cache handling) — the per-round profile the report carries.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .decoding import Recommender
from .engine import GenerationSettings
from .errors import PadrecError
from .evaluate import ranking_metrics
from .fileio import check_output_dir, staged_dir
from .plots import TREE_PLOT, plot_report

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
    kind: str  # ar | prompt_lookup | small_lm | draft (stock generate) | engine
    generate_kwargs: dict = field(default_factory=dict)
    draft: torch.nn.Module | None = None
    source: str | None = None
    info: dict = field(default_factory=dict)
    engine: object | None = None  # padrec's engine (kind "engine")
    sampling: GenerationSettings | None = None  # None: greedy

    def run(self, rec: Recommender, user: str, split: str, recorder: RoundRecorder, seed: int = 0):
        """One request. Sampled methods draw from a generator seeded with ``seed`` (stock ``generate`` from the
        global one), so a run is reproducible; the same seed does not make two methods' samples equal."""
        if self.engine is not None:
            generator = None if self.sampling is None else torch.Generator(rec.device).manual_seed(seed)
            return rec.recommend(user, split, engine=self.engine, generator=generator, settings=self.sampling)
        kwargs = dict(self.generate_kwargs)
        if self.sampling is not None:
            torch.manual_seed(seed)  # stock generate samples from the global generator
            kwargs.update(do_sample=True, temperature=self.sampling.temperature, top_k=0, top_p=1.0)
        if self.draft is not None:
            self.draft.attach(rec.target.model, rec.token_map)
        try:
            with recorder:
                return rec.recommend(user, split, **kwargs)
        finally:
            if self.draft is not None:
                self.draft.detach()


def _where(path) -> str:
    """A local folder relative to where the command ran (a published report names no machine-local absolute
    path; ``padrec export`` resolves it from the same folder); a repo id as given."""
    return os.path.relpath(Path(path).resolve()) if Path(path).exists() else str(path)


def draft_method_name(config) -> str:
    """``pad-rec`` (both position signals), ``item-only``, ``step-only`` or ``no-position``; a step signal
    without its context gate adds ``-ungated``."""
    item, step = config.use_item_position, config.use_step_position
    name = {(True, True): "pad-rec", (True, False): "item-only", (False, True): "step-only"}.get(
        (item, step), "no-position"
    )
    ungated = step and getattr(config, "step_gate", "context") == "none"
    return name + "-ungated" if ungated else name


def build_methods(
    rec: Recommender,
    drafts: list[str] = (),
    assistant: str | None = None,
    lookup_tokens: int | None = None,
    lookup_ngram: int = 2,
    depth: int | None = None,
    only: list[str] | None = None,
    engine_depth: int | None = None,
    tree: TreeSpec | None = None,
) -> list[Method]:
    """AR, prompt lookup, the small-LM assistant (if given), every draft folder (``DIR`` or ``NAME=DIR``) through
    stock ``generate``, then the engine: ``ar-jf`` and every draft.

    ``depth``: tokens drafted per round by every stock model-based method (default: each one's own trained
    depth); prompt lookup proposes ``lookup_tokens`` (default: ``depth``, else 5). ``engine_depth``: choices
    drafted per round by every engine draft (default: ``depth``, else the draft's trained depth). ``only``: keep
    these methods (``ar`` is always kept: it is the reference).
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
        draft = load_draft(path, rec.token_map, device=rec.device, dataset=rec.dataset)
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
            "step_gate": draft.config.step_gate if draft.config.use_step_position else None,
        }
        methods.append(
            Method(f"generate:{name}", "draft", {"assistant_model": draft}, draft, _where(path), info)
        )
    methods.append(Method("ar-jf", "engine", info={"depth": 0}, engine=rec.engine()))
    for method in [m for m in methods if m.kind == "draft"]:
        draft = method.draft
        engine = rec.engine(draft, engine_depth or depth or draft.config.max_draft_steps)
        info = {**method.info, "depth": engine.depth}
        name = method.name.removeprefix("generate:")
        methods.append(Method(name, "engine", draft=draft, source=method.source, info=info, engine=engine))
    if tree is not None:
        for method in [m for m in methods if m.kind == "draft"]:
            name = "tree:" + method.name.removeprefix("generate:")
            if only and name not in only:
                continue
            methods.append(tree.method(rec, name, method))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise PadrecError(f"--draft: two methods share a name ({names}); name them with NAME=DIR")
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise PadrecError(f"--only: no method named {', '.join(unknown)} (methods: {', '.join(names)})")
        methods = [m for m in methods if m.name == "ar" or m.name in only]
    return methods


@dataclass
class TreeSpec:
    """Draft trees in the bench: ``budget`` choice nodes per tree, or ``"auto"`` (chosen per draft by a
    calibration on ``calibration_users`` validation users), ``width`` children per choice point, at most
    ``depth`` choices on a path, nodes valued by ``rank``: ``"draft"`` (its log-probabilities), ``"acceptance"``
    (the acceptance curve the calibration fits), ``"sibling"`` (its curves for the draft's first pick at a choice
    point and for the others) or ``"auto"`` (with ``budget="auto"``, the calibration's choice among those and the
    draft's plain chain, which it takes when no tree is replayed as faster; with a fixed budget, the draft)."""

    budget: int | str = "auto"
    width: int = 3
    depth: int = 10
    calibration_users: int = 16
    rank: str = "auto"
    progress: bool = False

    @classmethod
    def parse(cls, value: str, **kwargs) -> TreeSpec:
        if value != "auto" and not (value.isdigit() and int(value) > 0):
            raise PadrecError(f"--tree must be auto or a positive number of choice nodes, got {value!r}")
        return cls(budget=value if value == "auto" else int(value), **kwargs)

    def method(self, rec: Recommender, name: str, stock: Method) -> Method:
        from .calibration import BUDGETS, calibrate_tree

        info = {**stock.info, "width": self.width}
        depth, budget, curve = self.depth, self.budget, None
        if budget == "auto" or self.rank in ("acceptance", "sibling"):
            split = "valid" if rec.dataset.eval_users("valid") else "test"
            # the last users of the split: the bench measures the first ones
            users = rec.dataset.eval_users(split)[-self.calibration_users - 1 :]
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(users), desc=f"calibrate {name}", file=sys.stderr)
            fixed = budget != "auto"  # a fixed shape calibrates for the acceptance curve only
            cal = calibrate_tree(
                rec, stock.draft, users, split, self.width, self.depth,
                budgets=(budget,) if fixed else BUDGETS, progress=bar, rank=self.rank,
            )  # fmt: skip
            if bar is not None:
                bar.close()
            if not fixed:
                depth, budget = cal.depth, cal.budget
            curve, rank = cal.curve, cal.rank
            info["calibration"] = {"split": split, **cal.to_json()}
        else:
            rank = "draft"
        width = None if rank == "chain" else self.width  # the calibration chose no tree: the engine's chain
        info.update(width=width or 1, depth=depth, budget=budget, rank=rank)
        engine = rec.engine(stock.draft, depth, width, budget, curve)
        return Method(name, "engine", draft=stock.draft, source=stock.source, info=info, engine=engine)


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
    # (start offset in the output, drafted, accepted, kept[, offsets of the choices within the draft (engine)])
    rounds: list[tuple]
    draft_steps: int = 0  # draft forwards (stock path: drafted tokens)
    forced_draft_steps: int = 0  # engine: of those, the steps over forced tokens only

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "user": self.user,
            "latency_ms": round(self.latency_ms, 3),
            "target_forwards": self.target_forwards,
            "verify_ms": round(self.verify_ms, 3),
            "draft_ms": round(self.draft_ms, 3),
            "draft_steps": self.draft_steps,
            "forced_draft_steps": self.forced_draft_steps,
            "rounds": [list(r) for r in self.rounds],
            "output_ids": self.output_ids,
            "items": self.items,
        }


def measure(
    method: Method, rec: Recommender, user: str, split: str, recorder: RoundRecorder, seed: int = 0
) -> Measurement:
    r = method.run(rec, user, split, recorder, seed)
    if method.kind == "engine":
        rounds = [
            (start, drafted, acc, acc, offsets) for start, drafted, acc, offsets in r.extra.get("rounds", [])
        ]
        draft_ms, draft_steps = r.extra["draft_ms"], r.extra["draft_steps"]
        forced_steps = r.extra["forced_draft_steps"]
    else:
        offset = len(r.prompt_ids)
        rounds = [(start - offset, drafted, acc, kept) for start, drafted, acc, kept in recorder.rounds]
        draft_ms, draft_steps = 1000 * recorder.draft_seconds, sum(d for _, d, _, _ in rounds)
        forced_steps = 0
    return Measurement(
        method.name, user, r.output_ids, r.items, r.latency_ms, r.target_forwards, r.forward_ms, draft_ms,
        rounds, draft_steps, forced_steps,
    )  # fmt: skip


def check_sampled(m: Measurement, list_len: int, i: int, warm: int) -> None:
    """A sampled list cannot be compared with ar's token for token (that speculative sampling draws from the
    target's own distribution is a property test's job): it must be a complete list of distinct catalog items."""
    items = [x for x in m.items if x is not None]
    if len(m.items) != list_len or len(items) != list_len or len(set(items)) != list_len:
        where = f"warm-up request {i}" if i < warm else f"request {i - warm}"
        raise BenchMismatch(
            f"method {m.method} sampled an invalid list: {where} (user {m.user}) has items {m.items}"
        )


def choice_positions(trie, output_ids: list[int]) -> int:
    """Positions of a list where the catalog left more than one valid token (counted by walking the trie over
    the written list, independently of how it was decoded)."""
    state, count = trie.start(), 0
    for tok in output_ids:
        count += state.num_allowed() > 1
        state.advance(tok)
    return count


def perfect_draft_forwards(choices: int, depth: int) -> int:
    """Target forwards a list with ``choices`` choices needs when a draft proposing ``depth`` choices per round
    is always right: the prefill decides the first choice, every later forward ``depth`` + 1."""
    return 0 if choices == 0 else 1 + -(-(choices - 1) // (depth + 1))


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where ``a`` and ``b`` differ: the length of their common prefix."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# --------------------------------------------------------------------------- aggregation


def _pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 4)


def acceptance_counts(
    m: Measurement, slot_of: list[int], levels: int
) -> tuple[list[list[int]], list[list[int]]]:
    """One request's draft steps: ``[reached, accepted]`` per step k and per item slot (``slot_of[token]``, from
    ``TokenMap.slot_table``, of the token at the step; ``levels + 2`` slots). A step is every drafted token (stock
    path) or every drafted choice (engine, where forced tokens are filled in by the catalog); step k is reached
    when everything before it was accepted."""
    by_step: list[list[int]] = []
    by_slot = [[0, 0] for _ in range(levels + 2)]
    for start, drafted, accepted, _, *choice_offsets in m.rounds:
        offsets = choice_offsets[0] if choice_offsets else range(drafted)
        for k, offset in enumerate(offsets):
            if offset > accepted:
                break
            pos = start + offset
            slot = slot_of[m.output_ids[pos]] if pos < len(m.output_ids) else levels + 1
            by_step.extend([0, 0] for _ in range(k + 1 - len(by_step)))
            for counts in (by_step[k], by_slot[slot]):
                counts[0] += 1
                counts[1] += int(offset < accepted)
    return by_step, by_slot


def summarize(
    name: str,
    runs: list[Measurement],
    ar_runs: list[Measurement],
    rec: Recommender,
    split: str,
    engine_depth: int | None = None,
) -> dict:
    """Every figure of one method over the measured requests (``runs`` and ``ar_runs`` aligned by request).
    ``engine_depth``: choices drafted per round by an engine method (0: no draft), for the perfect-draft bound."""
    slot_names = rec.token_map.slot_names()
    slot_of = rec.token_map.slot_table().tolist()
    ratios = [a.latency_ms / m.latency_ms for a, m in zip(ar_runs, runs, strict=True)]
    latencies = [m.latency_ms for m in runs]
    tokens = sum(len(m.output_ids) for m in runs)
    forwards = sum(m.target_forwards for m in runs)
    reached_step: list[int] = []
    accepted_step: list[int] = []
    reached_slot = [0] * len(slot_names)
    accepted_slot = [0] * len(slot_names)
    for m in runs:
        by_step, by_slot = acceptance_counts(m, slot_of, rec.token_map.levels)
        for k, (reached, accepted) in enumerate(by_step):
            for table, value in ((reached_step, reached), (accepted_step, accepted)):
                table.extend([0] * (k + 1 - len(table)))
                table[k] += value
        for slot, (reached, accepted) in enumerate(by_slot):
            reached_slot[slot] += reached
            accepted_slot[slot] += accepted
    rounds_total = sum(len(m.rounds) for m in runs)
    drafted_total = sum(r[1] for m in runs for r in m.rounds)
    accepted_total = sum(r[2] for m in runs for r in m.rounds)
    lists = {m.user: m.items for m in runs}
    quality = ranking_metrics(lists, {u: rec.dataset.targets(split)[u] for u in lists})
    n = len(runs)
    draft_ms = sum(m.draft_ms for m in runs)
    draft_steps = sum(m.draft_steps for m in runs)
    forced_steps = sum(m.forced_draft_steps for m in runs)
    # each request without its draft steps over forced tokens, each charged the request's mean step cost: the
    # most a draft that stepped only at choices (same proposals) could save
    choice_only = [
        a.latency_ms / (m.latency_ms - m.draft_ms * m.forced_draft_steps / m.draft_steps)
        for a, m in zip(ar_runs, runs, strict=True)
        if m.draft_steps
    ]
    verify_ms = sum(m.verify_ms for m in runs)
    choices = [choice_positions(rec.trie, m.output_ids) for m in runs]
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
        "tau": round(tokens / max(forwards, 1), 4),
        "alpha_by_step": [round(a / r, 4) for a, r in zip(accepted_step, reached_step, strict=True)],
        "alpha_by_slot": {
            s: round(a / r, 4) for s, a, r in zip(slot_names, accepted_slot, reached_slot, strict=True) if r
        },
        "identical": round(
            sum(m.output_ids == a.output_ids for m, a in zip(runs, ar_runs, strict=True)) / n, 4
        ),
        **{k: quality[k] for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")},
        "target_forwards_mean": round(forwards / n, 3),
        "draft_ms_per_step": round(draft_ms / draft_steps, 4) if draft_steps else None,
        "draft_steps_mean": round(draft_steps / n, 3),
        "forced_draft_steps_mean": round(forced_steps / n, 3),
        "speedup_if_forced_steps_free": _pct(choice_only, 50) if forced_steps else None,
        "choices_per_list": round(sum(choices) / n, 3),
        "forced_share": round(1 - sum(choices) / tokens, 4),
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
        "target_forward_ms_mean": round(verify_ms / max(forwards, 1), 4),
        "perfect_draft_forwards_mean": (
            None
            if engine_depth is None
            else round(sum(perfect_draft_forwards(c, engine_depth) for c in choices) / n, 3)
        ),
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
    merge_lora: bool = False
    only: list[str] | None = None
    engine_depth: int | None = None
    tree: TreeSpec | None = None
    # None: greedy, every list checked token for token against ar's. A temperature: every method samples
    # (the engine by speculative sampling), each list is checked to be a complete list of catalog items.
    temperature: float | None = None


@dataclass
class BenchRun:
    """A finished bench: its report, every method's measurements (aligned by request) and the recommender."""

    report: dict
    runs: dict[str, list[Measurement]]
    rec: Recommender


def run_bench(cfg: BenchConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Run every method on ``cfg.users`` requests, check losslessness, and (with ``out``) write the report
    folder: ``report.json``, ``report.md``, ``requests.jsonl`` and the PNG plots. Returns the report."""
    if out is not None:
        check_output_dir(out, "report.json")
    result = bench_run(cfg, progress)
    if out is not None:
        write_report(result.report, result.runs, Path(out))
    return result.report


def bench_run(cfg: BenchConfig, progress: bool = True, extra_methods=None) -> BenchRun:
    """Every method on ``cfg.users`` requests, interleaved, each list checked against ``ar``'s.

    ``extra_methods``: an optional ``(recommender, methods) -> [Method, ...]`` adding methods of the caller's own
    (an experimental proposer on the engine, say), measured and checked like every other."""
    from tqdm.auto import tqdm

    from .catalog import unseen_note
    from .data import load_dataset
    from .hardware import hardware_info
    from .target import load_target

    torch.manual_seed(cfg.seed)
    dataset = load_dataset(cfg.data)
    target = load_target(cfg.target, device=cfg.device, merge_lora=cfg.merge_lora)
    rec = Recommender(target, dataset, list_len=cfg.list_len, engine="generate")  # engine methods pass theirs
    note = unseen_note(target.unseen_items, f"the target {cfg.target}")
    if note and progress:
        print(note, file=sys.stderr)
    users = dataset.eval_users(cfg.split)[: cfg.users]
    if not users:
        raise PadrecError(f"{cfg.data}: no users with a non-empty {cfg.split} target list")
    methods = build_methods(
        rec,
        cfg.drafts,
        cfg.assistant,
        cfg.lookup_tokens,
        cfg.lookup_ngram,
        cfg.depth,
        cfg.only,
        cfg.engine_depth,
        cfg.tree,
    )
    if extra_methods is not None:
        methods += extra_methods(rec, methods)
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise PadrecError(f"extra methods: two methods share a name ({names})")
    sampling = None
    if cfg.temperature is not None:
        if not cfg.temperature > 0:
            raise PadrecError(f"--temperature must be > 0, got {cfg.temperature}")
        sampling = GenerationSettings(
            do_sample=True, temperature=cfg.temperature, max_new_tokens=rec.max_new_tokens
        )
        for method in methods:
            method.sampling = sampling
    # a sampled list is complete at the list length, or earlier in a catalog smaller than that
    complete = min(rec.list_len, len(rec.item_lookup))
    recorder = RoundRecorder(target.model)
    warm = users[: cfg.warmup]
    runs: dict[str, list[Measurement]] = {m.name: [] for m in methods}
    bar = tqdm(total=len(warm) + len(users), desc="bench", disable=not progress, file=sys.stderr)
    t0 = time.time()
    for i, user in enumerate(warm + users):
        shift = i % len(methods)
        measured = {}
        for method in methods[shift:] + methods[:shift]:  # rotated: no method always runs first
            measured[method.name] = measure(method, rec, user, cfg.split, recorder, cfg.seed * 1_000_003 + i)
        reference = measured["ar"].output_ids
        for method in methods:
            got = measured[method.name].output_ids
            if sampling is not None:
                check_sampled(measured[method.name], complete, i, len(warm))
            elif got != reference:
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
            "tree": None
            if cfg.tree is None
            else {k: v for k, v in cfg.tree.__dict__.items() if k != "progress"},
            "target": _where(cfg.target),
            "data": _where(cfg.data),
            # every PAD-Rec draft benched, by stock generate or only by the engine (--only)
            "drafts": list(dict.fromkeys(m.source for m in methods if m.draft is not None)),
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
                **summarize(
                    m.name, runs[m.name], runs["ar"], rec, cfg.split, m.engine.depth if m.engine else None
                ),
            }
            for m in methods
        },
    }
    for name, m in report["methods"].items():  # an engine draft against the same draft through generate
        stock = runs.get(f"generate:{name}")
        if m["kind"] == "engine" and stock is not None:
            ratios = [s.latency_ms / e.latency_ms for s, e in zip(stock, runs[name], strict=True)]
            m["speedup_vs_generate"] = _pct(ratios, 50)
            m["speedup_vs_generate_p10"], m["speedup_vs_generate_p90"] = _pct(ratios, 10), _pct(ratios, 90)
        chain = runs.get(name.removeprefix("tree:")) if name.startswith("tree:") else None
        if chain is not None:  # a draft tree against the same draft's chain
            ratios = [c.latency_ms / t.latency_ms for c, t in zip(chain, runs[name], strict=True)]
            m["speedup_vs_chain"] = _pct(ratios, 50)
            m["speedup_vs_chain_p10"], m["speedup_vs_chain_p90"] = _pct(ratios, 10), _pct(ratios, 90)
            m["tau_vs_chain"] = round(m["tau"] / report["methods"][name.removeprefix("tree:")]["tau"], 4)
    return BenchRun(report, runs, rec)


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
        *(
            [
                f"Every method **sampled at temperature {cfg['temperature']}** (the engine by speculative sampling): "
                "the lists were checked to be complete lists of distinct items, not compared with ar's."
            ]
            if cfg.get("temperature")
            else []
        ),
        f"Hardware: {hw['cpu']}, {hw['cpu_count']} CPUs, torch {hw['torch']} ({hw['torch_threads']} threads), "
        f"transformers {hw['transformers']}, device {hw['device']}{', ' + hw['gpu'] if 'gpu' in hw else ''}.",
        "",
        "| method | speedup (p10–p90) | latency ms median / p90 | τ | identical | R@10 | N@10 "
        "| target fwd / request | perfect-draft fwd | draft ms / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"| {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
            f"| {m['latency_ms_median']:.1f} / {m['latency_ms_p90']:.1f} | {m['tau']:.3f} | {m['identical']:.3f} "
            f"| {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['target_forwards_mean']:.1f} "
            f"| {_fmt(m.get('perfect_draft_forwards_mean'), '.1f')} | {_fmt(m['draft_ms_per_step'])} |"
        )
    first = next(iter(report["methods"].values()))
    lines += [
        "",
        f"Every list has {first['choices_per_list']:.1f} positions where the catalog leaves a choice on average; "
        f"{100 * first['forced_share']:.1f}% of its tokens are forced. Methods without a `generate:` prefix, "
        "other than `ar`, run on padrec's engine.",
    ]
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
        "| method | rounds | drafted / accepted per round | draft steps (over forced tokens) | draft "
        "| verify (target forwards) | other | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        p, r = m["profile_ms_per_request"], m["profile_ms_per_round"] or {}
        forced = m.get("forced_draft_steps_mean")
        steps = f"{m['draft_steps_mean']:.1f}" + (
            f" ({forced:.1f})" if m["kind"] == "engine" and forced else ""
        )
        lines.append(
            f"| {name} | {m['rounds_mean']:.1f} | {_fmt(m['drafted_per_round'], '.2f')} / "
            f"{_fmt(m['accepted_per_round'], '.2f')} | {steps} | {p['draft']:.1f} ({_fmt(r.get('draft'), '.2f')}) "
            f"| {p['verify']:.1f} ({_fmt(r.get('verify'), '.2f')}) | {p['other']:.1f} "
            f"({_fmt(r.get('other'), '.2f')}) | {p['total']:.1f} |"
        )
    free = {n: m["speedup_if_forced_steps_free"] for n, m in report["methods"].items()
            if m.get("speedup_if_forced_steps_free")}  # fmt: skip
    if free:
        lines += [
            "",
            "The engine's draft steps over forced tokens carry its feature chain to the next choice; a draft that "
            "stepped only at choices would skip them. Speedup with those steps free (each charged its request's "
            "mean draft step; same proposals, an upper bound): "
            + ", ".join(f"{n} {v:.2f}×" for n, v in free.items())
            + ".",
        ]
    lines += tree_markdown(report)
    lines += [
        "",
        "speedup: median over requests of AR latency ÷ method latency (same request, same process). "
        "τ: generated tokens per target forward, bonus and forced tokens included. α_k: acceptance of draft step "
        "k given steps < k were accepted, over every round (stock path: every drafted token is a step, a PAD-Rec "
        "draft's blind first round included; engine: every drafted choice is a step, forced tokens are filled in "
        "by the catalog); by slot: the item slot of that position in the final list. perfect-draft fwd: target "
        "forwards per list if the engine's draft were always right at its depth (ar-jf: one per choice). "
        "identical: share of requests whose output equals AR's.",
        "",
        "Plots: [speedup](speedup.png) · [α by step](alpha_by_step.png) · [α by slot](alpha_by_slot.png) · "
        "[latency](latency.png)"
        + (
            f" · [tree confidence by level]({TREE_PLOT})"
            if any(m.get("calibration") for m in report["methods"].values())
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


RANK_WORDS = {
    "draft": "the draft's probability",
    "acceptance": "the calibrated acceptance curve",
    "sibling": "the calibrated acceptance curves of first and later picks",
    "chain": "nothing: calibration chose the draft's chain",
}


def tree_markdown(report: dict) -> list[str]:
    """The draft-tree methods: their shape, how it was chosen, and how the draft's confidence predicts
    acceptance level by level."""
    trees = {n: m for n, m in report["methods"].items() if n.startswith("tree:")}
    if not trees:
        return []
    lines = ["", "## Draft trees", ""]
    for name, m in trees.items():
        vs = m.get("speedup_vs_chain")
        shape = (
            f"no tree, calibration chose the draft's chain, depth {m['depth']} (choices per round)"
            if m.get("rank") == "chain"
            else f"width {m['width']}, depth {m['depth']} (choices on a path), budget {m['budget']} choice nodes, "
            f"valued by {RANK_WORDS[m.get('rank', 'draft')]}"
        )
        lines.append(
            f"**{name}**: {shape}; {_fmt(m['drafted_per_round'], '.1f')} nodes "
            "verified per round (forced runs included)"
            + (
                f"; against the chain of the same draft: τ {m['tau_vs_chain']:.2f}×, wall-clock {vs:.2f}× "
                f"({m['speedup_vs_chain_p10']:.2f}–{m['speedup_vs_chain_p90']:.2f})"
                if vs is not None
                else ""
            )
            + "."
        )
        cal = m.get("calibration")
        if cal is None:
            continue
        grid = cal["grid"]
        traced = (report["config"].get("tree") or {}).get("width", cal["width"])  # cal's: the chosen shape's
        ranked = sorted(grid, key=lambda g: -g["choices_per_ms"])[:5]
        best_per_rank = {}
        for g in sorted(grid, key=lambda g: -g["choices_per_ms"]):
            best_per_rank.setdefault(g.get("rank", "draft"), g)
        ranked += [g for g in best_per_rank.values() if g not in ranked]
        model = cal.get("draft_ms_model") or {}
        lines += [
            "",
            f"Shape chosen by calibration on {cal['requests']} {cal['split']} requests ({cal['rounds']} rounds of a "
            f"width-{traced} tree, no budget cut): the best replayed shapes (and the best of each ranking), "
            f"choices decided per ms of a round (draft + verify + the loop's own {cal['other_ms_per_round']:.2f} ms):",
            "",
            "| valued by | depth | budget | positions verified | choices / round | draft ms | ms / round "
            "| choices / ms |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {g.get('rank', 'draft')} | {g['depth']} | {_fmt(g['budget'], 'd')} | {g['positions']:.1f} "
                f"| {g['choices_per_round']:.2f} | {_fmt(g.get('draft_ms'), '.2f')} | {g['ms_per_round']:.2f} "
                f"| {g['choices_per_ms']:.4f} |"
                for g in ranked
            ),
            "",
            "Target forward, ms by new positions: "
            + ", ".join(f"{k}: {v:.2f}" for k, v in cal["target_ms"].items())
            + ". Draft, ms to grow levels 1..k of the traced tree: "
            + ", ".join(f"{v:.2f}" for v in cal["draft_ms_by_level"])
            + "."
            + (
                f" Draft time per round, fitted: {model['per_round']:.3f} ms + {model['per_forward']:.3f} ms per "
                f"forward + {model['per_node']:.3f} ms per node stepped."
                if model
                else ""
            )
            + (
                f" The chain's, fitted on {chain['rounds']} rounds of the chain itself (what chain shapes are "
                f"charged): {chain['per_round']:.3f} ms + {chain['per_step']:.3f} ms per draft step."
                if (chain := cal.get("chain_draft_ms_model"))
                else ""
            )
            + (
                " Acceptance by the draft's confidence (the curve trees valued by acceptance use): "
                + ", ".join(f"≥ {c:.3f}: {r:.3f}" for c, r in cal["acceptance"])
                + "."
                if cal.get("acceptance")
                else ""
            )
            + "".join(
                f" The same for the draft's {which} at a choice point only: "
                + ", ".join(f"≥ {c:.3f}: {r:.3f}" for c, r in curve_)
                + "."
                for which, curve_ in zip(
                    ("first pick", "other picks"), cal.get("acceptance_by_sibling") or [], strict=False
                )
            ),
            "",
            "The draft's confidence (its probability of a drafted choice where the target reached that choice "
            "point) against the target's acceptance, by level:",
            "",
            "| level | drafted | mean confidence | accepted | calibration error (ECE) |",
            "|---|---|---|---|---|",
            *(
                f"| {c['level']} | {c['drafted']} | {c['confidence']:.3f} | {c['accepted']:.3f} | {c['ece']:.3f} |"
                for c in cal["confidence"]
            ),
            "",
            "Where the chosen shape spends its choice nodes, by item slot of the drafted token: "
            + ", ".join(
                f"{b['slot']} {b['share']:.1%} (accepted {b['accepted']:.2f})" for b in cal["branching"]
            )
            + ".",
            "",
        ]
    return lines


def write_report(report: dict, runs: dict[str, list[Measurement]], out: Path) -> Path:
    """Render every report file into a staged folder, then move it into place as ``out``."""
    with staged_dir(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(report_markdown(report))
        with open(tmp / "requests.jsonl", "w") as f:
            for name in runs:
                for m in runs[name]:
                    f.write(json.dumps(m.to_json()) + "\n")
        plot_report(report, runs, tmp)
    return out
