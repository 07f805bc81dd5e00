"""The accelerate training loop: checkpoints and resuming, the log, seeded reproducibility, 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model
from safetensors.torch import load_file

from modeling_padrec.data import load_dataset
from modeling_padrec.decoding import Recommender
from modeling_padrec.examples import ItemEncoder, ListwiseExamples, collate
from modeling_padrec.target import load_base, load_target, lora_config
from modeling_padrec.tokenization import TokenMap
from modeling_padrec.training import (
    LOG_NAME,
    Checkpointer,
    StageConfig,
    TargetTrainArgs,
    lr_lambda,
    train_stage,
    train_target,
    training_seconds,
)

# 16 examples, 4 per batch: an epoch is 4 steps, so a run of 6 steps resumed at 3 crosses an epoch boundary
STAGE = StageConfig("lora", max_steps=6, batch_size=4, save_every=3, log_every=1)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def dataset(synthetic_dir):
    return load_dataset(synthetic_dir)


def build_lora_run(dataset, dropout: float):
    """A fresh qwen2-tiny + LoRA model and a small list-wise example set, exactly as a new process would."""
    set_seed(0)
    model, tok, new_ids = load_base("qwen2-tiny", dataset.index, seed=0)
    tm = TokenMap.from_tokenizer(tok, dataset.index, vocab_size=model.config.vocab_size)
    peft_model = get_peft_model(model, lora_config(new_ids, r=4, dropout=dropout))
    examples = ListwiseExamples(dataset, ItemEncoder(tm, dataset), history_len=5, list_len=3, max_examples=16)
    return peft_model, examples, tm.pad_id


def run_stage(dataset, work: Path, dropout: float, stop_after: int | None = None):
    """Train STAGE; with ``stop_after`` the run dies after that many steps. Returns (weights, steps run)."""
    work.mkdir(parents=True, exist_ok=True)
    model, examples, pad = build_lora_run(dataset, dropout)
    calls = []

    def loss_fn(m, batch):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupted
        calls.append(1)
        return m(**batch).loss, {}

    try:
        trained = train_stage(
            model, examples, lambda b: collate(b, pad), STAGE, accelerator=Accelerator(), work_dir=work,
            seed=1, run_fingerprint={"run": "resume-test"}, loss_fn=loss_fn,
        )  # fmt: skip
    except Interrupted:
        return None, len(calls)
    weights = {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}
    return weights, len(calls)


def assert_resume_matches(dataset, tmp_path, dropout):
    full, steps = run_stage(dataset, tmp_path / "full", dropout)
    assert steps == 6
    assert run_stage(dataset, tmp_path / "resumed", dropout, stop_after=4) == (None, 4)
    ckpt = tmp_path / "resumed" / "lora" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "optimizer.safetensors",
        "state.json",
        "weights.safetensors",
    ]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3 and state["elapsed_s"] > 0
    resumed, steps = run_stage(dataset, tmp_path / "resumed", dropout)
    assert steps == 3  # continued from the checkpoint at step 3, not from scratch
    log = [json.loads(line) for line in (tmp_path / "resumed" / LOG_NAME).read_text().splitlines()]
    clock = [r["elapsed_s"] for r in log]
    assert [r["step"] for r in log][3] == 4 and clock[3] >= state["elapsed_s"]  # the clock goes on
    assert clock == sorted(clock)
    assert resumed.keys() == full.keys() and len(full) > 10
    for name in full:
        assert torch.allclose(full[name], resumed[name], atol=1e-6), name


def test_resume_matches_an_uninterrupted_run(dataset, tmp_path):
    assert_resume_matches(dataset, tmp_path, dropout=0.0)
    log = [json.loads(line) for line in (tmp_path / "resumed" / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log][-3:] == [4, 5, 6]


def test_resume_matches_with_the_recipes_dropout(dataset, tmp_path):
    assert_resume_matches(dataset, tmp_path, dropout=lora_config([0]).lora_dropout)


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    Checkpointer(tmp_path, {"run": 1}).save(model, opt, step=7, elapsed_s=12.345)
    saved = model.weight.detach().clone()
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    assert Checkpointer(tmp_path, {"run": 2}).load(fresh, fresh_opt) == (0, 0.0)
    assert not torch.equal(fresh.weight, saved)
    assert Checkpointer(tmp_path, {"run": 1}).load(fresh, fresh_opt) == (7, 12.35)
    assert torch.equal(fresh.weight, saved)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_training_seconds_adds_stages_and_restarted_runs():
    rows = [
        {"stage": "pretrain", "step": 10, "elapsed_s": 50.0},
        {"stage": "pretrain", "step": 20, "elapsed_s": 100.0},
        {"stage": "lora", "step": 10, "elapsed_s": 20.0},
        {"stage": "lora", "step": 20, "elapsed_s": 5.0},  # resumed, old checkpoint: the clock restarted
        {"stage": "lora", "step": 30, "elapsed_s": 15.0},
    ]
    assert training_seconds(rows) == 100.0 + 20.0 + 15.0
    assert training_seconds(rows[:2]) == 100.0  # a clock carried on through resumes counts once
    assert training_seconds([]) is None


def test_train_stage_creates_its_work_dir(dataset, tmp_path):
    model, examples, pad = build_lora_run(dataset, 0.0)
    train_stage(
        model, examples, lambda b: collate(b, pad), StageConfig("lora", max_steps=1, batch_size=4),
        accelerator=Accelerator(), work_dir=tmp_path / "new", seed=0, run_fingerprint={},
    )  # fmt: skip
    assert (tmp_path / "new" / LOG_NAME).is_file()


def test_lr_schedule():
    f = lr_lambda(StageConfig("s", max_steps=100, warmup_ratio=0.1))
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_train_log(tiny_target):
    environment = json.loads((tiny_target / "padrec_target.json").read_text())["train"]["environment"]
    wanted = {"cpu", "cpu_isa", "torch", "transformers", "peft", "accelerate", "torch_threads"}
    assert wanted <= set(environment)
    assert environment["peft"] and environment["accelerate"]  # installed: their versions, not None
    rows = [json.loads(line) for line in (tiny_target / LOG_NAME).read_text().splitlines()]
    for stage in ("pretrain", "lora"):
        mine = [r for r in rows if r["stage"] == stage]
        assert [r["step"] for r in mine] == [10, 20, 30, 40]
        assert {"loss", "lr", "epoch", "elapsed_s"} <= set(mine[0])
        losses = [r["loss"] for r in mine]
        assert losses[-1] < losses[0] and all(math.isfinite(x) for x in losses)
        assert mine[-1]["lr"] < mine[0]["lr"]


def _train(synthetic_dir, out: Path, seed: int) -> Path:
    return train_target(
        TargetTrainArgs(data=str(synthetic_dir), out=str(out), base="qwen2-tiny", max_steps=3, batch_size=4,
                        list_len=3, seed=seed)
    )  # fmt: skip


def _weights(target: Path) -> dict[str, torch.Tensor]:
    adapter = load_file(target / "adapter_model.safetensors")
    base = load_file(target / "base" / "model.safetensors")
    return {**{f"adapter.{k}": v for k, v in adapter.items()}, **{f"base.{k}": v for k, v in base.items()}}


def test_seeded_runs_are_reproducible(synthetic_dir, tmp_path):
    a, b, c = (
        _weights(_train(synthetic_dir, tmp_path / name, seed))
        for name, seed in [("a", 5), ("b", 5), ("c", 6)]
    )
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    logs = [[json.loads(x)["loss"] for x in (tmp_path / n / LOG_NAME).read_text().splitlines()] for n in "ab"]
    assert logs[0] == logs[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_launch(synthetic_dir, dataset, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo). Note: ``--cpu --num_processes 2`` alone starts ONE
    process in accelerate 1.x (simple launcher); ``--multi_gpu`` + ACCELERATE_USE_CPU gives 2 CPU ranks."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(_free_port()), "-m", "modeling_padrec.cli", "train-target"]
    cmd += ["--data", str(synthetic_dir), "--out", str(out), "--base", "qwen2-tiny", "--max-steps", "3"]
    cmd += ["--batch-size", "4", "--list-len", "3"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "padrec_target.json").read_text())
    assert meta["train"]["processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no work dir left behind
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("pretrain", 3), ("lora", 3)]
    rec = Recommender(load_target(out), dataset)
    r = rec.recommend(dataset.eval_users("test")[0])
    assert len(r.items) == 3 == len(set(r.items)) and None not in r.items


def test_fit_on_train_and_valid_learns_the_next_period(synthetic_dir, tmp_path, capsys):
    from modeling_padrec.cli import main
    from modeling_padrec.data import load_dataset
    from modeling_padrec.errors import PadrecError
    from modeling_padrec.training import fit_dataset

    dataset = load_dataset(synthetic_dir)
    assert fit_dataset(dataset, "train") is dataset
    fitted = fit_dataset(dataset, "train+valid")
    user = next(u for u in dataset.users if dataset.valid.get(u))
    assert fitted.train[user] == dataset.train[user] + dataset.valid[user]
    assert fitted.test == dataset.test and fitted.index is dataset.index
    # the history -> next-period example is among the list-wise cuts
    from modeling_padrec.examples import ItemEncoder, ListwiseExamples
    from modeling_padrec.target import load_base
    from modeling_padrec.tokenization import TokenMap

    model, tokenizer, _ = load_base("qwen2-tiny", dataset.index)
    enc = ItemEncoder(
        TokenMap.from_tokenizer(tokenizer, dataset.index, vocab_size=model.config.vocab_size), dataset
    )
    cuts = set(ListwiseExamples(fitted, enc).cuts)
    assert (user, len(dataset.train[user])) in cuts
    with pytest.raises(PadrecError, match="fit-splits"):
        fit_dataset(dataset, "everything")
    with pytest.raises(SystemExit):
        main(
            [
                "train-target",
                "--data",
                str(synthetic_dir),
                "--out",
                str(tmp_path / "t"),
                "--fit-splits",
                "all",
            ]
        )


def test_a_target_fit_on_valid_is_not_evaluated_on_valid(tiny_target, synthetic_dir, tmp_path, capsys):
    import shutil

    from modeling_padrec.cli import main

    target = tmp_path / "target"
    shutil.copytree(tiny_target, target)
    meta = json.loads((target / "padrec_target.json").read_text())
    meta["train"]["fit_splits"] = "train+valid"
    (target / "padrec_target.json").write_text(json.dumps(meta))
    args = ["evaluate", "--target", str(target), "--data", str(synthetic_dir), "--users", "2"]
    assert main([*args, "--split", "valid"]) == 2
    assert "trained on the validation interactions" in capsys.readouterr().err
    assert main([*args, "--split", "test"]) == 0


def test_period_stage_trains_on_the_next_periods_lists(synthetic_dir, tmp_path):
    from modeling_padrec.data import load_dataset
    from modeling_padrec.errors import PadrecError
    from modeling_padrec.examples import IGNORE, ItemEncoder, PeriodExamples
    from modeling_padrec.target import load_base
    from modeling_padrec.tokenization import TokenMap

    dataset = load_dataset(synthetic_dir)
    model, tokenizer, _ = load_base("qwen2-tiny", dataset.index)
    enc = ItemEncoder(
        TokenMap.from_tokenizer(tokenizer, dataset.index, vocab_size=model.config.vocab_size), dataset
    )
    examples = PeriodExamples(dataset, enc, history_len=5, list_len=3)
    assert examples.users == [u for u in dataset.train if dataset.train[u] and dataset.valid.get(u)]
    user = examples.users[0]
    row = examples[0]
    prompt = enc.prompt(dataset.train[user], 5)
    assert row["input_ids"] == prompt + enc.target_list(dataset.valid[user], 3)
    assert row["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    assert row["labels"][len(prompt) :] == row["input_ids"][len(prompt) :]

    base = dict(data=str(synthetic_dir), base="qwen2-tiny", max_steps=2, batch_size=4, list_len=3)
    with pytest.raises(PadrecError, match="needs --fit-splits train\\+valid"):
        train_target(TargetTrainArgs(out=str(tmp_path / "refused"), period_steps=2, **base))
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.work").exists()
    out = train_target(
        TargetTrainArgs(out=str(tmp_path / "t"), fit_splits="train+valid", period_steps=2, **base)
    )
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("pretrain", 2), ("lora", 2), ("period", 2)]
    assert json.loads((out / "padrec_target.json").read_text())["train"]["period_steps"] == 2


def test_run_settings_name_a_path_one_way(tmp_path, monkeypatch):
    from modeling_padrec.training import run_settings

    (tmp_path / "data" / "Instruments").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    spellings = [
        "../data/Instruments",
        str(tmp_path / "data" / "Instruments"),
        str(tmp_path / "work/../data/Instruments"),
    ]
    seen = {json.dumps(run_settings({"data": s, "seed": 0, "out": "x"}, drop=("out",))) for s in spellings}
    assert seen == {json.dumps({"data": str((tmp_path / "data" / "Instruments").resolve()), "seed": 0})}
    # a Hub id or a preset is not a local path: kept as given
    assert run_settings({"target_dir": "org/target", "base": "qwen2-small"}) == {
        "target_dir": "org/target",
        "base": "qwen2-small",
    }
