"""Compare recommend runs made with and without drafts (``make reference-drafts``) and print the evidence table.

    python scripts/draft_evidence.py runs/ref/Instruments

Reads ``rec-ar.jsonl`` / ``stats-ar.json`` and every ``rec-<name>.jsonl`` / ``stats-<name>.json`` beside them.
Exits non-zero, naming the first differing request, if any draft changed a single output token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(folder: str) -> int:
    root = Path(folder)
    ar = load_lines(root / "rec-ar.jsonl")
    ar_stats = json.loads((root / "stats-ar.json").read_text())
    forward_ms = ar_stats["target_forward_ms_mean"]
    print(f"AR: {ar_stats['users']} users, target forward {forward_ms:.2f} ms (mean, from stats-ar.json)")
    print(f"hardware: {ar_stats['hardware']['cpu']}, torch threads {ar_stats['hardware']['torch_threads']}\n")
    print("| draft | item pos | step pos | identical | tau | accepted/round | alpha by step | alpha by slot "
          "| draft ms/step | draft step / target forward |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    status = 0
    for stats_path in sorted(root.glob("stats-*.json")):
        name = stats_path.stem.removeprefix("stats-")
        if name == "ar":
            continue
        stats = json.loads(stats_path.read_text())
        runs = load_lines(root / f"rec-{name}.jsonl")
        same = [
            a["output_ids"] == r["output_ids"] and a["user"] == r["user"]
            for a, r in zip(ar, runs, strict=True)
        ]
        if not all(same):
            first = runs[same.index(False)]["user"]
            print(f"{name}: output differs from AR for user {first}", file=sys.stderr)
            status = 1
        steps = ", ".join(f"{a:.3f}" for a in stats["alpha_by_step"])
        slots = ", ".join(f"{k} {v:.3f}" for k, v in stats["alpha_by_slot"].items())
        print(
            f"| {name} | {stats['use_item_position']} | {stats['use_step_position']} | {sum(same) / len(same):.3f} "
            f"| {stats['tau']:.3f} | {stats['accepted_per_round_mean']:.3f} | {steps} | {slots} "
            f"| {stats['draft_ms_per_step']:.3f} | {stats['draft_ms_per_step'] / forward_ms:.1%} |"
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
