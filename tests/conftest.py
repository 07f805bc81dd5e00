"""Shared fixtures. Tests never touch the network and read real data from ../shared/data."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models: one thread is faster than two competing ones, and keeps the suite steady on a 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic LC-Rec dataset (the one `padrec demo` uses), built once per session."""
    from modeling_padrec.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic"), num_users=300, num_items=120, seed=0)


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory, synthetic_dir) -> Path:
    """A qwen2-tiny target trained for a few steps on the synthetic dataset."""
    from modeling_padrec.training import TargetTrainArgs, train_target

    out = tmp_path_factory.mktemp("targets") / "tiny"
    return train_target(
        TargetTrainArgs(data=str(synthetic_dir), out=str(out), base="qwen2-tiny", max_steps=40, list_len=5)
    )


@pytest.fixture(scope="session")
def trained_draft(tmp_path_factory, tiny_target, synthetic_dir) -> Path:
    """A PAD-Rec draft of ``tiny_target``, trained for a few steps through the CLI."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("drafts") / "padrec"
    run = subprocess.run(
        [sys.executable, "-m", "modeling_padrec.cli", "train-draft", "--target", str(tiny_target), "--data",
         str(synthetic_dir), "--out", str(out), "--depth", "4", "--max-steps", "60", "--max-users", "120"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out
