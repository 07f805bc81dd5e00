"""The notebooks run: stored without outputs, executed top to bottom on tiny models (a broken notebook fails CI)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from hub_cache import fake_hub_cache
from nbclient import NotebookClient

from modeling_padrec.data import load_dataset
from modeling_padrec.draft import new_draft
from modeling_padrec.hub import export
from modeling_padrec.target import load_target

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REPOS = {"draft": "org/padrec-draft", "target": "org/padrec-draft-target", "base": "org/padrec-draft-base"}


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


@pytest.mark.parametrize("name", ["quickstart.ipynb", "training_walkthrough.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_training_walkthrough_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PADREC_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("PADREC_STEPS", "20")
    monkeypatch.setenv("PADREC_BENCH_USERS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute("training_walkthrough.ipynb", tmp_path)
    assert (tmp_path / "work" / "bench" / "report.json").is_file()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "recall@10" in text and "pad-rec" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images  # the speedup plot was shown


def test_quickstart_runs_on_repos_loaded_by_id(tmp_path, monkeypatch, tiny_target, synthetic_dir):
    target = load_target(tiny_target)
    tm = target.check_dataset(load_dataset(synthetic_dir))
    new_draft(target, tm, depth=3).save_pretrained(tmp_path / "draft")
    _, root = export(tmp_path / "draft", tiny_target, REPOS["draft"], tmp_path / "export")
    home = fake_hub_cache(root, tmp_path / "hf_home", REPOS)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PADREC_TARGET", REPOS["target"])
    monkeypatch.setenv("PADREC_DRAFT", REPOS["draft"])
    monkeypatch.setenv("PADREC_DATA", str(synthetic_dir))
    monkeypatch.setenv("PADREC_USERS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute("quickstart.ipynb", tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "identical: True" in text and "median speedup" in text and "identical: False" not in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_quickstart_runs_as_shipped_after_the_demo(tmp_path, monkeypatch, tiny_target, synthetic_dir):
    """A newcomer's path: `make demo` wrote runs/demo/ (target, draft-padrec, data); the notebook is opened from
    notebooks/ with nothing set in the environment."""
    demo = tmp_path / "repo" / "runs" / "demo"
    demo.mkdir(parents=True)
    (demo / "target").symlink_to(tiny_target)
    (demo / "data").symlink_to(synthetic_dir)
    target = load_target(tiny_target)
    new_draft(target, target.check_dataset(load_dataset(synthetic_dir)), depth=3).save_pretrained(
        demo / "draft-padrec"
    )
    (tmp_path / "repo" / "notebooks").mkdir()
    for name in ("PADREC_TARGET", "PADREC_DRAFT", "PADREC_DATA", "PADREC_USERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute("quickstart.ipynb", tmp_path / "repo" / "notebooks")
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "identical: True" in text and "identical: False" not in text


def test_quickstart_says_what_to_run_first(tmp_path, monkeypatch):
    for name in ("PADREC_TARGET", "PADREC_DRAFT", "PADREC_DATA"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception, match="run `make demo`"):
        execute("quickstart.ipynb", tmp_path)
