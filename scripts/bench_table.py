"""Publish the reference benchmark: copy each dataset's bench report into ``results/`` and rewrite the README's
benchmark table from the copied ``report.json`` files, so no figure in the README is typed by hand.

    python scripts/bench_table.py README.md runs/ref results

For every ``runs/ref/<dataset>/bench/report.json``: ``report.json``, ``report.md`` and the PNG plots go to
``results/<dataset>/`` (staged, then moved into place; files of earlier runs that this one did not redo stay),
with the same bench on the merged-LoRA model
(``bench-merged``, ``make reference-bench MERGE=--merge-lora``) in ``merged-lora/`` and the depth sweeps
(``make depth-sweep``, ``make engine-depth-sweep``) beside them; the block between ``<!-- bench-table:start -->``
and ``<!-- bench-table:end -->`` in README.md gets one table per dataset and the engine issue's goals checked
against the figures. Reports from before the engine (the stock-path ablation) stay in ``results/stock-ablation``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from modeling_padrec.fileio import staged_dir
from modeling_padrec.plots import TREE_PLOT

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
FILES = ("report.json", "report.md", "speedup.png", "alpha_by_step.png", "alpha_by_slot.png", "latency.png")
OPTIONAL = (TREE_PLOT,)  # draft trees with a calibrated shape


def copy_report(src: Path, dest: Path) -> None:
    """A bench folder's report files (the optional ones where the bench wrote them) into ``dest``."""
    dest.mkdir(exist_ok=True)
    for name in FILES + OPTIONAL:
        if name in FILES or (src / name).is_file():
            shutil.copyfile(src / name, dest / name)


def publish(runs: Path, results: Path) -> list[Path]:
    published = []
    for report in sorted(runs.glob("*/bench/report.json")):
        dest = results / report.parent.parent.name
        run = report.parent.parent
        with staged_dir(dest) as tmp:
            if dest.is_dir():  # results of earlier runs this machine did not redo (sweeps, merged LoRA) stay
                shutil.copytree(dest, tmp, dirs_exist_ok=True)
            copy_report(report.parent, tmp)
            # make depth-sweep / engine-depth-sweep / tree-budget-sweep
            for sweep, name in (("sweep", "depth-sweep.md"), ("engine-sweep", "engine-depth-sweep.md"),
                                ("tree-sweep", "tree-budget-sweep.md")):  # fmt: skip
                if (run / sweep / "sweep.md").is_file():
                    shutil.copyfile(run / sweep / "sweep.md", tmp / name)
            if (run / "tree-sweep" / "sweep.png").is_file():
                shutil.copyfile(run / "tree-sweep" / "sweep.png", tmp / "tree-budget-sweep.png")
            if (run / "bench-merged" / "report.json").is_file():  # make reference-bench MERGE=--merge-lora
                copy_report(run / "bench-merged", tmp / "merged-lora")
            card = report.parent.parent / "export" / "draft" / "README.md"
            if card.is_file():  # make reference-export: the draft's model card as rendered
                shutil.copyfile(card, tmp / "model-card.md")
        published.append(dest)
    return published


def goals(methods: dict, dataset: str) -> str:
    """The engine issue's goals on this CPU, each computed from the report (never typed by hand)."""
    jf, pad = methods.get("ar-jf"), methods.get("pad-rec")
    checks = [("every method identical = 1.0", all(m["identical"] == 1.0 for m in methods.values()))]
    if jf is not None:
        floor = 1.8 if dataset == "Instruments" else 1.5
        checks += [
            (f"ar-jf {jf['speedup']:.2f}× ≥ {floor}×", jf["speedup"] >= floor),
            (
                f"ar-jf target forwards per list {jf['target_forwards_mean']:.2f} = choices per list "
                f"{jf['choices_per_list']:.2f}",
                jf["target_forwards_mean"] == jf["choices_per_list"],
            ),
        ]
    if pad is not None:
        checks.append((f"PAD-Rec (engine) {pad['speedup']:.2f}× ≥ 3.5× (aim 4×)", pad["speedup"] >= 3.5))
        if "speedup_vs_generate" in pad:
            vs = pad["speedup_vs_generate"]
            checks.append((f"PAD-Rec engine vs PAD-Rec through generate {vs:.3f}× ≥ 1.35×", vs >= 1.35))
        p = pad["profile_ms_per_request"]
        other = p["other"] / p["total"]
        checks += [
            (f"outside model forwards {other:.1%} of a request ≤ 10%", other <= 0.10),
            (f"one draft step {pad['draft_ms_per_step']:.2f} ms ≤ 0.5 ms", pad["draft_ms_per_step"] <= 0.5),
        ]
    tree = methods.get("tree:pad-rec")
    if tree is not None:  # the tree issue's goals
        checks += [
            (f"PAD-Rec tree τ {tree['tau_vs_chain']:.2f}× the chain's ≥ 1.3×", tree["tau_vs_chain"] >= 1.3),
            (f"PAD-Rec tree wall-clock {tree['speedup_vs_chain']:.2f}× over the chain ≥ 1.2×",
             tree["speedup_vs_chain"] >= 1.2),
        ]  # fmt: skip
        if dataset == "Instruments":
            checks.append((f"PAD-Rec tree {tree['speedup']:.2f}× over ar ≥ 5×", tree["speedup"] >= 5.0))
    line = "; ".join(f"{text} **{'met' if ok else 'not met'}**" for text, ok in checks)
    none = methods.get("no-position")
    if pad is not None and none is not None:
        ds, dt = pad["speedup"] / none["speedup"] - 1, pad["tau"] / none["tau"] - 1
        line += f". PAD-Rec vs the no-position draft (engine, same recipe): speedup {ds:+.1%}, τ {dt:+.1%}"
    return line


