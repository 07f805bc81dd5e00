"""``padrec export``: Hub repositories, model cards from measured numbers, and loading them the way Hub users
do — from the folders and by repo id through an offline Hugging Face cache, in a process without padrec."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hub_cache import fake_hub_cache
from huggingface_hub import ModelCard, ModelCardData
from isolated import run_isolated

from modeling_padrec.bench import BenchConfig, run_bench
from modeling_padrec.cli import main
from modeling_padrec.data import load_dataset
from modeling_padrec.decoding import Recommender
from modeling_padrec.draft import load_draft, new_draft
from modeling_padrec.hub import ExportError, export, push
from modeling_padrec.target import load_target

pytestmark = pytest.mark.slow
REPO = "org/padrec-draft"
REPOS = {"draft": REPO, "target": f"{REPO}-target", "base": f"{REPO}-base"}


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory, tiny_target, synthetic_dir):
    target = load_target(tiny_target)
    tm = target.check_dataset(load_dataset(synthetic_dir))
    out = tmp_path_factory.mktemp("hub-draft") / "draft"
    new_draft(target, tm, depth=3).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, tiny_target, synthetic_dir, draft_dir):
    out = tmp_path_factory.mktemp("hub-bench") / "bench"
    run_bench(BenchConfig(str(tiny_target), str(synthetic_dir), drafts=[str(draft_dir)], users=4, warmup=1,
                          depth=4), out=out, progress=False)  # fmt: skip
    return out / "report.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_target, synthetic_dir, draft_dir, report_path):
    out = tmp_path_factory.mktemp("hub-export") / "export"
    code = main(["export", "--draft", str(draft_dir), "--target", str(tiny_target), "--repo-id", REPO,
                 "--bench", str(report_path), "--data", str(synthetic_dir), "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_export_writes_complete_repos_with_safetensors_only(exported):
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest["repos"] == REPOS
    draft = {p.name for p in (exported / "draft").iterdir()}
    assert draft == {"README.md", "config.json", "configuration_padrec_draft.py", "modeling_padrec_draft.py",
                     "model.safetensors", "generation_config.json", "custom_generate", "catalog.safetensors",
                     "catalog.json"}  # fmt: skip
    recipe = exported / "draft" / "custom_generate"
    assert {p.name for p in recipe.iterdir()} == {"generate.py", "trie.py", "scoring.py", "acceptance.py",
                                                  "proposers.py", "tree.py", "loop.py", "batch.py"}  # fmt: skip
    for path in recipe.iterdir():  # remote code: torch, transformers, each other and a few stdlib modules
        imports = re.findall(r"^(?:from|import) ([\w.]+)", path.read_text(), re.M)
        assert {i.split(".")[0] for i in imports} <= {"torch", "transformers", "", "__future__", "math", "time",
                                                      "dataclasses"}, (path, imports)  # fmt: skip
    config = json.loads((exported / "draft" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_padrec_draft.PadRecDraftModel"
    target = {p.name for p in (exported / "target").iterdir()}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= target
    adapter = json.loads((exported / "target" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == REPOS["base"]  # a repo id, not this machine's path
    assert {"README.md", "config.json", "model.safetensors"} <= {
        p.name for p in (exported / "base").iterdir()
    }
    for path in exported.rglob("*"):
        assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".ckpt"), path
    meta = (exported / "target" / "padrec_target.json").read_text()
    assert str(Path.cwd()) not in meta and "/tmp" not in meta
    for path in exported.rglob("*"):  # no machine-local absolute path anywhere in the repos' text files
        if path.suffix in (".json", ".md", ".py", ".txt", ".jinja") and path.name != "export.json":
            text = path.read_text()
            assert "/tmp/" not in text and str(Path.cwd()) not in text and "/home/" not in text, path
    generation = json.loads((exported / "draft" / "generation_config.json").read_text())
    assert generation["num_assistant_tokens"] == 4  # the depth the bench measured becomes the default


def _numbers(text: str) -> set[float]:
    return {float(x) for x in re.findall(r"(?<![\w.@])-?\d+(?:\.\d+)?(?![\w.])", text)}


def _report_numbers(obj) -> set[float]:
    if isinstance(obj, bool):
        return set()
    if isinstance(obj, int | float):
        return {float(obj)}
    if isinstance(obj, dict):
        return set().union(*(_report_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_report_numbers(v) for v in obj)) if obj else set()
    if isinstance(obj, str):
        return _numbers(obj)
    return set()


def test_draft_card_parses_validates_and_every_figure_comes_from_the_report(exported, report_path):
    card = ModelCard.load(exported / "draft" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation" and data["base_model"] == REPOS["target"]
    assert {"speculative-decoding", "recommendation"} <= set(data["tags"])
    assert data["datasets"] == ["synthetic"]
    ModelCardData(**data)  # round-trips through the metadata schema
    text = str(card)
    assert "{{" not in text and "}}" not in text and "More Information Needed" not in text
    assert 'AutoModel.from_pretrained("org/padrec-draft", trust_remote_code=True)' in text
    assert "assistant_model=draft" in text and ".attach(target)" in text
    evaluation = text.split("## Evaluation", 1)[1].split("## Limitations", 1)[0]
    report = json.loads(report_path.read_text())
    steps = len(report["methods"]["generate:pad-rec"]["alpha_by_step"])
    allowed = _report_numbers(report) | {float(k) for k in range(steps)}  # the k=0.. column labels
    figures = _numbers(evaluation)
    assert figures - allowed == set()
    m = report["methods"]["generate:pad-rec"]  # the card shows the stock path its snippet uses
    for key in ("speedup", "tau", "identical", "speedup_p10", "speedup_p90"):
        assert float(m[key]) in figures, key
    assert all(float(a) in figures for a in m["alpha_by_step"])
    assert all(float(a) in figures for a in m["alpha_by_slot"].values())
    assert report["hardware"]["cpu"] in evaluation


def test_target_and_base_cards(exported):
    for folder, base in (("target", REPOS["base"]), ("base", None)):
        card = ModelCard.load(exported / folder / "README.md")
        text = str(card)
        assert "{{" not in text and "}}" not in text
        assert {"recommendation", "speculative-decoding"} <= set(card.data.tags)
        assert card.data.base_model == base
    assert "AutoPeftModelForCausalLM" in str(ModelCard.load(exported / "target" / "README.md"))


def test_without_a_report_the_card_says_not_benchmarked(tmp_path, tiny_target, draft_dir):
    plan, root = export(draft_dir, tiny_target, REPO, tmp_path / "out")
    text = (root / "draft" / "README.md").read_text()
    evaluation = text.split("## Evaluation", 1)[1].split("## Limitations", 1)[0]
    assert "has not been benchmarked" in evaluation and "speedup =" not in evaluation
    assert "×" not in evaluation and not re.search(r"\d\.\d", evaluation)


def test_the_draft_card_cites_the_study(tmp_path, tiny_target, draft_dir):
    """The card's "which draft to train" section copies the study's cell on the draft's dataset: the published
    Instruments report, its cells relabelled as the synthetic dataset the tiny target was trained on."""
    report = json.loads((Path(__file__).parent.parent / "results" / "study" / "report.json").read_text())
    for cells in report["factors"].values():
        for cell in cells:
            cell["cell"][0] = "synthetic" if cell["cell"][0] == "Instruments" else cell["cell"][0]
    study = tmp_path / "report.json"
    study.write_text(json.dumps(report))
    _, root = export(draft_dir, tiny_target, REPO, tmp_path / "out", study=study)
    text = (root / "draft" / "README.md").read_text()
    section = text.split("## Which draft to train", 1)[1].split("## Evaluation", 1)[0]
    (ablation,) = [c for c in report["factors"]["ablation"] if c["cell"][0] == "synthetic"]
    assert "This draft is **pad-rec**" in section and "ablation cell synthetic" in section
    for variant, kinds in ablation["variants"].items():
        speedup = kinds["chain"]["speedup_vs_ar"]
        assert (
            f"| {variant} | {speedup['value']:.3f} [{speedup['low']:.3f}, {speedup['high']:.3f}] |" in section
        )
    assert "Fastest in this cell: **" in section
    _, root = export(draft_dir, tiny_target, REPO, tmp_path / "plain")
    plain = (root / "draft" / "README.md").read_text().split("## Which draft to train", 1)[1]
    assert plain.split("## Evaluation", 1)[0].strip().startswith("Not cited")
    report["factors"] = {f: [] for f in report["factors"]}
    study.write_text(json.dumps(report))
    _, root = export(draft_dir, tiny_target, REPO, tmp_path / "empty", study=study)
    assert "has no cell on `synthetic` yet" in (root / "draft" / "README.md").read_text()


def test_bad_inputs_are_one_line_and_leave_out_untouched(
    tmp_path, tiny_target, draft_dir, report_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    other = tmp_path / "other-report.json"
    report = json.loads(report_path.read_text())
    for m in report["methods"].values():
        m["source"] = None
    other.write_text(json.dumps(report))
    wrong_target = tmp_path / "wrong-target.json"
    report = json.loads(report_path.read_text())
    report["config"]["target"] = str(tmp_path)
    wrong_target.write_text(json.dumps(report))
    cases = [
        (["--repo-id", "not a repo"], "--repo-id 'not a repo'"),
        (["--repo-id", REPO, "--bench", str(wrong_target)], "measured with the target"),
        (["--repo-id", REPO], "is not an earlier output of this command"),
        (["--repo-id", REPO, "--bench", str(other)], "has no method for the draft"),
        (["--repo-id", REPO, "--bench", str(tmp_path / "missing.json")], "cannot read a bench report"),
        (["--repo-id", REPO, "--study", str(other)], "cannot read a study report"),
    ]
    for extra, message in cases:
        code = main(
            ["export", "--draft", str(draft_dir), "--target", str(tiny_target), "--out", str(out), *extra]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("padrec: error:") and message in err and "\n" not in err, err
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="token layout"):
        bad = tmp_path / "bad-draft"
        shutil.copytree(draft_dir, bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg["token_map_fingerprint"] = "0000"
        (bad / "config.json").write_text(json.dumps(cfg))
        export(bad, tiny_target, REPO, out)
    assert (out / "keep.txt").read_text() == "old"


def test_a_draft_distilled_from_another_training_of_the_target_is_refused(tmp_path, tiny_target, draft_dir):
    from modeling_padrec.target import weights_digest

    draft = tmp_path / "draft"
    shutil.copytree(draft_dir, draft)
    (draft / "padrec_draft.json").write_text(json.dumps({"target_weights": weights_digest(tiny_target)}))
    _, folder = export(draft, tiny_target, REPO, tmp_path / "out")  # its own training: the card names it
    assert f"(weights digest `{weights_digest(tiny_target)}`)" in (folder / "draft" / "README.md").read_text()
    (draft / "padrec_draft.json").write_text(json.dumps({"target_weights": "0123456789abcdef"}))
    with pytest.raises(
        ExportError, match="distilled from another training of the target .weights 0123456789abcdef"
    ):
        export(draft, tiny_target, REPO, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_target, draft_dir, capsys):
    out = tmp_path / "out"
    code = main(["export", "--draft", str(draft_dir), "--target", str(tiny_target), "--repo-id", REPO,
                 "--out", str(out), "--dry-run", "--push"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert f"{REPOS['target']}  ←  target/" in printed and "model.safetensors" in printed
    assert "nothing uploaded" in printed


def test_push_uploads_base_then_target_then_draft(exported):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs.get("exist_ok")))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, Path(folder_path).name))

    from modeling_padrec.hub import ExportPlan

    plan = ExportPlan(**json.loads((exported / "export.json").read_text()))
    push(plan, exported, api=FakeApi())
    assert calls == [("create", REPOS["base"], True), ("upload", REPOS["base"], "base"),
                     ("create", REPOS["target"], True), ("upload", REPOS["target"], "target"),
                     ("create", REPO, True), ("upload", REPO, "draft")]  # fmt: skip


HUB_SCRIPT = r"""
import contextlib, io, json, sys
sys.modules["modeling_padrec"] = None  # the package must not be needed
snippet = sys.argv[1]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    exec(snippet, globals())
print(json.dumps({
    "draft_module": type(draft).__module__,
    "target_class": type(target).__name__,
    "lossless": bool(torch.equal(fast, plain)),
    "output_ids": fast[0, inputs["input_ids"].shape[1]:].tolist(),
    "prompt_ids": inputs["input_ids"][0].tolist(),
    "decoded": out.getvalue().strip(),
    "blocked": "modeling_padrec" not in [m for m in sys.modules if sys.modules[m] is not None],
}))
"""


def _card_snippet(exported: Path) -> str:
    text = (exported / "draft" / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_load_by_repo_id_through_an_offline_cache_in_a_process_without_padrec(
    tmp_path, exported, tiny_target, synthetic_dir
):
    home = fake_hub_cache(exported, tmp_path / "hf_home", REPOS)
    snippet = _card_snippet(exported)
    assert f'"{REPO}"' in snippet and f'"{REPOS["target"]}"' in snippet
    result = run_isolated(HUB_SCRIPT, [snippet], tmp_path, extra_env={"HF_HOME": str(home)})
    assert result["draft_module"].startswith("transformers_modules.")
    assert result["lossless"] and result["blocked"] and "<|sep|>" in result["decoded"]
    assert any((tmp_path / "hf_modules").rglob("modeling_padrec_draft.py"))
    assert any((tmp_path / "hf_modules").rglob("custom_generate/generate.py")) or any(
        (tmp_path / "hf_modules").rglob("tree.py")
    )
    # the recipe's lists are padrec's engine's, token for token
    target = load_target(tiny_target)
    rec = Recommender(target, load_dataset(synthetic_dir))
    assert result["output_ids"] == rec.engine().generate(result["prompt_ids"]).output_ids


def test_load_from_the_exported_folders_in_a_process_without_padrec(tmp_path, exported):
    home = fake_hub_cache(exported, tmp_path / "hf_home", REPOS)  # the adapter's base is named by repo id
    snippet = _card_snippet(exported).replace(f'"{REPOS["target"]}"', repr(str(exported / "target")))
    snippet = snippet.replace(f'"{REPO}"', repr(str(exported / "draft")))
    result = run_isolated(HUB_SCRIPT, [snippet], tmp_path, extra_env={"HF_HOME": str(home)})
    assert result["lossless"] and result["blocked"]


def test_padrec_loaders_accept_repo_ids_offline(tmp_path, exported, monkeypatch, synthetic_dir):
    home = fake_hub_cache(exported, tmp_path / "hf_home", REPOS)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    target = load_target(REPOS["target"])
    tm = target.check_dataset(load_dataset(synthetic_dir))
    draft = load_draft(REPO, tm)
    assert draft.config.max_draft_steps == 3
    with pytest.raises(Exception, match="not a local target directory, and not available from the Hub"):
        load_target("org/not-there")


def test_readme_hub_section_is_the_card_snippet():
    from modeling_padrec.hub import usage_snippet

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use from the Hub", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0].rstrip("\n")
    prompt = re.search(r'^prompt = "(.*)"$', shown, re.M).group(1)
    assert shown == usage_snippet(REPO, REPOS["target"], prompt)


CATALOG_SCRIPT = r"""
import json, sys
import torch
sys.modules["modeling_padrec"] = None
from peft import AutoPeftModelForCausalLM
from transformers import AutoModel
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

