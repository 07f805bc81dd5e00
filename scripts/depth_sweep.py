"""Summarise ``make depth-sweep``: speedup and tau of every method at every draft depth.

    python scripts/depth_sweep.py runs/ref/Instruments/sweep

reads ``depth-*/report.json`` and prints a Markdown table (also written to ``sweep.md`` beside them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    root = Path(folder)
    reports = sorted(root.glob("depth-*/report.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not reports:
        print(f"{root}: no depth-*/report.json", file=sys.stderr)
        return 2
    rows = ["| depth | method | speedup (p10–p90) | τ | identical |", "|---|---|---|---|---|"]
    hw = None
    for path in reports:
        report = json.loads(path.read_text())
        hw = report["hardware"]
        depth = path.parent.name.split("-")[1]
        for name, m in report["methods"].items():
            if m["kind"] == "ar":
                continue
            rows.append(
                f"| {depth} | {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
                f"| {m['tau']:.2f} | {m['identical']:.3f} |"
            )
    users = json.loads(reports[0].read_text())["config"]["measured_requests"]
    text = "\n".join(rows) + f"\n\n{users} test users per depth; {hw['cpu']}, torch {hw['torch']}, " \
        f"{hw['torch_threads']} thread(s), device {hw['device']}.\n"  # fmt: skip
    (root / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
