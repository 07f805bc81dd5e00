"""The study's report, recomputed from the committed per-group results alone.

For every factor and cell (the seeds of one setting pooled): each variant's speedup over ``ar`` (stock
``generate`` greedy) through the engine's chain and tree, its latency ratio against the no-position draft on the
same requests (> 1: the variant is faster), tokens per target forward (τ), and the draft's acceptance by step
and by item slot; every figure with a 95% interval from :mod:`.stats`. The target factor's cells also carry the
target's cost (``ar`` milliseconds per token) and its quality against MostPop, where its evaluation is published.
Which training of its target each group benched is listed too (:mod:`.instances`).
Writes ``report.md``, ``report.json`` and one plot per factor; the conclusion lines are read off the intervals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .instances import instances_markdown, pooled_over_trainings, target_instances
from .plan import BASE_DEPTH, BASE_STEPS, FACTORS, UNGATED, VARIANTS, Group, member_of
from .stats import Estimate, geometric_mean, new_seed_interval, ratio_of_sums, squares

NONE = "no-position"
KINDS = {"chain": "", "tree": "tree:"}  # kind -> method-name prefix


@dataclass
class GroupResult:
    group: Group
    summary: dict
    requests: dict[str, dict[str, dict]]  # method -> user -> record


def load_results(results: Path) -> list[GroupResult]:
    out = []
    for folder in sorted((results / "groups").glob("*/")):
        summary_path, requests_path = folder / "group.json", folder / "requests.jsonl"
        if not summary_path.is_file() or not requests_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        g = summary["group"]
        group = Group(g["dataset"], g["seed"], g["steps"], g["depth"], g["target"], tuple(g["variants"]),
                      g.get("temperature", 0.0))  # fmt: skip
        requests: dict[str, dict[str, dict]] = {}
        for line in requests_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                requests.setdefault(r["method"], {})[r["user"]] = r
        out.append(GroupResult(group, summary, requests))
    return out


def _shown(factor: str, key: list) -> list[str]:
    """The cell fields a table row shows: the target only where it varies (the target factor)."""
    return [str(k) for k in key] if factor == "target" else [str(key[0]), *map(str, key[2:])]


EVALUATIONS = ("eval-all.json", "eval-500.json")  # all test users, the first 500


def target_quality(results_dir: Path, dataset: str, target: str, names=EVALUATIONS) -> dict | None:
    """A study target's evaluation (``padrec evaluate --json``) where it is published: in
    ``results/study/targets/<dataset>-<target>/`` (``make deep-target``), or for the reference target in
    ``results/<dataset>/target/`` (``make reference-table``); the first of ``names`` found."""
    folders = [results_dir / "targets" / f"{dataset}-{target}"]
    if target == "ref":
        folders.append(results_dir.parent / dataset / "target")
    for path in (folder / name for name in names for folder in folders):
        if path.is_file():
            full = json.loads(path.read_text())
            keep = ("users", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "valid_item_rate")
            return {**{k: full[k] for k in keep}, "mostpop": full["mostpop"], "source": str(path)}
    return None


def _cells(results: list[GroupResult], factor: str, base: tuple[int, int]) -> dict[tuple, list[GroupResult]]:
    """A factor's groups by cell (every field but the seed): (dataset, target[, steps or train depth][, the
    decoding])."""
    cells: dict[tuple, list[GroupResult]] = {}
    for r in results:
        g = r.group
        if factor not in member_of(g, *base):
            continue
        key = (g.dataset, g.target) + (
            {
                "budget": (g.steps,),
                "depth": (g.depth,),
                "sampling": (g.steps, g.decoding),
                "gate": (g.steps,),
                "target": (g.steps,),
            }.get(factor, ())
        )
        cells.setdefault(key, []).append(r)
    if factor == "sampling":  # a greedy cell is shown beside its sampled twin, not alone
        sampled = {k[:3] for k in cells if k[3] != "greedy"}
        cells = {k: v for k, v in cells.items() if k[:3] in sampled}
    if factor == "target":  # a budget benched on one target only says nothing about the target's size
        targets: dict[tuple, set] = {}
        for dataset, target, steps in cells:
            targets.setdefault((dataset, steps), set()).add(target)
        cells = {k: v for k, v in cells.items() if len(targets[(k[0], k[2])]) > 1}
    if factor in ("budget", "depth"):  # a dataset run at the base level alone is the ablation's cell again
        levels: dict[tuple, set] = {}
        for dataset, target, level in cells:
            levels.setdefault((dataset, target), set()).add(level)
        cells = {
            k: v
            for k, v in cells.items()
            if len(levels[k[:2]]) > 1 or not all("ablation" in member_of(r.group, *base) for r in v)
        }
    return dict(sorted(cells.items()))


def _paired(results: list[GroupResult], num: str, den: str, field: str = "latency_ms") -> list[np.ndarray]:
    """Per seed: ``num``'s figure over ``den``'s on every request both measured."""
    per_seed = []
    for r in results:
        a, b = r.requests.get(num, {}), r.requests.get(den, {})
        users = sorted(set(a) & set(b))
        per_seed.append(np.array([a[u][field] / b[u][field] for u in users]))
    return per_seed


def _rows(results: list[GroupResult], method: str, pick) -> list[np.ndarray]:
    return [np.array([pick(rec) for rec in r.requests.get(method, {}).values()]) for r in results]


def _alpha(results: list[GroupResult], method: str, key: str, index: int) -> Estimate | None:
    def pick(rec):
        counts = rec[key]
        reached, accepted = counts[index] if index < len(counts) else (0, 0)
        return (accepted, reached)

    rows = _rows(results, method, pick)
    if sum(r[:, 1].sum() for r in rows if len(r)) == 0:
        return None
    return ratio_of_sums(rows)


def _step_cost(rec: dict) -> tuple[float, int]:
    return (rec["draft_ms"], rec["draft_steps"])


def variant_figures(results: list[GroupResult], variant: str, kind: str) -> dict:
    method = KINDS[kind] + variant
    if not any(method in r.requests for r in results):
        return {}
    figures = {
        "speedup_vs_ar": geometric_mean(_paired(results, "ar", method)),
        "tau": ratio_of_sums(_rows(results, method, lambda rec: (rec["tokens"], rec["target_forwards"]))),
        # the cost side: the draft's time per step (the signals add work to every step)
        "draft_ms_per_step": ratio_of_sums(_rows(results, method, _step_cost)),
    }
    if variant != NONE and any(KINDS[kind] + NONE in r.requests for r in results):
        figures["vs_no_position"] = geometric_mean(_paired(results, KINDS[kind] + NONE, method))
    if variant == UNGATED and any(KINDS[kind] + "pad-rec" in r.requests for r in results):
        figures["vs_pad_rec"] = geometric_mean(_paired(results, KINDS[kind] + "pad-rec", method))
    steps = max(
        (len(rec["by_step"]) for r in results for rec in r.requests.get(method, {}).values()), default=0
    )
    figures["alpha_by_step"] = [_alpha(results, method, "by_step", k) for k in range(steps)]
    slots = max(
        (len(rec["by_slot"]) for r in results for rec in r.requests.get(method, {}).values()), default=0
    )
    figures["alpha_by_slot"] = [_alpha(results, method, "by_slot", k) for k in range(slots)]
    return figures


HELD_OUT = ("speedup_vs_ar", "vs_no_position")  # the figures a new seed is checked on


def _variants(members: list[GroupResult]) -> list[str]:
    """The variants every group of a cell benched."""
    return [v for v in (*VARIANTS, UNGATED) if all(v in m.group.variants for m in members)]


def _seed_figures(members: list[GroupResult]):
    """(variant, kind, metric, base method, method) for every ``HELD_OUT`` figure each seed of a cell measured:
    the geometric mean of ``base``'s latency over ``method``'s."""
    for variant in _variants(members):
        for kind, prefix in KINDS.items():
            method = prefix + variant
            for metric, base in zip(HELD_OUT, ("ar", prefix + NONE), strict=True):
                if base != method and all(base in r.requests and method in r.requests for r in members):
                    yield variant, kind, metric, base, method


def _seed_logs(members: list[GroupResult], base: str, method: str) -> list[float]:
    """Each seed's figure alone, as the log of its geometric mean."""
    return [float(np.mean(np.log(x))) for x in _paired(members, base, method)]


