"""The ``padrec`` console script, run as a user would: JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bad_data import BAD_DATASETS, lcrec
from transformers import AutoTokenizer

from modeling_padrec.data import load_dataset
from modeling_padrec.tokenization import EOS_TOKEN, REC_TOKEN, SEP_TOKEN

_SCRIPT = Path(sys.executable).with_name("padrec")
PADREC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "modeling_padrec.cli"]


def padrec(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*PADREC, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, *names) -> str:
    """Exit 2, one stderr line ``padrec: error: ...`` naming ``names``, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("padrec: error: ")
    for name in names:
        assert str(name) in lines[0]
    return lines[0]


def test_data_inspect_json(shared_data):
    proc = padrec("data", "inspect", shared_data / "Instruments", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["users"] == 24772 and summary["items"] == 9922
    assert summary["levels"] == 5 and summary["collisions"] == 23
    assert len(summary["codebook_sizes"]) == 5 and summary["codebook_sizes"][:4] == [256] * 4


def test_data_inspect_text(shared_data):
    proc = padrec("data", "inspect", shared_data / "beauty-timesplit")
    assert proc.returncode == 0, proc.stderr
    assert "beauty (presplit)" in proc.stdout and "19383" in proc.stdout


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_data_gives_one_line_and_exit_2(tmp_path, case):
    path, named = BAD_DATASETS[case](tmp_path)
    assert_clean_error(padrec("data", "inspect", path), named)


def test_train_target_bad_data_fails_before_training(tmp_path):
    path, named = BAD_DATASETS["unknown_item"](tmp_path)
    out = tmp_path / "target"
    assert_clean_error(padrec("train-target", "--data", path, "--out", out, "--base", "qwen2-tiny"), named)
    assert not out.exists() and not out.with_name("target.work").exists()


def test_train_target_too_small_dataset_is_a_clean_error(tmp_path):
    folder = lcrec(tmp_path)  # 2 users, 3 items: fewer examples than one batch of 16
    assert_clean_error(
        padrec("train-target", "--data", folder, "--out", tmp_path / "t", "--base", "qwen2-tiny")
    )


def test_recommend_not_a_target(synthetic_dir):
    assert_clean_error(
        padrec("recommend", "--target", "NOT_A_TARGET", "--data", synthetic_dir, "--users", 1), "NOT_A_TARGET"
    )


def test_recommend_folder_without_adapter(synthetic_dir):
    line = assert_clean_error(
        padrec("recommend", "--target", synthetic_dir, "--data", synthetic_dir), synthetic_dir
    )
    assert "adapter_config.json" in line


def test_recommend_target_of_another_catalog(tiny_target, shared_data):
    """A target trained on the synthetic catalog cannot serve Instruments (5 tokens per item, not 3)."""
    assert_clean_error(
        padrec("recommend", "--target", tiny_target, "--data", shared_data / "Instruments", "--users", 1),
        tiny_target,
    )


def test_bad_argument_is_an_argparse_error(synthetic_dir):
    proc = padrec("recommend", "--target", "x", "--data", synthetic_dir, "--users", "0")
    assert proc.returncode == 2 and "positive integer" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_json(tiny_target, synthetic_dir, tmp_path):
    out = tmp_path / "report" / "eval.json"
    proc = padrec(
        "evaluate", "--target", tiny_target, "--data", synthetic_dir, "--users", 20, "--json", "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    keys = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
    for k in keys:
        assert 0.0 <= report[k] <= 1.0
        assert set(report["mostpop"]) == set(keys) and 0.0 <= report["mostpop"][k] <= 1.0
    assert report["recall@5"] <= report["recall@10"]
    assert report["users"] == 20 and report["list_len"] == 5 and report["split"] == "test"
    assert report["valid_item_rate"] == 1.0 and report["complete_list_rate"] == 1.0
    assert isinstance(report["distinct_items"], int) and 5 <= report["distinct_items"] <= 100
    assert json.loads(out.read_text()) == report


def test_evaluate_table(tiny_target, synthetic_dir):
    proc = padrec("evaluate", "--target", tiny_target, "--data", synthetic_dir, "--users", 4, "--list-len", 3)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("target") and lines[2].startswith("mostpop")
    assert "users 4, valid_item_rate 1.0" in proc.stdout


def test_recommend_json(tiny_target, synthetic_dir):
    proc = padrec("recommend", "--target", tiny_target, "--data", synthetic_dir, "--users", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3
    ds = load_dataset(synthetic_dir)
    assert [r["user"] for r in rows] == ds.eval_users("test")[:3]
    tok = AutoTokenizer.from_pretrained(tiny_target)
    code_to_item = {tuple(ds.index.tokens(i)): i for i in range(ds.num_items)}
    list_len = 5
    for r in rows:
        assert set(r) >= {"user", "prompt_ids", "output_ids", "items", "latency_ms", "target_forwards"}
        assert tok.convert_ids_to_tokens(r["prompt_ids"][-1]) == REC_TOKEN
        tokens = tok.convert_ids_to_tokens(r["output_ids"])
        assert tokens[-1] == EOS_TOKEN and tokens.count(EOS_TOKEN) == 1
        chunks = " ".join(tokens[:-1]).split(f" {SEP_TOKEN} ")
        items = [code_to_item[tuple(c.split())] for c in chunks]
        assert len(items) == list_len == len(set(items))
        assert r["items"] == items and r["latency_ms"] > 0
        # the engine (default) runs the target once per position where the catalog leaves a choice
        assert r["target_forwards"] == r["choices"] == len(r["output_ids"]) - r["forced_tokens"]
        assert r["forced_tokens"] >= list_len  # at least every separator and the EOS


def test_recommend_engines_agree(tiny_target, synthetic_dir):
    """Stock generate (--engine generate) writes the same lists, one forward per token."""
    args = ("recommend", "--target", tiny_target, "--data", synthetic_dir, "--users", 3, "--json")
    engine, stock = padrec(*args), padrec(*args, "--engine", "generate")
    assert engine.returncode == stock.returncode == 0, engine.stderr + stock.stderr
    rows_e = [json.loads(line) for line in engine.stdout.splitlines()]
    rows_s = [json.loads(line) for line in stock.stdout.splitlines()]
    assert [r["output_ids"] for r in rows_e] == [r["output_ids"] for r in rows_s]
    assert all(r["target_forwards"] == len(r["output_ids"]) for r in rows_s)
    assert all(e["target_forwards"] < s["target_forwards"] for e, s in zip(rows_e, rows_s, strict=True))
