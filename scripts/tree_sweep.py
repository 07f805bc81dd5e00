"""Summarise ``make tree-budget-sweep``: tau and speedup of the chain and of a tree at every node budget.

    python scripts/tree_sweep.py runs/ref/Instruments/tree-sweep

reads ``budget-*/report.json`` and writes ``sweep.md`` (a Markdown table, also printed) and ``sweep.png`` (tau
and speedup over ``ar`` against the budget, the chain as a flat line) beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    from matplotlib.figure import Figure

    root = Path(folder)
    reports = sorted(root.glob("budget-*/report.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not reports:
        print(f"{root}: no budget-*/report.json", file=sys.stderr)
        return 2
    rows = [
        "| budget | method | speedup over ar (p10–p90) | vs chain | τ | τ vs chain | nodes / round | identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    curves: dict[str, dict[str, list]] = {}
    for path in reports:
        report = json.loads(path.read_text())
        budget = int(path.parent.name.split("-")[1])
        for name, m in report["methods"].items():
            if m["kind"] == "ar":
                continue
            tree = name.startswith("tree:")
            rows.append(
                f"| {budget} | {name} | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–{m['speedup_p90']:.2f}) "
                f"| {m['speedup_vs_chain']:.2f}× | {m['tau']:.2f} | {m['tau_vs_chain']:.2f} "
                f"| {m['drafted_per_round']:.1f} | {m['identical']:.3f} |"
                if tree
                else f"| {budget} | {name} (chain) | {m['speedup']:.2f}× ({m['speedup_p10']:.2f}–"
                f"{m['speedup_p90']:.2f}) | – | {m['tau']:.2f} | – | {m['drafted_per_round']:.1f} "
                f"| {m['identical']:.3f} |"
            )
            c = curves.setdefault(name, {"budget": [], "speedup": [], "tau": []})
            c["budget"].append(budget)
            c["speedup"].append(m["speedup"])
            c["tau"].append(m["tau"])
    first = json.loads(reports[0].read_text())
    hw, users = first["hardware"], first["config"]["measured_requests"]
    tree_cfg = first["config"]["tree"]
    note = (
        f"\n\n{users} test users per budget; tree width {tree_cfg['width']}, at most {tree_cfg['depth']} choices on a "
        f"path; the chain is rerun in every bench (same users, interleaved). {hw['cpu']}, torch {hw['torch']}, "
        f"{hw['torch_threads']} thread(s), device {hw['device']}.\n"
    )
    text = "\n".join(rows) + note
    (root / "sweep.md").write_text(text)
    fig = Figure(figsize=(9, 3.8))
    for i, key in enumerate(("tau", "speedup")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, c in curves.items():
            ax.plot(c["budget"], c[key], marker="o" if name.startswith("tree:") else None,
                    ls="-" if name.startswith("tree:") else "--", label=name if name.startswith("tree:") else f"{name} (chain)")  # fmt: skip
        ax.set_xlabel("tree budget (choice nodes per round)")
        ax.set_ylabel("τ (tokens per target forward)" if key == "tau" else "speedup over ar (median)")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Draft tree budget sweep, {users} users, {hw['cpu']} ({hw['torch_threads']} thread(s))", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(root / "sweep.png", dpi=110)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