def seed_spreads(cells: list[list[GroupResult]]) -> dict[tuple[str, str, str], dict[tuple, list[float]]]:
    """Per (decoding, kind, metric): every distinct (cell's groups, variant) with its seeds' figures (log
    scale). A group set shown under several factors (the 150-step pair is the budget's, the sampling's greedy
    twin and the target's reference) counts once. Greedy and sampled decoding are pooled apart: sampling adds
    its own scatter."""
    spreads: dict[tuple[str, str, str], dict[tuple, list[float]]] = {}
    for members in cells:
        names = tuple(sorted(m.group.name for m in members))
        for variant, kind, metric, base, method in _seed_figures(members):
            key = (members[0].group.decoding, kind, metric)
            spreads.setdefault(key, {})[(names, variant)] = _seed_logs(members, base, method)
    return spreads


def _pooled(spread: dict[tuple, list[float]], replace: tuple | None = None, logs: list[float] = ()) -> tuple:
    """The pooled between-seed (sum of squares, degrees of freedom), with ``replace``'s seeds swapped for
    ``logs``."""
    parts = [squares(v) for k, v in spread.items() if k != replace and len(v) > 1]
    if replace is not None and len(logs) > 1:
        parts.append(squares(list(logs)))
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def new_seed_figures(members: list[GroupResult], spreads: dict) -> dict:
    """variant -> kind -> metric -> where a new seed of this cell should fall
    (:func:`.stats.new_seed_interval`)."""
    out: dict = {}
    for variant, kind, metric, base, method in _seed_figures(members):
        pooled = _pooled(spreads[(members[0].group.decoding, kind, metric)])
        interval = new_seed_interval(_seed_logs(members, base, method), pooled)
        out.setdefault(variant, {}).setdefault(kind, {})[metric] = interval
    return out


