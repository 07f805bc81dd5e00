"""The saved draft is Hub-loadable remote code: it needs transformers and torch, never this package."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from draft_world import make_world, one_thread  # noqa: F401
from isolated import run_isolated

import modeling_padrec
from modeling_padrec.draft import new_draft

PACKAGE = Path(modeling_padrec.__file__).parent
REMOTE_FILES = ["configuration_padrec_draft.py", "modeling_padrec_draft.py"]


@pytest.mark.parametrize("name", REMOTE_FILES)
def test_remote_code_imports_only_torch_transformers_and_each_other(name):
    """Anything else (this package, numpy, safetensors, ...) would break a Hub load; the stdlib is always there."""
    tree = ast.parse((PACKAGE / name).read_text())
    siblings = {Path(f).stem for f in REMOTE_FILES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1 and node.module in siblings, ast.unparse(node)
                continue
            roots = [node.module.split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in {"torch", "transformers"} or root in sys.stdlib_module_names, ast.unparse(node)


REMOTE_SCRIPT = r"""
import json, sys
sys.modules["modeling_padrec"] = None  # the package must not be needed
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LogitsProcessorList

folder = sys.argv[1]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
draft = AutoModel.from_pretrained(folder, trust_remote_code=True)
saved = load_file(f"{folder}/model.safetensors")
state = draft.state_dict()
target = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
prompt = torch.tensor([json.loads(sys.argv[3])])
plain = target.generate(prompt, max_new_tokens=10, do_sample=False)
draft.attach(target)
assisted = target.generate(prompt, max_new_tokens=10, do_sample=False, assistant_model=draft)
draft.detach()
try:
    import modeling_padrec  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({
    "config_class": type(config).__name__,
    "config_module": type(config).__module__,
    "model_class": type(draft).__name__,
    "model_module": type(draft).__module__,
    "same_keys": sorted(saved) == sorted(state),
    "same_weights": all(torch.equal(saved[k], v) for k, v in state.items()),
    "depth": draft.generation_config.num_assistant_tokens,
    "schedule": draft.generation_config.num_assistant_tokens_schedule,
    "lossless": plain.tolist() == assisted.tolist(),
    "rounds": draft.stats.summary()["rounds"],
    "blocked": blocked,
}))
"""


def test_saved_draft_loads_with_trust_remote_code_alone(tmp_path):
    w = make_world(seed=21)
    draft = new_draft(w.target, w.token_map, depth=3, seed=4)
    with torch.no_grad():
        draft.signals.slot_scale.fill_(0.37)  # a weight that differs from its initial value
    folder, target_dir = tmp_path / "draft", tmp_path / "target"
    draft.save_pretrained(folder)
    w.target.save_pretrained(target_dir)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_padrec_draft.PadRecDraftConfig",
        "AutoModel": "modeling_padrec_draft.PadRecDraftModel",
    }
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (
        generation["num_assistant_tokens"] == 3 and generation["num_assistant_tokens_schedule"] == "constant"
    )

    prompt = w.prompt([0, 1])[0].tolist()
    result = run_isolated(REMOTE_SCRIPT, [str(folder), str(target_dir), json.dumps(prompt)], tmp_path)
    assert result["config_class"] == "PadRecDraftConfig" and result["model_class"] == "PadRecDraftModel"
    assert result["config_module"].startswith("transformers_modules.")
    assert result["model_module"].startswith("transformers_modules.")
    assert result["same_keys"] and result["same_weights"]
    assert (result["depth"], result["schedule"]) == (3, "constant")
    assert result["lossless"] and result["rounds"] >= 1
    assert result["blocked"]
    assert any(
        (tmp_path / "hf_modules").rglob("modeling_padrec_draft.py")
    )  # the code really came from the module cache
