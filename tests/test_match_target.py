"""scripts/match_target.py: a whole-split job with no draft and a bench's ``ar-jf`` run of the same target agree
on every user's target forwards; another target's do not."""

import importlib.util
import json
from pathlib import Path

import pytest
from test_cli import padrec

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "match_target.py"
spec = importlib.util.spec_from_file_location("match_target", SCRIPT)
match_target = importlib.util.module_from_spec(spec)
spec.loader.exec_module(match_target)

pytestmark = pytest.mark.slow


def test_a_job_matches_the_bench_of_its_own_target_only(tmp_path, tiny_target, synthetic_dir, capsys):
    lists = tmp_path / "lists.jsonl"
    proc = padrec("recommend", "--target", tiny_target, "--data", synthetic_dir, "--all", "--users", 6,
                  "--batch-size", 4, "--out", lists)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    group = tmp_path / "group"
    proc = padrec("bench", "--target", tiny_target, "--data", synthetic_dir, "--users", 4, "--warmup", 0,
                  "--only", "ar-jf", "--out", group)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert match_target.main([str(lists), str(group)]) == 0
    assert "group: 4 of 4 shared users' ar-jf target forwards agree" in capsys.readouterr().out
    # another training: one user's count differs
    other = tmp_path / "other"
    other.mkdir()
    rows = [json.loads(line) for line in (group / "requests.jsonl").read_text().splitlines()]
    rows[-1]["target_forwards"] += 1
    (other / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert match_target.main([str(lists), str(group), str(other)]) == 1
    assert "other: 3 of 4 shared users'" in capsys.readouterr().out
    # a file that is not a job's: one line, exit 2
    assert match_target.main([str(group / "requests.jsonl"), str(group)]) == 2
    assert "requests.jsonl:1: not a padrec recommend --all job line" in capsys.readouterr().err