def held_out_seeds(members: list[GroupResult], spreads: dict) -> list[dict]:
    """Leave one seed out: every seed of the cell alone against what the cell's other seeds give: the 95%
    interval of their mean (``others``) and where a new seed should fall (``new_seed``, with the pooled spread recomputed
    without the held-out seed). What a rerun with a new seed is checked on, asked of the seeds already run."""
    if len(members) < 2:
        return []
    names = tuple(sorted(m.group.name for m in members))
    out = []
    for variant, kind, metric, base, method in _seed_figures(members):
        logs = _seed_logs(members, base, method)
        for i, m in enumerate(members):
            rest = [r for r in members if r is not m]
            others_logs = logs[:i] + logs[i + 1 :]
            value = round(math.exp(logs[i]), 4)
            others = geometric_mean(_paired(rest, base, method))
            spread = spreads[(members[0].group.decoding, kind, metric)]
            pooled = _pooled(spread, replace=(names, variant), logs=others_logs)
            new_seed = new_seed_interval(others_logs, pooled)
            out.append({"group": m.group.name, "seed": m.group.seed, "variant": variant, "kind": kind,
                        "metric": metric, "value": value, "others": others.to_json(),
                        "inside": not others.excludes(value), "new_seed": new_seed,
                        "inside_new_seed": bool(new_seed) and new_seed["low"] <= value <= new_seed["high"]})  # fmt: skip
    return out


def held_out_tally(report: dict) -> dict[str, dict[str, list[int]]]:
    """Per interval (``others``: the other seeds' mean; ``new_seed``) and figure: [held-out seed figures inside,
    all of them], each distinct (group, variant, kind, figure) counted once."""
    seen: dict[tuple, dict] = {}
    for cells in report["factors"].values():
        for e in (e for cell in cells for e in cell.get("held_out", [])):
            seen[(e["group"], e["variant"], e["kind"], e["metric"])] = e
    tally = {which: {metric: [0, 0] for metric in HELD_OUT} for which in ("others", "new_seed")}
    for e in seen.values():
        for which, inside in (("others", e["inside"]), ("new_seed", e["inside_new_seed"])):
            tally[which][e["metric"]][0] += inside
            tally[which][e["metric"]][1] += 1
    return tally


