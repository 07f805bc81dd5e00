"""Run a Python snippet the way a Hub user would: fresh process, empty dynamic-module cache, offline, no padrec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_isolated(script: str, args: list[str], workdir: Path, extra_env: dict | None = None) -> dict:
    """Run ``script`` (which must block ``modeling_padrec`` itself) and return the JSON of its last stdout line.

    ``extra_env``: e.g. ``HF_HOME`` pointing at a prepared offline Hub cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HOME", "HF_MODULES_CACHE")}
    env.update(
        HF_MODULES_CACHE=str(workdir / "hf_modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra_env or {})
    run = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
