"""Publish the throughput benchmark and the whole-split job timings: copy them into ``results/`` and rewrite the
README's block between ``<!-- throughput-table:start -->`` and ``<!-- throughput-table:end -->`` from the copies,
so no figure in that block is typed by hand.

    python scripts/throughput_table.py README.md runs/ref results

For every ``runs/ref/<dataset>/throughput[-merged]/report.json`` (``make reference-throughput [MERGE=--merge-lora]``):
``report.json``, ``report.md`` and ``throughput.png`` go to ``results/<dataset>/throughput[-merged]/``; the job
logs of ``make reference-job`` (``job-1proc.log``, ``job-2proc.log``) go to ``results/<dataset>/job/``. The block
gets each report's table, the batch-16 goal of the batching issue checked against it, and the jobs' summary lines.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from modeling_padrec.throughput import BOUND, PLOT, throughput_markdown

START, END = "<!-- throughput-table:start -->", "<!-- throughput-table:end -->"
GOAL_BATCH, GOAL = "16", 2.0


def publish(runs: Path, results: Path) -> list[Path]:
    published = []
    for report in sorted(runs.glob("*/throughput*/report.json")):
        dest = results / report.parent.parent.name / report.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md", PLOT):
            shutil.copyfile(report.parent / name, dest / name)
        published.append(dest / "report.json")
    for log in sorted(runs.glob("*/job-*.log")):
        dest = results / log.parent.name / "job"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest / log.name)
    return published


def goal_line(report: dict) -> str:
    methods = report["methods"]
    if GOAL_BATCH not in methods["generate"]:
        return f"Batch size {GOAL_BATCH} was not measured."
    engine = {
        n: m[GOAL_BATCH]["x_generate"]
        for n, m in methods.items()
        if n != "generate" and not n.startswith(BOUND) and GOAL_BATCH in m
    }
    best = max(engine, key=engine.get)
    verdict = "met" if engine[best] >= GOAL else "**not met**"
    bounds = [f"`{n}` {m[GOAL_BATCH]['x_generate']:.2f}×" for n, m in methods.items() if n.startswith(BOUND)]
    return (
        f"Goal (batching issue): at batch size {GOAL_BATCH} the best engine method serves ≥ {GOAL}× the users per "
        f"second of batched stock `generate`. Measured: `{best}` {engine[best]:.2f}× — {verdict}."
        + (f" The bounds at that batch size: {', '.join(bounds)}." if bounds else "")
    )


def block(results: Path, readme_dir: Path) -> str:
    lines = [START, ""]
    for report_path in sorted(results.glob("*/throughput*/report.json")):
        report = json.loads(report_path.read_text())
        rel = report_path.parent.relative_to(readme_dir) if report_path.is_absolute() else report_path.parent
        body = throughput_markdown(report).splitlines()[2:]  # the report's own text, without its title
        lines += [f"#### {report_path.parent.parent.name}: `{rel}`", "", *body, goal_line(report), "",
                  f"![throughput]({rel}/{PLOT})", ""]  # fmt: skip
    for log_dir in sorted(results.glob("*/job")):
        lines += [f"Whole-split jobs, {log_dir.parent.name} (`{log_dir}`, the jobs' own summary lines):", ""]
        for log in sorted(log_dir.glob("job-*.log")):
            lines.append(f"- `{log.stem}`: {log.read_text().strip()}")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(readme: str, runs: str, results: str) -> None:
    publish(Path(runs), Path(results))
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} block")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + block(Path(results), path.parent) + tail)


if __name__ == "__main__":
    main(*sys.argv[1:])