def _held_out_line(report: dict) -> str | None:
    tally = held_out_tally(report)
    if not any(total for _, total in tally["others"].values()):
        return None

    def count(which: str) -> str:
        inside, total = (sum(t[i] for t in tally[which].values()) for i in (0, 1))
        parts = "; ".join(f"{metric} {a} of {b}" for metric, (a, b) in tally[which].items())
        return f"{inside} of {total} ({parts})"

    return (
        "Leave one seed out: of the single-seed figures, "
        f"{count('new_seed')} fall inside the new-seed interval their cell's other seeds give, and "
        f"{count('others')} inside the 95% interval of the other seeds' mean."
    )


def slot_label(slot: int, slots: int) -> str:
    """``by_slot``'s slots: the code levels, the separator, anything else (``TokenMap.slot_table``)."""
    levels = slots - 2
    return f"code {slot + 1}" if slot < levels else ("sep" if slot == levels else "other")


def build_report(results_dir: Path, base_steps: int = BASE_STEPS, base_depth: int = BASE_DEPTH) -> dict:
    """Every factor's cells from the per-group results in ``results_dir``; ``base_steps`` and ``base_depth``: the
    budget and depth the ablation was trained at (the plan's)."""
    results = load_results(results_dir)
    report: dict = {"groups": len(results), "factors": {}, "cpu": _cpu(results)}
    report["base"] = {"steps": base_steps, "depth": base_depth}
    by_factor = {factor: _cells(results, factor, (base_steps, base_depth)) for factor in FACTORS}
    spreads = seed_spreads([members for cells in by_factor.values() for members in cells.values()])
    for factor in FACTORS:
        cells = []
        for key, members in by_factor[factor].items():
            variants = _variants(members)
            cell = {"cell": list(key), "seeds": sorted(m.group.seed for m in members), "variants": {}}
            for v in variants:
                cell["variants"][v] = {kind: _json(variant_figures(members, v, kind)) for kind in KINDS}
            # the draft's cost per step seed by seed: seeds may have run under different machine load, which
            # widens the pooled interval, while the variants of one seed were benched side by side
            cell["draft_ms_per_step_by_seed"] = {
                v: {str(m.group.seed): ratio_of_sums(_rows([m], v, _step_cost)).to_json() for m in members}
                for v in variants
            }
            cell["new_seed"] = new_seed_figures(members, spreads)
            cell["held_out"] = held_out_seeds(members, spreads)
            if factor == "target":  # how costly the target is, and whether it is any good
                ar_cost = _rows(members, "ar", lambda rec: (rec["latency_ms"], rec["tokens"]))
                cell["ar_ms_per_token"] = ratio_of_sums(ar_cost).to_json()
                cell["quality"] = target_quality(
                    results_dir, *key[:2], _shared_evaluation(results_dir, by_factor, key[0])
                )
            cells.append(cell)
        report["factors"][factor] = cells
    report["seed_spread"] = {}  # the pooled between-seed spread each new-seed interval is drawn from
    for (decoding, kind, metric), spread in sorted(spreads.items()):
        ss, df = _pooled(spread)
        if df:
            report["seed_spread"][f"{decoding} {kind} {metric}"] = {
                "sd_log": round(math.sqrt(ss / df), 4),
                "df": df,
            }
    report["targets"] = target_instances(results)
    report["conclusion"] = conclusion(report) + pooled_over_trainings(report["targets"])
    return report


def _shared_evaluation(results_dir: Path, by_factor: dict, dataset: str) -> tuple[str, ...]:
    """The evaluation every target of ``dataset``'s target cells has published (all users, else the first 500),
    so that their qualities are on the same users; each its own where none is shared."""
    targets = {key[1] for key in by_factor["target"] if key[0] == dataset}
    for name in EVALUATIONS:
        if all(target_quality(results_dir, dataset, t, (name,)) for t in targets):
            return (name,)
    return EVALUATIONS


def _json(figures: dict) -> dict:
    out = {}
    for k, v in figures.items():
        if isinstance(v, list):
            out[k] = [None if e is None else e.to_json() for e in v]
        else:
            out[k] = v.to_json()
    return out


