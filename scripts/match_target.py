"""Is this training of a target the one a study group benched? (for groups that did not record its weights)

    python scripts/match_target.py runs/deep/Instruments/lists-test.jsonl \
        results/study/groups/Instruments-deep-seed*-steps150-depth12-pad-rec+no-position

A whole-split job with no draft (``padrec recommend --all``, padrec's engine) decodes every user greedily with
jump-forward, exactly as a group's ``ar-jf`` method does, and writes each user's target forwards. The study takes
two runs whose forward counts agree on every user they share for runs of one training of the target
(``modeling_padrec/study/instances.py``); this script applies that test to a job file and groups, and prints, per
group, the users compared and how many counts agree. Exit status 0 when every group agrees on every shared user,
1 otherwise, 2 for a file it cannot read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modeling_padrec.study.instances import FINGERPRINT_METHOD


def _job_forwards(path: Path) -> dict[str, int]:
    out = {}
    with path.open() as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            if not {"user", "items", "target_forwards"} <= set(row) or "method" in row:
                raise ValueError(f"{path}:{n}: not a padrec recommend --all job line")
            if str(row["user"]) in out:
                raise ValueError(f"{path}:{n}: user {row['user']} twice")
            out[str(row["user"])] = int(row["target_forwards"])
    return out


def _group_forwards(folder: Path) -> dict[str, int]:
    out = {}
    with (folder / "requests.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if row["method"] == FINGERPRINT_METHOD:
                out[str(row["user"])] = int(row["target_forwards"])
    if not out:
        raise ValueError(f"{folder}: no {FINGERPRINT_METHOD} requests (a sampled group has no fingerprint)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lists", type=Path, help="a whole-split job's JSONL (padrec recommend --all, no draft)")
    p.add_argument("groups", type=Path, nargs="+", help="study group folders (results/study/groups/...)")
    args = p.parse_args(argv)
    try:
        job = _job_forwards(args.lists)
        groups = {g: _group_forwards(g) for g in args.groups}
    except (OSError, ValueError, KeyError) as e:
        print(f"match_target: {e}", file=sys.stderr)
        return 2
    every = True
    for folder, forwards in groups.items():
        shared = sorted(set(forwards) & set(job), key=lambda u: (len(u), u))
        agree = sum(forwards[u] == job[u] for u in shared)
        every &= bool(shared) and agree == len(shared)
        print(
            f"{folder.name}: {agree} of {len(shared)} shared users' {FINGERPRINT_METHOD} target forwards agree"
        )
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
