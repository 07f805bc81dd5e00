"""Did the seeds run since a published study report fall inside the intervals it gave? (the study issue's check)

    python scripts/new_seed_check.py <(git show REV:results/study/report.json) results/study/report.json

For every cell of the current report and every seed that the published report's same cell did not have, the
seed's own figure (the current report's leave-one-seed-out record of it) is set against the two intervals the
published report gave that cell: the 95% interval of its mean and the interval for one new seed's figure.
Figures: each variant's speedup over ``ar`` and ratio to the no-position draft, chain and tree. A group that
several factors show is counted once. Prints every comparison and a tally; ``--json FILE`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cells(report: dict) -> dict:
    """``(factor, cell as JSON) -> cell`` for every cell of ``report``."""
    return {
        (factor, json.dumps(cell["cell"])): cell
        for factor, cells in report["factors"].items()
        for cell in cells
    }


def _inside(value: float, interval: dict | None) -> bool | None:
    return None if interval is None else interval["low"] <= value <= interval["high"]


def compare(published: dict, current: dict) -> list[dict]:
    """One record per new seed's figure: its value, both published intervals and whether it falls inside."""
    before, seen, out = _cells(published), set(), []
    for key, cell in _cells(current).items():
        old = before.get(key)
        if old is None:
            continue
        for record in cell.get("held_out", []):
            if record["seed"] in old["seeds"]:
                continue
            figure = (record["group"], record["variant"], record["kind"], record["metric"])
            if figure in seen:
                continue
            seen.add(figure)
            mean = old["variants"].get(record["variant"], {}).get(record["kind"], {}).get(record["metric"])
            new_seed = (old.get("new_seed") or {}).get(record["variant"], {}).get(record["kind"], {})
            new_seed = new_seed.get(record["metric"])
            out.append({
                "factor": key[0], "cell": cell["cell"], "published_seeds": old["seeds"],
                "group": record["group"], "seed": record["seed"], "variant": record["variant"],
                "kind": record["kind"], "metric": record["metric"], "value": record["value"],
                "mean_interval": mean, "inside_mean_interval": _inside(record["value"], mean),
                "new_seed_interval": new_seed, "inside_new_seed_interval": _inside(record["value"], new_seed),
            })  # fmt: skip
    return out


def _interval(x: dict | None) -> str:
    return "—" if x is None else f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("published", help="the study report.json published before the new seeds ran")
    parser.add_argument("current", help="the report.json that has them")
    parser.add_argument("--json", dest="json_out", help="also write the comparisons to this file")
    args = parser.parse_args(argv)
    try:
        published, current = (json.loads(Path(p).read_text()) for p in (args.published, args.current))
    except (OSError, ValueError) as err:
        print(f"new_seed_check: {err}", file=sys.stderr)
        return 2
    records = compare(published, current)
    if not records:
        print("no seed of the current report is new to the published one's cells")
        return 0
    for r in records:
        print(
            f"{r['group']} {r['variant']} {r['kind']} {r['metric']}: {r['value']:.3f}; published "
            f"(seeds {','.join(map(str, r['published_seeds']))}) mean {_interval(r['mean_interval'])} "
            f"{'in' if r['inside_mean_interval'] else 'OUT'}, new seed {_interval(r['new_seed_interval'])} "
            f"{'in' if r['inside_new_seed_interval'] else 'OUT'}"
        )
    for kind in ("mean", "new_seed"):
        judged = [r[f"inside_{kind}_interval"] for r in records if r[f"inside_{kind}_interval"] is not None]
        print(f"inside the published {kind.replace('_', '-')} interval: {sum(judged)} of {len(judged)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