def _cpu(results: list[GroupResult]) -> dict:
    """Training and benching time over the groups; a draft shared by several groups (the sampling and gate
    factors bench drafts other groups trained) counts once."""
    drafts = {
        (r.group.dataset, r.group.target, r.group.draft_name(v)): d.get("train_seconds") or 0
        for r in results
        for v, d in r.summary["drafts"].items()
    }
    train = sum(drafts.values())
    bench = sum(r.summary["bench"]["wall_s"] for r in results)
    return {"train_s": round(train, 1), "bench_s": round(bench, 1)}


def _fmt(e: dict | None) -> str:
    return "—" if not e else f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def _verdict(e: dict, other: str = "the no-position draft") -> str:
    if e["low"] > 1:
        return f"faster than {other} by {100 * (e['value'] - 1):.1f}%"
    if e["high"] < 1:
        return f"slower than {other} by {100 * (1 - e['value']):.1f}%"
    return f"not distinguishable from {other}"


def conclusion(report: dict) -> list[str]:
    """One line per (factor, cell, variant, kind) with a comparison to the no-position draft, read off the
    interval (an interval that holds 1 resolves no difference)."""
    lines = []
    for factor, cells in report["factors"].items():
        for cell in cells:
            for variant, kinds in cell["variants"].items():
                for kind, figures in kinds.items():
                    e = figures.get("speedup_vs_ar")
                    if factor == "target" and e:  # the speedup itself is this factor's measure
                        lines.append(
                            f"target {'/'.join(map(str, cell['cell']))}, {kind}: {variant} is {_fmt(e)} × stock "
                            f"generate ({e['seeds']} seed(s), {e['requests']} requests)"
                        )
                    for key, other in (
                        ("vs_no_position", "the no-position draft"),
                        ("vs_pad_rec", "pad-rec"),
                    ):
                        e = figures.get(key)
                        if e:
                            lines.append(
                                f"{factor} {'/'.join(map(str, cell['cell']))}, {kind}: {variant} is "
                                f"{_verdict(e, other)} ({_fmt(e)}; {e['seeds']} seed(s), {e['requests']} requests)"
                            )
    return lines


def _chains(report: dict):
    """(``factor cell``, variant, chain figures) for every cell and variant of the report."""
    for factor, cells in report["factors"].items():
        for cell in cells:
            for variant, kinds in cell["variants"].items():
                yield f"{factor} {'/'.join(map(str, cell['cell']))}", variant, kinds["chain"]


