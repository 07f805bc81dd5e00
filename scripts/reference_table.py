"""Render the README's reference-target table from evaluation reports, so no figure is typed by hand.

    python scripts/reference_table.py README.md runs/ref results

reads ``runs/ref/<dataset>/eval-all.json`` (all test users), ``eval-500.json`` (first 500, for the collapse
check) and ``target/train_log.jsonl`` (training wall time), and rewrites the block between
``<!-- reference-table:start -->`` and ``<!-- reference-table:end -->`` in README.md; rows of datasets with no
reports on this machine are kept as published. With a results folder, it also publishes each dataset's reports
there (``results/<dataset>/target/``: the two evaluations and the target's training record), so every figure of
the table can be checked from the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modeling_padrec.training import read_log, training_seconds

START, END = "<!-- reference-table:start -->", "<!-- reference-table:end -->"


def train_minutes(log: Path) -> float:
    return (training_seconds(read_log(log)) or 0.0) / 60


def published_rows(block: str) -> dict[str, str]:
    """Rows already in the README's table, by dataset (kept for datasets this machine has no reports for)."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("dataset",) and not cells[0].startswith("---"):
            if len(cells) == 12:  # a row from before the "fit on" column: those targets learned from train
                cells.append("train")
            rows[cells[0]] = "| " + " | ".join(cells) + " |"
    return rows


def render(runs: Path, published: dict[str, str] | None = None) -> str:
    rows, hardware = dict(published or {}), None
    for folder in sorted(p for p in runs.iterdir() if (p / "eval-all.json").is_file()):
        full = json.loads((folder / "eval-all.json").read_text())
        first = json.loads((folder / "eval-500.json").read_text())
        meta = json.loads((folder / "target" / "padrec_target.json").read_text())
        hardware = full.get("hardware", hardware)
        steps = f"{meta['train']['pretrain_steps']} + {meta['train']['lora_steps']}"
        if meta["train"].get("period_steps"):
            steps += f" + {meta['train']['period_steps']} period"
        minutes = train_minutes(folder / "target" / "train_log.jsonl")
        mp = full["mostpop"]
        rows[folder.name] = (
            f"| {folder.name} | {full['users']} | {full['recall@5']:.4f} | {full['recall@10']:.4f} "
            f"| {full['ndcg@5']:.4f} | {full['ndcg@10']:.4f} | {mp['recall@10']:.4f} | {mp['ndcg@10']:.4f} "
            f"| {full['valid_item_rate']:.3f} | {first['distinct_first_items']} / {first['users']} "
            f"| {steps} | {minutes:.0f} | {meta['train'].get('fit_splits', 'train')} |"
        )
    head = (
        "| dataset | test users | R@5 | R@10 | N@5 | N@10 | MostPop R@10 | MostPop N@10 | valid_item_rate "
        "| distinct first items | steps (pretrain + LoRA [+ period]) | train min | fit on |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    hw = ""
    if hardware:
        hw = (
            f"\n\nMeasured on {hardware['cpu']} ({hardware['cpu_count']} cores, torch {hardware['torch']}, "
            f"transformers {hardware['transformers']}, device {hardware['device']})."
        )
    return head + "\n" + "\n".join(rows[k] for k in sorted(rows)) + hw


def publish(runs: Path, results: Path) -> None:
    """Copy each dataset's evaluation reports and training record into ``results/<dataset>/target/``."""
    for folder in sorted(p for p in runs.iterdir() if (p / "eval-all.json").is_file()):
        out = results / folder.name / "target"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("eval-all.json", "eval-500.json"):
            (out / name).write_text((folder / name).read_text())
        meta = json.loads((folder / "target" / "padrec_target.json").read_text())
        record = {
            "train": meta["train"],
            "catalog": meta.get("catalog"),
            "train_minutes": round(train_minutes(folder / "target" / "train_log.jsonl"), 1),
        }
        (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")


def main(readme: str, runs: str, results: str | None = None) -> int:
    path = Path(readme)
    text = path.read_text()
    if START not in text or END not in text:
        print(f"{path}: no {START} ... {END} block", file=sys.stderr)
        return 2
    before, rest = text.split(START, 1)
    block, after = rest.split(END, 1)
    path.write_text(f"{before}{START}\n{render(Path(runs), published_rows(block))}\n{END}{after}")
    if results:
        publish(Path(runs), Path(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
