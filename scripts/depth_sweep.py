"""Summarise a sweep over the draft's depth: ``make engine-depth-sweep`` (per-request benches: speedup and tau of
every method at every depth) or ``make throughput-depth-sweep`` (throughput benches: users per second of every
method at every batch size and depth, and the ratio to batched ``generate`` of the same run).

    python scripts/depth_sweep.py runs/ref/Instruments/engine-sweep
    python scripts/depth_sweep.py runs/ref/Instruments/throughput-depth

reads ``depth-*/report.json`` and prints a Markdown table (also written to ``sweep.md`` beside them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _bench_rows(depth: str, report: dict) -> list[str]:
    return [
        f"| {depth} | {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
        f"| {m['tau']:.2f} | {m['identical']:.3f} |"
        for name, m in report["methods"].items()
        if m["kind"] != "ar"
    ]


def _throughput_rows(depth: str, report: dict) -> list[str]:
    sizes = [str(b) for b in report["config"]["batch_sizes"]]
    return [
        f"| {depth} | {size} | {name} | {m[size]['users_per_s']:.2f} | {m[size]['x_generate']:.2f}× "
        f"| {m[size]['target_forwards_per_user']:.1f} | {m[size]['identical']:.3f} |"
        for size in sizes
        for name, m in report["methods"].items()
        if size in m and not name.startswith("perfect:")
    ]


def main(folder: str) -> int:
    root = Path(folder)
    reports = sorted(root.glob("depth-*/report.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not reports:
        print(f"{root}: no depth-*/report.json", file=sys.stderr)
        return 2
    loaded = [(path.parent.name.split("-")[1], json.loads(path.read_text())) for path in reports]
    throughput = "speculation_pays" in loaded[0][1]
    if throughput:
        rows = ["| depth | batch | method | users/s | × generate | target fwd / user | identical |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
    else:
        rows = ["| depth | method | speedup (p10–p90) | τ | identical |", "|---|---|---|---|---|"]
    for depth, report in loaded:
        rows += (_throughput_rows if throughput else _bench_rows)(depth, report)
    hw = loaded[-1][1]["hardware"]
    users = loaded[0][1]["config"]["measured_requests"]
    text = "\n".join(rows) + f"\n\n{users} test users per depth; {hw['cpu']}, torch {hw['torch']}, " \
        f"{hw['torch_threads']} thread(s), device {hw['device']}.\n"  # fmt: skip
    (root / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