repo, target_repo, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
target = AutoPeftModelForCausalLM.from_pretrained(target_repo).eval()
draft = AutoModel.from_pretrained(repo, trust_remote_code=True)
items = load_state_dict(cached_file(repo, "catalog.safetensors"))["item_token_ids"].long()
taken = {tuple(r) for r in items.tolist()}
new = next([*items[0, :-1].tolist(), t] for t in items[:, -1].unique().tolist() if (*items[0, :-1].tolist(), t) not in taken)
ids = torch.tensor([prompt])
engine = dict(custom_generate=repo, trust_remote_code=True, assistant_model=draft)
out = {"extended": target.generate(ids, **engine, catalog=torch.cat([items, torch.tensor([new])]))[0].tolist(),
       "same": target.generate(ids, **engine)[0].tolist()}
for name, bad in (("swapped", items[[1, 0, *range(2, len(items))]]), ("fewer", items[:-1])):
    try:
        target.generate(ids, **engine, catalog=bad)
        out[name] = "accepted"
    except ValueError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_a_new_catalog_at_call_time_is_checked(tmp_path, exported):
    home = fake_hub_cache(exported, tmp_path / "hf_home", REPOS)
    catalog = json.loads((exported / "draft" / "catalog.json").read_text())
    assert len(catalog) > 2 and all(t.startswith("<a_") for t in (v[0] for v in catalog.values()))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported / "target")
    prompt = tokenizer("<s>" + "".join(catalog["0"]) + "<|rec|>", add_special_tokens=False)["input_ids"]
    result = run_isolated(CATALOG_SCRIPT, [REPO, REPOS["target"], json.dumps(prompt)], tmp_path,
                          extra_env={"HF_HOME": str(home)})  # fmt: skip
    assert result["extended"][: len(prompt)] == prompt and len(result["extended"]) > len(prompt)
    for name in ("swapped", "fewer"):
        assert result[name].startswith("catalog: not the catalog the model was trained on"), result[name]
