"""The study's report, recomputed from the committed per-group results alone.

For every factor and cell (the seeds of one setting pooled): each variant's speedup over ``ar`` (stock
``generate`` greedy) through the engine's chain and tree, its latency ratio against the no-position draft on the
same requests (> 1: the variant is faster), tokens per target forward (τ), and the draft's acceptance by step
and by item slot; every figure with a 95% interval from :mod:`.stats`. The target factor's cells also carry the
target's cost (``ar`` milliseconds per token) and its quality against MostPop, where its evaluation is published.
Writes ``report.md``, ``report.json`` and one plot per factor; the conclusion lines are read off the intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .plan import BASE_DEPTH, BASE_STEPS, FACTORS, UNGATED, VARIANTS, Group, member_of
from .stats import Estimate, geometric_mean, ratio_of_sums

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


def target_quality(results_dir: Path, dataset: str, target: str) -> dict | None:
    """A study target's evaluation (``padrec evaluate --json``) where it is published: in
    ``results/study/targets/<dataset>-<target>/`` (``make deep-target``), or for the reference target in
    ``results/<dataset>/target/`` (``make reference-table``); all test users (``eval-all.json``), else the first
    500 (``eval-500.json``)."""
    folders = [results_dir / "targets" / f"{dataset}-{target}"]
    if target == "ref":
        folders.append(results_dir.parent / dataset / "target")
    for path in (folder / name for name in ("eval-all.json", "eval-500.json") for folder in folders):
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
    for factor in FACTORS:
        cells = []
        for key, members in _cells(results, factor, (base_steps, base_depth)).items():
            variants = [v for v in (*VARIANTS, UNGATED) if all(v in m.group.variants for m in members)]
            cell = {"cell": list(key), "seeds": sorted(m.group.seed for m in members), "variants": {}}
            for v in variants:
                cell["variants"][v] = {kind: _json(variant_figures(members, v, kind)) for kind in KINDS}
            # the draft's cost per step seed by seed: seeds may have run under different machine load, which
            # widens the pooled interval, while the variants of one seed were benched side by side
            cell["draft_ms_per_step_by_seed"] = {
                v: {str(m.group.seed): ratio_of_sums(_rows([m], v, _step_cost)).to_json() for m in members}
                for v in variants
            }
            if factor == "target":  # how costly the target is, and whether it is any good
                ar_cost = _rows(members, "ar", lambda rec: (rec["latency_ms"], rec["tokens"]))
                cell["ar_ms_per_token"] = ratio_of_sums(ar_cost).to_json()
                cell["quality"] = target_quality(results_dir, *key[:2])
            cells.append(cell)
        report["factors"][factor] = cells
    report["conclusion"] = conclusion(report)
    return report


def _json(figures: dict) -> dict:
    out = {}
    for k, v in figures.items():
        if isinstance(v, list):
            out[k] = [None if e is None else e.to_json() for e in v]
        else:
            out[k] = v.to_json()
    return out


def _cpu(results: list[GroupResult]) -> dict:
    train = sum((d.get("train_seconds") or 0) for r in results for d in r.summary["drafts"].values())
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
    lines += ["", "## What the intervals say", ""]
    lines += [f"- {line}" for line in report["conclusion"]] or ["- Nothing yet: no comparison has been run."]
    lines += ["", "Regenerate: `padrec study report`. Rerun one group: see `padrec study run --help`.", ""]
    return "\n".join(lines)


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
    fig, ax = _figure(figsize=(max(4, 0.9 * len(points)), 3.5))
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
