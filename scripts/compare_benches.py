"""Two `padrec bench` reports of the same requests side by side: a code change measured before and after.

    python scripts/compare_benches.py BEFORE/report.json AFTER/report.json --out results/X/comparison.md \
        [--label-before main@3d22f98 --label-after draft-cost]

Each report's figures are its own (speedup over its own `ar`, interleaved within that run); the two runs ran at
different times, so the table also shows `ar`'s median latency in each, the drift of the machine between them.
Refuses reports of other requests (users, split, list length, seed, merged LoRA), reports whose `ar` lists differ
(another target or data: the paths a report records are relative to where it ran, so the lists are compared),
and any method that is not lossless.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAME = ("split", "users", "list_len", "warmup", "seed", "merge_lora")
ROWS = (  # (label, method key, format)
    ("speedup over `ar` (median)", "speedup", "{:.2f}×"),
    ("speedup p10–p90", None, None),
    ("latency ms, median", "latency_ms_median", "{:.1f}"),
    ("τ", "tau", "{:.3f}"),
    ("target forwards / request", "target_forwards_mean", "{:.2f}"),
    ("draft ms / step", "draft_ms_per_step", "{:.3f}"),
    ("draft steps / request", "draft_steps_mean", "{:.1f}"),
)


def load(path: str) -> dict:
    try:
        report = json.loads(Path(path).read_text())
        report["methods"], report["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"compare_benches: error: {path}: not a padrec bench report ({e})")
    return report


def ar_lists(report_path: str) -> dict[str, list[int]] | None:
    """Each request's `ar` list from the report's ``requests.jsonl`` (None where the folder has none: a published
    copy keeps the report only)."""
    path = Path(report_path).with_name("requests.jsonl")
    if not path.exists():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["user"]: r["output_ids"] for r in rows if r["method"] == "ar"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"compare_benches: error: {path}: not a padrec bench request log ({e})")


def profile(method: dict, part: str, per: str) -> str:
    value = (method.get(f"profile_ms_per_{per}") or {}).get(part)
    return "–" if value is None else f"{value:.2f}"


def cell(method: dict, key: str | None, fmt: str | None) -> str:
    if key is None:  # the p10–p90 row
        return f"{method['speedup_p10']:.2f}–{method['speedup_p90']:.2f}"
    value = method.get(key)
    return "–" if value is None else fmt.format(value)


def compare(before: dict, after: dict, labels: tuple[str, str]) -> str:
    for key in SAME:
        if before["config"].get(key) != after["config"].get(key):
            sys.exit(
                f"compare_benches: error: the reports differ in {key} "
                f"({before['config'].get(key)!r} vs {after['config'].get(key)!r}): not the same requests"
            )
    for report in (before, after):
        for name, m in report["methods"].items():
            if m.get("identical") != 1.0:
                sys.exit(
                    f"compare_benches: error: {name} is not lossless in one report (identical {m.get('identical')})"
                )
    names = [n for n in after["methods"] if n in before["methods"]]
    hw = after["hardware"]
    lines = [
        f"{after['config']['users']} requests of `{after['config']['data']}` ({after['config']['split']}), target "
        f"`{after['config']['target']}`; {hw['cpu']}, torch {hw['torch']} ({hw['torch_threads']} threads), "
        f"transformers {hw['transformers']}. Each run's speedups are over its own `ar`, interleaved request by request; "
        f"`ar`'s median latency: {before['methods']['ar']['latency_ms_median']:.1f} ms ({labels[0]}), "
        f"{after['methods']['ar']['latency_ms_median']:.1f} ms ({labels[1]}). Every list identical to `ar`'s in both.",
        "",
        "| method | figure | " + " | ".join(labels) + " |",
        "|---|---|---|---|",
    ]
    for name in names:
        if name == "ar":
            continue
        b, a = before["methods"][name], after["methods"][name]
        for label, key, fmt in ROWS:
            lines.append(f"| {name} | {label} | {cell(b, key, fmt)} | {cell(a, key, fmt)} |")
        for part in ("draft", "verify"):
            lines.append(
                f"| {name} | {part} ms / round | {profile(b, part, 'round')} | {profile(a, part, 'round')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--label-before", default="before")
    parser.add_argument("--label-after", default="after")
    parser.add_argument("--out", help="write the table here (markdown); default: print it")
    args = parser.parse_args(argv)
    before, after = ar_lists(args.before), ar_lists(args.after)
    if before is not None and after is not None and before != after:
        sys.exit(
            "compare_benches: error: the two runs' ar lists differ: not the same target, data or requests"
        )
    text = compare(load(args.before), load(args.after), (args.label_before, args.label_after))
    if before is None or after is None:
        text = "Per-request lists not compared (no requests.jsonl beside a report).\n\n" + text
    else:
        text = (
            f"The two runs' `ar` lists are the same, request by request ({len(after)} requests).\n\n" + text
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