def report_markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [
        "# The position-signal study",
        "",
        f"{report['groups']} group(s) of drafts benched. Every figure: value [95% interval], a bootstrap over "
        "seeds and users (`modeling_padrec/study/stats.py`). *vs no-position*: the no-position draft's latency "
        "over the variant's on the same request, as a geometric mean (> 1: the variant is faster). Speedups are "
        "over `ar` (stock `generate`, greedy, or sampled in the sampling factor's sampled cells) on the same "
        "request. CPU time so far: "
        f"{cpu['train_s'] / 3600:.1f} h training, {cpu['bench_s'] / 3600:.1f} h benching.",
        "",
    ]
    titles = {"ablation": ("dataset",), "budget": ("dataset", "steps"), "depth": ("dataset", "train depth"),
              "sampling": ("dataset", "steps", "decoding"), "gate": ("dataset", "steps"),
              "target": ("dataset", "target", "steps")}  # fmt: skip
    for factor, cells in report["factors"].items():
        lines += [f"## {factor}", ""]
        if not cells:
            lines += ["No group of this factor has been run yet.", ""]
            continue
        head = [*titles[factor], "seeds", "variant"]
        cols = ["chain ×ar", "chain vs no-position", "tree ×ar", "tree vs no-position", "chain τ",
                "chain draft ms/step"]  # fmt: skip
        lines += ["| " + " | ".join(head + cols) + " |", "|" + "---|" * (len(head) + len(cols))]
        for cell in cells:
            shown = _shown(factor, cell["cell"])
            for variant, kinds in cell["variants"].items():
                chain, tree = kinds["chain"], kinds["tree"]
                row = [*shown, ",".join(map(str, cell["seeds"])), variant,
                       _fmt(chain.get("speedup_vs_ar")), _fmt(chain.get("vs_no_position")),
                       _fmt(tree.get("speedup_vs_ar")), _fmt(tree.get("vs_no_position")), _fmt(chain.get("tau")),
                       _fmt(chain.get("draft_ms_per_step"))]  # fmt: skip
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if factor == "target":
            lines += _target_table(cells)
        lines += [f"![{factor}]({factor}.png)", ""]
    lines += ["## Acceptance by draft step (chain: steps 1-5 of a round)", ""]
    for where, variant, chain in _chains(report):
        lines.append(
            f"- {where} {variant}: " + ", ".join(_fmt(a) for a in chain.get("alpha_by_step", [])[:5])
        )
    lines += [
        "",
        "## Acceptance by item slot (chain: the draft's choices by the code level they fill; unreached slots left out)",
        "",
    ]
    for where, variant, chain in _chains(report):
        alphas = chain.get("alpha_by_slot", [])
        shown = [f"{slot_label(k, len(alphas))} {_fmt(a)}" for k, a in enumerate(alphas) if a]
        if shown:
            lines.append(f"- {where} {variant}: " + ", ".join(shown))
    lines += [
        "",
        "## The draft's time per step, seed by seed (chain; the variants of a seed ran side by side)",
        "",
    ]
    for factor, cells in report["factors"].items():
        for cell in cells:
            where = "/".join(map(str, cell["cell"]))
            for variant, seeds in cell.get("draft_ms_per_step_by_seed", {}).items():
                per_seed = ", ".join(f"seed {k}: {_fmt(e)}" for k, e in seeds.items())
                lines.append(f"- {factor} {where} {variant}: {per_seed} ms")
    lines += ["", *_new_seed_markdown(report)]
    lines += ["", *instances_markdown(report["targets"])]
    lines += ["", "## What the intervals say", ""]
    lines += [f"- {line}" for line in report["conclusion"]] or ["- Nothing yet: no comparison has been run."]
    lines += ["", "Regenerate: `padrec study report`. Rerun one group: see `padrec study run --help`.", ""]
    return "\n".join(lines)


