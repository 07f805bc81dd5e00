"""Hub packaging: ``padrec export`` turns a trained draft and its target into Hub model repositories.

``OUT/`` gets one folder per repository, each complete as uploaded:

* ``draft/`` (``--repo-id``): remote-code files, ``config.json`` with ``auto_map``, ``model.safetensors``,
  ``generation_config.json``, ``README.md`` (model card);
* ``target/`` (``--target-repo-id``, default ``<repo-id>-target``): the PEFT LoRA adapter, tokenizer,
  ``padrec_target.json`` and its card; ``adapter_config.json`` names the base by repo id;
* ``base/`` (preset targets only, ``--base-repo-id``, default ``<repo-id>-base``): the small Qwen2 the adapter
  sits on (a preset is built from config, so it has no Hub id of its own);

plus ``export.json`` (which folder goes to which repo). Cards are rendered from ``hub_cards/*.md`` with
huggingface_hub's :class:`~huggingface_hub.ModelCard` / :class:`~huggingface_hub.ModelCardData`; the draft card's
evaluation comes from a ``padrec bench`` report or says the draft has not been benchmarked. Everything is
rendered into a staged folder and moved into place; ``--push`` uploads with :class:`~huggingface_hub.HfApi`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PadrecError
from .fileio import check_output_dir, staged_dir

CARDS = Path(__file__).resolve().parent.parent / "hub_cards"
TAGS = ["padrec", "recommendation", "generative-recommendation", "speculative-decoding", "semantic-ids"]
DRAFT_FILES = (
    "config.json",
    "configuration_padrec_draft.py",
    "modeling_padrec_draft.py",
    "model.safetensors",
    "generation_config.json",
)
# padrec's engine, shipped in the draft repo as transformers' custom_generate recipe (engine file → repo file)
ENGINE_FILES = {
    name: name
    for name in ("trie.py", "scoring.py", "acceptance.py", "proposers.py", "tree.py", "loop.py", "batch.py")
}
ENGINE_FILES["custom_generate.py"] = "generate.py"
TARGET_FILES = ("adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "padrec_target.json")
BASE_FILES = ("config.json", "model.safetensors", "generation_config.json")


class ExportError(PadrecError):
    """Inputs that cannot become a consistent pair of Hub repositories."""


@dataclass
class ExportPlan:
    """Where each rendered folder goes on the Hub."""

    repos: dict[str, str]  # folder name → repo id
    bench: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


def card_template(name: str) -> Path:
    path = CARDS / f"{name}.md"
    if not path.is_file():
        raise ExportError(f"{path}: model-card template missing (is padrec installed from its source tree?)")
    return path


def check_repo_id(repo_id: str, flag: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"{flag} {repo_id!r}: not a valid Hub repo id ({e})") from None
    if "/" not in repo_id:
        raise ExportError(f"{flag} {repo_id!r}: expected ORG/NAME")
    return repo_id


# --------------------------------------------------------------------------- evaluation from a bench report


def bench_method(report: dict, draft_dir: Path, report_path: str) -> tuple[str, dict]:
    """The report's entry for ``draft_dir`` (matched by the folder the bench loaded)."""
    for name, m in report.get("methods", {}).items():
        source = m.get("source")
        if m.get("kind") == "draft" and source and Path(source).resolve() == draft_dir.resolve():
            return name, m
    raise ExportError(f"--bench {report_path}: the report has no method for the draft {draft_dir}")