def profile(methods: dict) -> str:
    """Where each method's time goes, per request and per speculation round (from the report's profile)."""
    rows = [
        "Where the time goes, ms per request (per round): drafting · target forwards (verification) · the rest "
        "of the decoding loop (stock `generate`'s, or the engine's for methods without `generate:`).",
        "",
        "| method | rounds / request | draft | verify | other | total |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        p, r = m["profile_ms_per_request"], m["profile_ms_per_round"] or {}
        cells = [f"{p[k]:.1f}" + (f" ({r[k]:.2f})" if k in r else "") for k in ("draft", "verify", "other")]
        rows.append(f"| {name} | {m['rounds_mean']:.1f} | " + " | ".join(cells) + f" | {p['total']:.1f} |")
    return "\n".join(rows)


def merged_table(plain: dict, merged: dict, link) -> str:
    """Latency with the LoRA adapter applied on the fly and merged into the base (two runs, each interleaved)."""
    rows = [
        f"With the LoRA weights merged into the base ([report]({link}); a second run, every method on the merged "
        "model; ratios are within each run):",
        "",
        "| method | latency ms median, adapter | speedup, adapter | latency ms median, merged | speedup, merged |",
        "|---|---|---|---|---|",
    ]
    for name, m in plain["methods"].items():
        if name in merged["methods"]:
            g = merged["methods"][name]
            rows.append(f"| {name} | {m['latency_ms_median']:.0f} | {m['speedup']:.2f}× | {g['latency_ms_median']:.0f} "
                        f"| {g['speedup']:.2f}× |")  # fmt: skip
    return "\n".join(rows)


def render(results: Path, readme_dir: Path) -> str:
    blocks = []
    for folder in sorted(p for p in results.iterdir() if (p / "report.json").is_file()):
        report = json.loads((folder / "report.json").read_text())
        if not {"hardware", "config", "methods"} <= report.keys():  # not a bench report (the study's, say)
            continue
        hw, cfg = report["hardware"], report["config"]
        rel = folder.relative_to(readme_dir) if folder.is_relative_to(readme_dir) else folder
        lines = [
            f"**{folder.name}**: {cfg['measured_requests']} test users, list length {cfg['list_len']}, "
            f"{hw['cpu']}, torch {hw['torch']} ({hw['torch_threads']} thread"
            f"{'s' if hw['torch_threads'] != 1 else ''}), device {hw['device']}. "
            f"[report]({rel}/report.md) · [speedup]({rel}/speedup.png) · [α by step]({rel}/alpha_by_step.png) · "
            f"[α by slot]({rel}/alpha_by_slot.png) · [latency]({rel}/latency.png)"
            + (f" · [tree confidence]({rel}/{TREE_PLOT})" if (folder / TREE_PLOT).is_file() else "")
            + (f" · [model card]({rel}/model-card.md)" if (folder / "model-card.md").is_file() else ""),
            "",
            "| method | speedup (p10–p90) | latency ms median | τ | target fwd / list | perfect-draft fwd "
            "| α by step | identical | R@10 | N@10 | draft ms / step |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in report["methods"].items():
            alphas = " ".join(f"{a:.2f}" for a in m["alpha_by_step"]) or "–"
            draft = "–" if m["draft_ms_per_step"] is None else f"{m['draft_ms_per_step']:.2f}"
            bound = m.get("perfect_draft_forwards_mean")
            lines.append(
                f"| {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
                f"| {m['latency_ms_median']:.0f} | {m['tau']:.2f} | {m['target_forwards_mean']:.1f} "
                f"| {'–' if bound is None else f'{bound:.1f}'} | {alphas} | {m['identical']:.3f} "
                f"| {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {draft} |"
            )
        first = next(iter(report["methods"].values()))
        merged = (
            " Every method decodes with the LoRA weights merged into the base."
            if cfg.get("merge_lora")
            else ""
        )
        lines += ["", f"Choices per list {first['choices_per_list']:.1f}; forced tokens {100 * first['forced_share']:.1f}% "
                  f"of a list. Names without `generate:` (other than `ar`) run on padrec's engine.{merged}"]  # fmt: skip
        lines += ["", f"Goals: {goals(report['methods'], folder.name)}.", "", profile(report["methods"])]
        if (folder / "merged-lora" / "report.json").is_file():
            lines += ["", merged_table(report, json.loads((folder / "merged-lora" / "report.json").read_text()),
                                       f"{rel}/merged-lora/report.md")]  # fmt: skip
        for name, what, command in (
            (
                "tree-budget-sweep.md",
                f"Draft-tree budget sweep ([plot]({rel}/tree-budget-sweep.png))",
                "tree-budget-sweep",
            ),
            ("engine-depth-sweep.md", "Engine depth sweep, choices drafted per round", "engine-depth-sweep"),
            ("depth-sweep.md", "Stock-path draft length sweep, tokens per round", "depth-sweep"),
        ):
            if (folder / name).is_file():
                lines += [
                    "",
                    f"{what} (`make {command} DATA={folder.name}`):",
                    "",
                    (folder / name).read_text().strip(),
                ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "(no benchmark reports yet: run `make reference-run`)"


def main(readme: str, runs: str, results: str) -> int:
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        print(f"{path}: no {START} ... {END} block", file=sys.stderr)
        return 2
    publish(Path(runs), Path(results))
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    table = render(Path(results).absolute(), path.absolute().parent)
    path.write_text(f"{before}{START}\n{table}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