def _new_seed_markdown(report: dict) -> list[str]:
    spread = ", ".join(
        f"{name} {e['sd_log']:.4f} ({e['df']} df)" for name, e in report.get("seed_spread", {}).items()
    )
    lines = [
        "## What a new seed should show",
        "",
        "The tables above give the 95% interval of a cell's mean over its seeds. One more seed's figure scatters "
        "more than that mean: the interval it should fall in (`new_seed_interval` in "
        "`modeling_padrec/study/stats.py`) is the seeds' mean ± t · s · sqrt(1 + 1/seeds) on the log scale, "
        "with s the spread between seeds pooled over the study's cells, per decoding, kind and figure. The "
        "speedup over `ar` compares latencies measured minutes apart, so its spread also holds the machine's load; the ratio "
        "to the no-position draft compares drafts benched side by side. Pooled spread, standard deviation of "
        f"the log figure: {spread or 'none yet (no cell has two seeds)'}.",
        "",
        "| factor | cell | seeds | variant | chain ×ar | chain vs no-position | tree ×ar | tree vs no-position |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor, cells in report["factors"].items():
        for cell in cells:
            for variant, kinds in cell.get("new_seed", {}).items():
                shown = [_fmt(kinds.get(kind, {}).get(metric)) for kind in KINDS for metric in HELD_OUT]
                row = [factor, "/".join(map(str, cell["cell"])), ",".join(map(str, cell["seeds"])), variant]
                lines.append("| " + " | ".join(row + shown) + " |")
    lines += ["", _held_out_line(report) or "Leave one seed out: no cell has more than one seed yet.", ""]
    seen = set()
    for factor, cells in report["factors"].items():
        for cell in cells:
            for e in cell.get("held_out", []):
                key = (e["group"], e["variant"], e["kind"], e["metric"])
                if not e["inside_new_seed"] and key not in seen:
                    seen.add(key)
                    lines.append(
                        f"- outside its new-seed interval: {factor} {'/'.join(map(str, cell['cell']))} seed "
                        f"{e['seed']}, {e['kind']} {e['variant']} {e['metric']} {e['value']:.3f}; other seeds' "
                        f"new-seed interval {_fmt(e['new_seed'])}"
                    )
    return lines


def _target_table(cells: list[dict]) -> list[str]:
    lines = [
        "The targets: `ar` (stock `generate`) milliseconds per generated token on the benched requests, and each "
        "target's quality against MostPop on the same test users (`padrec evaluate`: all test users, or the first "
        "500 where only that is published; — where neither is).",
        "",
        "| dataset | target | steps | seeds | ar ms/token | test users | R@10 | N@10 | MostPop R@10 | MostPop N@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        q = cell.get("quality")
        quality = (
            [str(q["users"]), f"{q['recall@10']:.4f}", f"{q['ndcg@10']:.4f}", f"{q['mostpop']['recall@10']:.4f}",
             f"{q['mostpop']['ndcg@10']:.4f}"] if q else ["—"] * 5
        )  # fmt: skip
        row = [
            *_shown("target", cell["cell"]),
            ",".join(map(str, cell["seeds"])),
            _fmt(cell["ar_ms_per_token"]),
        ]
        lines.append("| " + " | ".join(row + quality) + " |")
    return [*lines, ""]


def plot_factor(report: dict, factor: str, path: Path) -> Path | None:
    """The chain's figure per cell and variant with its interval: the latency ratio against the no-position draft,
    or for the target factor the speedup over ``ar`` (how it grows with the target's cost)."""
    from ..plots import _figure, _save

    cells = report["factors"].get(factor) or []
    metric = "speedup_vs_ar" if factor == "target" else "vs_no_position"
    points = []
    for cell in cells:
        label = "/".join(_shown(factor, cell["cell"]))
        for variant, kinds in cell["variants"].items():
            e = kinds["chain"].get(metric)
            if e:
                points.append((f"{label}\n{variant}", e))
    if not points:
        return None
    widest = max(len(line) for label, _ in points for line in label.split("\n"))  # labels, 7 pt, side by side
    fig, ax = _figure(figsize=(max(4, max(0.9, 0.075 * widest) * len(points)), 3.5))
    xs = range(len(points))
    values = [e["value"] for _, e in points]
    errors = [[e["value"] - e["low"] for _, e in points], [e["high"] - e["value"] for _, e in points]]
    ax.errorbar(xs, values, yerr=errors, fmt="o", capsize=3)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(xs), [p[0] for p in points], fontsize=7)
    if factor == "target":
        ax.set_ylabel("stock generate latency / engine chain latency")
        ax.set_title("target: engine chain speedup over greedy generate\n(95% intervals)", fontsize=9)
    else:
        ax.set_ylabel("no-position latency / variant latency")
        ax.set_title(f"{factor}: engine chain vs the no-position draft\n(95% intervals)", fontsize=9)
    return _save(fig, path)


def variant_of(use_item_position: bool, use_step_position: bool, step_gate: str = "context") -> str:
    """The study's name for a draft's configuration."""
    if use_item_position and use_step_position and step_gate == "none":
        return UNGATED
    return next(v for v, signals in VARIANTS.items() if signals == (use_item_position, use_step_position))


def card_section(report: dict, dataset: str, variant: str, source: str) -> str:
    """A draft card's "which draft to train" section for ``dataset``, read off the study's report: the study cell
    that compares the most variants on this dataset (the ablation's, else the largest budget's), each variant's
    speedup over ``generate`` and its ratio against the no-position draft, with their intervals, and the variant
    this draft is."""
    cells = [(f, c) for f in ("ablation", "budget", "gate") for c in report["factors"].get(f, [])]
    cells = [(f, c) for f, c in cells if c["cell"][0] == dataset and c["cell"][1] == "ref"]
    if not cells:
        return f"The position-signal study (`{source}`) has no cell on `{dataset}` yet; it does not say which draft to train here."
    factor, cell = max(  # the most variants; the ablation's own cell; then the largest budget, the most seeds
        cells,
        key=lambda fc: (len(fc[1]["variants"]), fc[0] == "ablation", fc[1]["cell"][2:], len(fc[1]["seeds"])),
    )
    where = "/".join(map(str, cell["cell"][:1] + cell["cell"][2:]))
    lines = [
        f"From the position-signal study (`{source}`, `padrec study report`), its {factor} cell {where} "
        f"(seeds {', '.join(map(str, cell['seeds']))}; 95% intervals over seeds and users; engine chain on the "
        "development CPU). This draft is **" + variant + "**.",
        "",
        "| variant | × generate | vs no-position (> 1: faster) |",
        "|---|---|---|",
    ]
    best = None
    for name, kinds in cell["variants"].items():
        chain = kinds["chain"]
        lines.append(f"| {name} | {_fmt(chain.get('speedup_vs_ar'))} | {_fmt(chain.get('vs_no_position'))} |")
        speed = chain.get("speedup_vs_ar")
        if speed and (best is None or speed["value"] > best[1]["value"]):
            best = (name, speed)
    if best:
        ties = [
            name for name, kinds in cell["variants"].items()
            if name != best[0] and (kinds["chain"].get("speedup_vs_ar") or {}).get("high", 0) >= best[1]["low"]
        ]  # fmt: skip
        lines += [
            "",
            f"Fastest in this cell: **{best[0]}**"
            + (
                f"; its interval overlaps {', '.join(ties)}'s, so the cell does not separate them."
                if ties
                else "."
            ),
        ]
    return "\n".join(lines)


README_START, README_END = "<!-- study:start -->", "<!-- study:end -->"


def readme_block(report: dict, results_dir: Path) -> str:
    """What the README shows of the study: its state and the conclusion lines, all read off the report."""
    cpu = report["cpu"]
    lines = [
        README_START,
        "",
        f"From `{results_dir}/report.md` (`padrec study report`): {report['groups']} group(s) benched so far, "
        f"{cpu['train_s'] / 3600:.1f} h of training and {cpu['bench_s'] / 3600:.1f} h of benching on the "
        "development CPU.",
        "",
        *([f"- {line}" for line in report["conclusion"]] or ["- No comparison has been run yet."]),
        "",
        *([line, ""] if (line := _held_out_line(report)) else []),
        README_END,
    ]
    return "\n".join(lines)


def write_report(results_dir: Path, readme: Path | None = None, **base) -> dict:
    """Write ``report.json``, ``report.md`` and a plot per factor into ``results_dir`` (``base``: as
    :func:`build_report`); with ``readme``, rewrite its block between ``<!-- study:start -->`` and
    ``<!-- study:end -->``."""
    from ..errors import PadrecError
    from ..fileio import atomic_file

    report = build_report(results_dir, **base)
    if readme is not None:
        text = Path(readme).read_text()
        if README_START not in text or README_END not in text:
            raise PadrecError(f"{readme}: no {README_START} ... {README_END} block")
        head, rest = text.split(README_START, 1)
        text = head + readme_block(report, results_dir) + rest.split(README_END, 1)[1]
    with atomic_file(results_dir / "report.json", "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    with atomic_file(results_dir / "report.md", "w") as f:
        f.write(report_markdown(report))
    for factor in FACTORS:
        plot_factor(report, factor, results_dir / f"{factor}.png")
    if readme is not None:
        with atomic_file(readme, "w") as f:
            f.write(text)
    return report


def _differences(a, b, where: str = "") -> list[str]:
    """The paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b), key=str)
            for d in _differences(a.get(k), b.get(k), f"{where}/{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}/{i}")
        ]
    return [] if a == b else [where or "/"]


def check_report(results_dir: Path, **base) -> list[str]:
    """Recompute the report from the per-group results and compare it with the published ``report.json`` and
    ``report.md`` (writing nothing): the paths that differ, empty when the published report is what the files
    give. ``base`` as :func:`build_report`, by default the published report's own."""
    published = {}
    for name in ("report.json", "report.md"):
        path = results_dir / name
        published[name] = path.read_text() if path.is_file() else None
    if published["report.json"] is None:
        return ["report.json (not published)"]
    old = json.loads(published["report.json"])
    base = base or {f"base_{k}": v for k, v in old.get("base", {}).items()}
    report = build_report(results_dir, **base)
    diffs = [f"report.json{d}" for d in _differences(old, report)]
    if published["report.md"] != report_markdown(report):
        diffs.append("report.md")
    return diffs