def evaluation_markdown(report: dict | None, method: str | None, report_path: str | None) -> str:
    """The card's evaluation section, every figure copied from ``report`` (nothing typed by hand)."""
    if report is None:
        return (
            "**This draft has not been benchmarked.** No `padrec bench` report was given when it was exported, "
            "so this card makes no speed claim. Measure it with `padrec bench --target TARGET --draft DRAFT "
            "--data DATASET --out REPORT_DIR` and export again with `--bench REPORT_DIR/report.json`."
        )
    hw, cfg = report["hardware"], report["config"]
    m = report["methods"][method]
    source = m.get("source")
    mine = [n for n, row in report["methods"].items() if row.get("kind") == "engine" and source
            and row.get("source") == source]  # fmt: skip
    device = hw["device"] + (f" ({hw['gpu']})" if "gpu" in hw else "")
    lines = [
        f"From a `padrec bench` report (`{Path(report_path).name}`): {cfg['measured_requests']} "
        f"{cfg['split']} users of `{Path(cfg['data']).name}`, every method run on the same requests, interleaved "
        f"in one process, {cfg['warmup']} warm-up requests left out. Hardware: {hw['cpu']}, "
        f"{hw['cpu_count']} CPUs, {hw['torch_threads']} torch threads, device {device}, torch {hw['torch']}, "
        f"transformers {hw['transformers']}.",
        "",
        f"This draft through stock assisted generation is the method `{method}` ({m['depth']} tokens per round)"
        + (
            "; through padrec's engine (what `custom_generate` runs) " + " and ".join(f"`{n}`" for n in mine)
            if mine
            else ""
        )
        + ". speedup = median over requests of AR latency ÷ the method's latency (p10–p90 in brackets); τ = tokens "
        "per target forward; identical = share of requests whose output equals plain greedy decoding.",
        "",
        "| method | speedup | p10 | p90 | latency ms (median) | τ | identical | R@10 | N@10 | draft ms / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["methods"].items():
        label = f"**{name}** (this draft)" if name == method or name in mine else name
        lines.append(
            f"| {label} | {row['speedup']} | {row['speedup_p10']} | {row['speedup_p90']} "
            f"| {row['latency_ms_median']} | {row['tau']} | {row['identical']} | {row['recall@10']} "
            f"| {row['ndcg@10']} | {'–' if row['draft_ms_per_step'] is None else row['draft_ms_per_step']} |"
        )
    steps = m["alpha_by_step"]
    lines += [
        "",
        "Acceptance of this draft by draft step k (α_k: accepted, given steps before k were accepted):",
        "",
        "| " + " | ".join(f"k={k}" for k in range(len(steps))) + " |",
        "|" + "---|" * len(steps),
        "| " + " | ".join(str(a) for a in steps) + " |",
        "",
        "and by the item slot of the drafted position (code level a, b, …; sep = separator; other = end of list):",
        "",
        "| " + " | ".join(m["alpha_by_slot"]) + " |",
        "|" + "---|" * len(m["alpha_by_slot"]),
        "| " + " | ".join(str(a) for a in m["alpha_by_slot"].values()) + " |",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- cards


def _rows(settings: dict) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in settings.items())


def usage_snippet(draft_repo: str, target_repo: str, prompt: str) -> str:
    """The exact code the cards and the README show (and the tests run, offline, by repo id)."""
    return f'''import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{target_repo}")
target = AutoPeftModelForCausalLM.from_pretrained("{target_repo}").eval()
draft = AutoModel.from_pretrained("{draft_repo}", trust_remote_code=True)

# a user's history as item tokens, then <|rec|>
prompt = "{prompt}"
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
engine = dict(custom_generate="{draft_repo}", trust_remote_code=True)  # padrec's engine, from the draft repo
fast = target.generate(**inputs, **engine, assistant_model=draft)  # catalog-constrained, PAD-Rec drafting
tree = target.generate(**inputs, **engine, assistant_model=draft, tree_width=3, tree_budget=16)
plain = target.generate(**inputs, **engine, catalog="{draft_repo}")  # no draft: the target decides every choice
assert torch.equal(fast, plain) and torch.equal(tree, plain)  # the draft never changes the output
print(tokenizer.decode(fast[0, inputs["input_ids"].shape[1]:]))'''


def render_card(template: str, data: dict, **values):
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.from_template(
        ModelCardData(**data), template_path=str(card_template(template)), **values
    )
    text = str(card)
    if "{{" in text or "}}" in text:
        raise ExportError(f"hub_cards/{template}.md: a placeholder was left unrendered")
    return card


def example_prompt(target, data: str | None) -> str:
    """The first test user's prompt as text, when the dataset is at hand; else a generic valid prefix."""
    from .data import load_dataset
    from .decoding import Recommender

    path = data or target.meta.train.get("data")
    if path and Path(path).exists():
        dataset = load_dataset(path)
        rec = Recommender(target, dataset)
        user = dataset.eval_users("test")[0]
        return "".join(target.tokenizer.convert_ids_to_tokens(rec.prompt(user, "test")))
    return (target.tokenizer.bos_token or "") + "<|rec|>"


# --------------------------------------------------------------------------- export


def export(
    draft_dir: str | Path,
    target_dir: str | Path,
    repo_id: str,
    out: str | Path | None,
    bench: str | Path | None = None,
    target_repo_id: str | None = None,
    base_repo_id: str | None = None,
    license: str = "apache-2.0",
    data: str | None = None,
    study: str | Path | None = None,
) -> tuple[ExportPlan, Path]:
    """Render the repositories into ``out`` (staged, then moved into place; ``out=None``: a temp folder the
    caller removes). ``study``: the position-signal study's ``report.json``, cited in the draft's card. Returns
    the plan and the folder."""
    from .draft import load_draft
    from .target import load_target, weights_digest

    draft_dir, target_dir = Path(draft_dir), Path(target_dir)
    check_repo_id(repo_id, "--repo-id")
    target_repo_id = check_repo_id(target_repo_id or f"{repo_id}-target", "--target-repo-id")
    for name in DRAFT_FILES:
        if not (draft_dir / name).is_file():
            raise ExportError(f"--draft {draft_dir}: not a saved PAD-Rec draft ({name} is missing)")
    target = load_target(target_dir)
    config = load_draft(draft_dir).config  # a damaged or foreign draft folder stops here, with one clear line
    if config.token_map_fingerprint != target.meta.token_map_fingerprint:
        raise ExportError(
            f"--draft {draft_dir}: built for token layout {config.token_map_fingerprint}, the target "
            f"{target_dir} has {target.meta.token_map_fingerprint}"
        )
    if config.catalog != target.meta.catalog:
        raise ExportError(
            f"--draft {draft_dir}: trained on catalog {(config.catalog or {}).get('fingerprint', '(unrecorded)')}, "
            f"the target {target_dir} on {(target.meta.catalog or {}).get('fingerprint', '(unrecorded)')}"
        )
    draft_meta = _read_json(draft_dir / "padrec_draft.json")
    distilled_from = draft_meta.get("target_weights")
    if distilled_from and distilled_from != (weights := weights_digest(target.path)):
        raise ExportError(
            f"--draft {draft_dir}: distilled from another training of the target (weights {distilled_from}), "
            f"not from {target_dir} (weights {weights})"
        )
    report = method = depth = None
    if bench is not None:
        try:
            report = json.loads(Path(bench).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ExportError(f"--bench {bench}: cannot read a bench report ({e})") from None
        method, benched = bench_method(report, draft_dir, str(bench))
        depth = benched.get("depth")
        benched_target = report.get("config", {}).get("target")
        if benched_target and Path(benched_target).resolve() != target_dir.resolve():
            raise ExportError(f"--bench {bench}: measured with the target {benched_target}, not {target_dir}")
        if report["config"].get("list_len") != target.meta.list_len:
            raise ExportError(f"--bench {bench}: measured with lists of {report['config'].get('list_len')} items, "
                              f"the target writes {target.meta.list_len}")  # fmt: skip
    preset = target.meta.preset
    base_ref = target.model.peft_config["default"].base_model_name_or_path
    repos = {"draft": repo_id, "target": target_repo_id}
    if preset and not (target.path / "base").is_dir():
        raise ExportError(
            f"--target {target_dir}: a preset target without its base/ folder (an exported copy?); export from "
            "the folder padrec train-target wrote"
        )
    if preset:
        repos["base"] = check_repo_id(base_repo_id or f"{repo_id}-base", "--base-repo-id")
        base_ref = repos["base"]
    elif Path(base_ref).exists():
        raise ExportError(
            f"--target {target_dir}: its base model is the local folder {base_ref}; publish the base first and "
            "train the target from its Hub id"
        )
    plan = ExportPlan(repos, str(bench) if bench else None,
                      {"draft": str(draft_dir.absolute()), "target": str(target_dir.absolute())})  # fmt: skip
    levels = target.meta.levels
    snippet = usage_snippet(repo_id, target_repo_id, example_prompt(target, data))
    evaluation = evaluation_markdown(report, method, str(bench) if bench else None)
    dataset = target.meta.dataset
    study_text = _study_section(study, dataset, config)
    common = dict(license=license, library_name="transformers", tags=TAGS, datasets=[dataset])

    catalog = _catalog(target, data)

    def write(root: Path) -> None:
        _write_draft(root / "draft", draft_dir, config, draft_meta, common, repo_id, target_repo_id, snippet,
                     evaluation, dataset, levels, depth, study_text)  # fmt: skip
        _write_engine(root / "draft", catalog)
        _write_target(root / "target", target, common, base_ref, repos, snippet, dataset)
        if preset:
            _write_base(root / "base", target, common, repos, dataset)
        (root / "export.json").write_text(json.dumps(plan.__dict__, indent=2) + "\n")

    if out is None:
        root = Path(tempfile.mkdtemp(prefix="padrec-export-"))
        try:
            write(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return plan, root
    check_output_dir(out, "export.json")
    with staged_dir(out) as tmp:
        write(tmp)
    return plan, Path(out)


def _catalog(target, data: str | None):
    """The dataset (``--data``, else the one the target was trained from) after checking it is the target's
    catalog, and its token map."""
    from .data import load_dataset

    path = data or target.meta.train.get("data")
    if not path or not Path(path).exists():
        raise ExportError(
            "--data: the dataset the target was trained on is needed (its catalog ships in the draft repo); "
            f"{path or 'none is recorded'} is not at hand"
        )
    dataset = load_dataset(path)
    return dataset, target.check_dataset(dataset), target.meta.list_len


def _write_engine(folder: Path, catalog) -> None:
    """``custom_generate/`` (padrec's engine as a transformers recipe), ``catalog.safetensors`` (every item's
    code token ids, separator, EOS, list length: what the recipe reads) and ``catalog.json`` (item → code tokens,
    LC-Rec's ``index.json`` format)."""
    import torch
    from safetensors.torch import save_file

    from . import engine

    dataset, token_map, list_len = catalog
    source = Path(engine.__file__).parent
    (folder / "custom_generate").mkdir()
    for name, dest in ENGINE_FILES.items():
        shutil.copyfile(source / name, folder / "custom_generate" / dest)
    tables = {
        "item_token_ids": token_map.item_ids(dataset.index).to(torch.int32),
        "sep_token_id": torch.tensor(token_map.sep_id),
        "eos_token_id": torch.tensor(token_map.eos_id),
        "list_len": torch.tensor(list_len),
    }
    save_file(tables, folder / "catalog.safetensors", metadata={"format": "pt"})
    (folder / "catalog.json").write_text(json.dumps(dataset.index.to_json()) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _parameters(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return f"{n / 1e6:.2f}M"


def _study_section(study, dataset: str, config) -> str:
    from .study.report import card_section, variant_of

    if study is None:
        return "Not cited: exported without the position-signal study's report (`padrec export --study`)."
    try:
        report = json.loads(Path(study).read_text())
        report["factors"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"--study {study}: cannot read a study report ({type(e).__name__}: {e})") from None
    variant = variant_of(config.use_item_position, config.use_step_position, config.step_gate)
    return card_section(
        report, dataset, variant, Path(study).name if Path(study).is_absolute() else str(study)
    )


def _write_draft(folder, draft_dir, config, meta, common, repo_id, target_repo_id, snippet, evaluation, dataset,
                 levels, depth=None, study=""):  # fmt: skip
    """``depth``: the draft length the bench measured; it becomes the repo's default so that the card's
    figures are what ``generate`` does out of the box."""
    folder.mkdir(parents=True)
    for name in DRAFT_FILES:
        shutil.copyfile(draft_dir / name, folder / name)
    generation = json.loads((folder / "generation_config.json").read_text())
    depth = depth or generation.get("num_assistant_tokens", config.max_draft_steps)
    generation["num_assistant_tokens"] = depth
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    args = meta.get("args", {})
    training = {
        "target": f"`{target_repo_id}`"
        + (f" (weights digest `{meta['target_weights']}`)" if meta.get("target_weights") else ""),
        "dataset": f"`{dataset}` (training split only)",
        "unrolled draft steps in training (K)": config.max_draft_steps,
        "tokens drafted per round (generation_config.json)": depth,
        "item-slot embedding": config.use_item_position,
        "draft-step embedding": (
            f"True ({'context-gated' if config.step_gate == 'context' else 'ungated'})"
            if config.use_step_position
            else False
        ),
        "forced tokens read": (
            "the feature their run started from (`forced_inputs=block`: the engine reads a drafted choice and "
            "its forced run in one forward)"
            if getattr(config, "forced_inputs", "chain") == "block"
            else "the feature predicted before each (`forced_inputs=chain`)"
        ),
        **({"started from": f"`{args['init_from']}`"} if args.get("init_from") else {}),
        "training steps": args.get("max_steps", "unknown"),
        "batch size": args.get("batch_size", "unknown"),
        "learning rate": args.get("lr", "unknown"),
        "training users": args.get("max_users", "all"),
        "seed": args.get("seed", "unknown"),
    }
    card = render_card(
        "draft",
        {**common, "pipeline_tag": "text-generation", "base_model": target_repo_id},
        repo_name=repo_id,
        target_repo_id=target_repo_id,
        depth=depth,
        trained_depth=config.max_draft_steps,
        hidden_size=config.hidden_size,
        heads=config.num_attention_heads,
        rec_vocab=len(config.rec_token_ids),
        levels=levels,
        item_position="on" if config.use_item_position else "off",
        step_position="on" if config.use_step_position else "off",
        parameters=_parameters(draft_dir / "model.safetensors"),
        usage=snippet,
        fingerprint=config.token_map_fingerprint,
        train_examples=meta.get("examples", "unknown"),
        dataset=dataset,
        training_rows=_rows(training),
        evaluation=evaluation,
        study=study,
    )
    card.save(folder / "README.md")


def _write_target(folder, target, common, base_ref, repos, snippet, dataset):
    folder.mkdir(parents=True)
    src = target.path
    for name in TARGET_FILES:
        shutil.copyfile(src / name, folder / name)
    adapter = json.loads((src / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = base_ref
    (folder / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    meta = json.loads((src / "padrec_target.json").read_text())
    for key in ("data", "out"):  # local paths of the machine it was trained on
        if key in meta.get("train", {}):
            meta["train"][key] = Path(meta["train"][key]).name
    (folder / "padrec_target.json").write_text(json.dumps(meta, indent=2) + "\n")
    train = target.meta.train
    training = {
        "base": f"`{base_ref}`" + (f" (preset `{target.meta.preset}`)" if target.meta.preset else ""),
        "dataset": f"`{dataset}`",
        "stage 1 (sequence pretraining, presets only) steps": train.get("pretrain_steps", 0),
        "stage 2 (LoRA, list-wise) steps": train.get("lora_steps", "unknown"),
        "LoRA rank": train.get("lora_r", "unknown"),
        "batch size": train.get("batch_size", "unknown"),
        "seed": train.get("seed", "unknown"),
    }
    evaluation = _target_evaluation(src)
    card = render_card(
        "target",
        {**common, "pipeline_tag": "text-generation", "base_model": base_ref},
        repo_name=repos["target"],
        repo_id=repos["target"],
        base_model=base_ref,
        history_len=target.meta.history_len,
        levels=target.meta.levels,
        list_len=target.meta.list_len,
        dataset=dataset,
        draft_repo_id=repos["draft"],
        usage=snippet,
        training_rows=_rows(training),
        evaluation=evaluation,
        fingerprint=target.meta.token_map_fingerprint,
    )
    card.save(folder / "README.md")


def _target_evaluation(src: Path) -> str:
    """From ``padrec evaluate --out`` reports beside the target folder (``eval-all.json``), if any."""
    report = _read_json(src.parent / "eval-all.json")
    if not report:
        return "No `padrec evaluate` report was found beside the target folder when it was exported."
    mp = report["mostpop"]
    return "\n".join(
        [
            f"`padrec evaluate` on {report['users']} {report['split']} users (report `eval-all.json`):",
            "",
            "| | R@5 | R@10 | N@5 | N@10 |",
            "|---|---|---|---|---|",
            f"| this model | {report['recall@5']} | {report['recall@10']} | {report['ndcg@5']} | {report['ndcg@10']} |",
            f"| MostPop | {mp['recall@5']} | {mp['recall@10']} | {mp['ndcg@5']} | {mp['ndcg@10']} |",
            "",
            f"valid_item_rate {report['valid_item_rate']}, distinct first items {report['distinct_first_items']}.",
        ]
    )


def _write_base(folder, target, common, repos, dataset):
    folder.mkdir(parents=True)
    src = target.path / "base"
    for name in BASE_FILES:
        shutil.copyfile(src / name, folder / name)
    config = json.loads((src / "config.json").read_text())
    card = render_card(
        "base",
        {**common, "pipeline_tag": "text-generation"},
        repo_name=repos["base"],
        target_repo_id=repos["target"],
        preset=target.meta.preset,
        layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        parameters=_parameters(src / "model.safetensors"),
        dataset=dataset,
        steps=target.meta.train.get("pretrain_steps", "unknown"),
        seed=target.meta.train.get("seed", "unknown"),
    )
    card.save(folder / "README.md")


# --------------------------------------------------------------------------- push / dry run


def describe(plan: ExportPlan, root: Path) -> str:
    lines = []
    for folder, repo in plan.repos.items():
        lines.append(f"{repo}  ←  {folder}/")
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                lines.append(f"    {path.relative_to(root / folder)}  ({path.stat().st_size:,} bytes)")
    return "\n".join(lines)


def push(plan: ExportPlan, root: Path, private: bool = False, api=None) -> list[str]:
    """Upload every folder to its repo (base first, so the adapter's base exists when the target lands)."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    urls = []
    for folder in ("base", "target", "draft"):
        if folder not in plan.repos:
            continue
        repo = plan.repos[folder]
        api.create_repo(repo, repo_type="model", exist_ok=True, private=private)
        info = api.upload_folder(
            repo_id=repo, folder_path=str(root / folder), repo_type="model", commit_message="padrec export"
        )
        urls.append(str(getattr(info, "commit_url", repo)))
        print(f"pushed {folder}/ → {repo}", file=sys.stderr)
    return urls
