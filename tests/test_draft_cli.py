"""End to end through the CLI: train-draft, recommend with and without --draft, and the draft folder used by
plain Hugging Face calls in a process where padrec cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from isolated import run_isolated

pytestmark = pytest.mark.slow


def padrec(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "modeling_padrec.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def _lines(run) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("engine", ["generate", "engine"])
def test_recommend_with_draft_is_identical_with_fewer_target_forwards(
    trained_draft, tiny_target, synthetic_dir, engine
):
    common = ["recommend", "--target", tiny_target, "--data", synthetic_dir, "--users", "30", "--json"]
    common += ["--engine", engine]
    plain = _lines(padrec(*common))
    assisted = _lines(padrec(*common, "--draft", trained_draft))
    assert len(plain) == len(assisted) == 30
    for p, a in zip(plain, assisted, strict=True):
        assert p["user"] == a["user"]
        assert a["output_ids"] == p["output_ids"]
        assert a["accepted_per_round"] and all(n >= 0 for n in a["accepted_per_round"])
        if engine == "generate":
            # each target forward yields one token of its own plus the draft tokens it accepted (a round in which
            # nothing was drafted, e.g. one token left, is not a draft round)
            assert sum(a["accepted_per_round"]) + a["target_forwards"] == len(a["output_ids"])
        else:
            # every token is forced or a choice; the first forward (prefill) drafts nothing
            assert a["forced_tokens"] + a["choices"] == len(a["output_ids"]) and a["choices"] == p["choices"]
            assert len(a["accepted_per_round"]) == a["target_forwards"] - 1
        assert len(a["accepted_per_round"]) <= a["target_forwards"]
    assert sum(a["target_forwards"] for a in assisted) < sum(p["target_forwards"] for p in plain)


def test_train_draft_writes_a_hub_folder(trained_draft):
    names = {p.name for p in trained_draft.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "padrec_draft.json"} <= names
    assert {"configuration_padrec_draft.py", "modeling_padrec_draft.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    gen = json.loads((trained_draft / "generation_config.json").read_text())
    assert gen["num_assistant_tokens"] == 4


ISOLATED = r"""
import json, sys
sys.modules["modeling_padrec"] = None  # padrec itself must not be needed
import torch
from transformers import AutoModel, AutoTokenizer
from peft import AutoPeftModelForCausalLM

draft_dir, target_dir, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tok = AutoTokenizer.from_pretrained(target_dir)
target = AutoPeftModelForCausalLM.from_pretrained(target_dir).eval()
draft = AutoModel.from_pretrained(draft_dir, trust_remote_code=True).eval()
ids = torch.tensor([prompt])
plain = target.generate(input_ids=ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)
draft.attach(target)
assisted = target.generate(input_ids=ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id,
                           assistant_model=draft)
rounds = draft.stats.summary()["rounds"]
draft.detach()
try:
    import modeling_padrec  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"same": plain.tolist() == assisted.tolist(), "new": plain.shape[1] - ids.shape[1],
                  "rounds": rounds, "blocked": blocked, "cls": type(draft).__module__}))
"""


def test_isolated_process_hf_calls_only(trained_draft, tiny_target, synthetic_dir, tmp_path):
    prompts = _lines(
        padrec("recommend", "--target", tiny_target, "--data", synthetic_dir, "--users", "3", "--json")
    )
    for row in prompts:
        args = [str(trained_draft), str(tiny_target), json.dumps(row["prompt_ids"])]
        result = run_isolated(ISOLATED, args, tmp_path)
        assert result["blocked"] and result["cls"].startswith("transformers_modules.")
        assert result["same"] and result["new"] > 0 and result["rounds"] > 0
