"""Whole-split jobs (``recommend --all``): the same lists as batch-1 decoding, in user order; a killed job resumes
to the same bytes; two processes under ``accelerate launch`` write what one does; mixed settings are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import assert_clean_error, padrec

from modeling_padrec.data import load_dataset
from modeling_padrec.target import weights_digest

pytestmark = pytest.mark.slow

ACCELERATE = Path(sys.executable).with_name("accelerate")


def job(tiny_target, synthetic_dir, draft, out, *extra):
    return padrec("recommend", "--target", tiny_target, "--data", synthetic_dir, "--draft", draft, "--all",
                  "--out", out, *extra)  # fmt: skip


def test_job_lines_equal_batch_one_lists_in_user_order(tiny_target, synthetic_dir, trained_draft, tmp_path):
    out = tmp_path / "lists.jsonl"
    proc = job(tiny_target, synthetic_dir, trained_draft, out, "--users", 25, "--batch-size", 4)
    assert proc.returncode == 0, proc.stderr
    assert "25 users" in proc.stderr and "users/s" in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    alone = padrec("recommend", "--target", tiny_target, "--data", synthetic_dir, "--draft", trained_draft,
                   "--users", 25, "--json")  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    rows = [json.loads(line) for line in alone.stdout.splitlines()]
    assert (
        [r["user"] for r in lines]
        == [r["user"] for r in rows]
        == load_dataset(synthetic_dir).eval_users("test")[:25]
    )
    assert [r["output_ids"] for r in lines] == [r["output_ids"] for r in rows]
    assert [r["items"] for r in lines] == [r["items"] for r in rows]
    assert [r["target_forwards"] for r in lines] == [r["target_forwards"] for r in rows]
    record = json.loads(out.with_name("lists.jsonl.job.json").read_text())
    assert record["users"] == 25 and record["split"] == "test" and record["draft"] == str(trained_draft)


def test_killed_job_resumes_to_the_same_bytes(tiny_target, synthetic_dir, trained_draft, tmp_path):
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    args = ("--batch-size", 3)
    assert job(tiny_target, synthetic_dir, trained_draft, whole, *args).returncode == 0
    total = len(whole.read_text().splitlines())
    assert total > 100
    from test_cli import PADREC

    cmd = [*PADREC, "recommend", "--target", str(tiny_target), "--data", str(synthetic_dir), "--draft",
           str(trained_draft), "--all", "--out", str(cut), *map(str, args)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not cut.exists() or cut.read_text().count("\n") < 10):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = cut.read_text().count("\n")
    assert 10 <= written < total, "the job was not killed midway"
    with open(cut, "a") as f:  # a line cut in the middle of its write
        f.write('{"user": "x", "items": [1, ')
    resumed = job(tiny_target, synthetic_dir, trained_draft, cut, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({written} already in" in resumed.stderr
    assert cut.read_bytes() == whole.read_bytes()
    again = job(tiny_target, synthetic_dir, trained_draft, cut, *args)  # a finished job decodes nothing
    assert again.returncode == 0 and f"({total} already in" in again.stderr
    assert cut.read_bytes() == whole.read_bytes()


def test_job_refuses_mixed_settings_and_foreign_files(tiny_target, synthetic_dir, trained_draft, tmp_path):
    out = tmp_path / "lists.jsonl"
    assert job(tiny_target, synthetic_dir, trained_draft, out, "--users", 4).returncode == 0
    before = out.read_bytes()
    assert_clean_error(
        job(tiny_target, synthetic_dir, trained_draft, out, "--users", 4, "--depth", 2), "depth", out
    )
    assert_clean_error(job(tiny_target, synthetic_dir, trained_draft, out, "--users", 5), "users", out)
    assert out.read_bytes() == before
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my notes\n")
    assert_clean_error(job(tiny_target, synthetic_dir, trained_draft, foreign, "--users", 4), str(foreign))
    assert foreign.read_text() == "my notes\n"
    assert_clean_error(job(tiny_target, synthetic_dir, trained_draft, tmp_path, "--users", 4), "is a folder")
    base = ("recommend", "--target", tiny_target, "--data", synthetic_dir, "--users", 2)
    assert_clean_error(padrec(*base, "--all"), "--out")
    assert_clean_error(padrec(*base, "--out", tmp_path / "x.jsonl"), "--all")
    assert_clean_error(
        padrec(*base, "--all", "--out", tmp_path / "y.jsonl", "--engine", "generate"), "--engine"
    )
    assert_clean_error(padrec(*base, "--all", "--out", tmp_path / "z.jsonl", "--draft", trained_draft, "--tree", 3),
                       "--tree")  # fmt: skip


def test_evaluate_reads_a_finished_job(tiny_target, synthetic_dir, trained_draft, tmp_path):
    out = tmp_path / "lists.jsonl"
    assert (
        job(tiny_target, synthetic_dir, trained_draft, out, "--users", 12, "--batch-size", 4).returncode == 0
    )
    read = padrec("evaluate", "--lists", out, "--data", synthetic_dir, "--json")
    assert read.returncode == 0, read.stderr
    decoded = padrec("evaluate", "--target", tiny_target, "--data", synthetic_dir, "--users", 12, "--json")
    assert decoded.returncode == 0, decoded.stderr
    a, b = json.loads(read.stdout), json.loads(decoded.stdout)
    metrics = ("users", "list_len", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "valid_item_rate",
               "complete_list_rate", "distinct_items", "distinct_first_items", "mostpop")  # fmt: skip
    assert {k: a[k] for k in metrics} == {k: b[k] for k in metrics} and a["users"] == 12
    assert a["target"] == str(tiny_target) and a["job"]["draft"] == str(trained_draft)
    # both say which training of the target they evaluated
    assert a["target_weights"] == b["target_weights"] == weights_digest(tiny_target)
    # refused: decoding flags, another split, an unfinished job, a file that is not a job, another dataset
    base = ("evaluate", "--lists", out, "--data", synthetic_dir)
    assert_clean_error(padrec(*base, "--users", 3), "--users", str(out))
    assert_clean_error(padrec(*base, "--target", tiny_target), "--target")
    assert_clean_error(padrec(*base, "--split", "valid"), "split")
    assert_clean_error(padrec("evaluate", "--data", synthetic_dir), "--lists")
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(out.read_bytes()[:-40])
    out.with_name("lists.jsonl.job.json").replace(cut.with_name("cut.jsonl.job.json"))
    assert_clean_error(
        padrec("evaluate", "--lists", cut, "--data", synthetic_dir), "unfinished", "recommend --all"
    )
    assert_clean_error(padrec(*base), "not a `padrec recommend --all` job")
    record = json.loads(cut.with_name("cut.jsonl.job.json").read_text())
    beauty = tmp_path / "other" / "Beauty"  # the same users under another dataset's name: refused
    beauty.parent.mkdir()
    beauty.symlink_to(synthetic_dir)
    assert_clean_error(padrec("evaluate", "--lists", cut, "--data", beauty), "not --data")
    cut.with_name("cut.jsonl.job.json").write_text(json.dumps({"split": "test"}))
    assert_clean_error(
        padrec("evaluate", "--lists", cut, "--data", synthetic_dir),
        "not a `padrec recommend --all` job record",
    )
    cut.with_name("cut.jsonl.job.json").write_text(json.dumps({**record, "users": 10**6}))
    assert_clean_error(padrec("evaluate", "--lists", cut, "--data", synthetic_dir), "not the first")


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed beside python")
def test_two_processes_write_what_one_writes(tiny_target, synthetic_dir, trained_draft, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ("--users", 40, "--batch-size", 4)
    assert job(tiny_target, synthetic_dir, trained_draft, one, *args).returncode == 0
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "-m", "modeling_padrec.cli",
           "recommend", "--target", str(tiny_target), "--data", str(synthetic_dir), "--draft", str(trained_draft),
           "--all", "--out", str(two), *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29731"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with 2 process(es)" in proc.stderr and "this process decoded 20" in proc.stderr
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == [
        "two.jsonl",
        "two.jsonl.job.json",
    ]
