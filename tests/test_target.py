"""Target folders: written by ``padrec train-target``, loadable by plain transformers + PEFT, movable, Hub bases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from modeling_padrec.data import load_dataset
from modeling_padrec.decoding import Recommender
from modeling_padrec.errors import TargetError
from modeling_padrec.target import TARGET_META, load_target
from modeling_padrec.tokenization import TokenMap, rec_tokens
from modeling_padrec.training import TargetTrainArgs, train_target

_SCRIPT = Path(sys.executable).with_name("padrec")
PADREC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "modeling_padrec.cli"]

# Loads a target folder with nothing but transformers + PEFT, in a fresh interpreter, and reports what it got.
STANDALONE = """
import json, sys, torch
from transformers import AutoTokenizer
from peft import AutoPeftModelForCausalLM
out, prompt = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(out)
model = AutoPeftModelForCausalLM.from_pretrained(out).eval()
ids = torch.tensor([prompt])
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, -1]
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
print(json.dumps({
    "tokenizer_len": len(tok),
    "embeddings": model.get_input_embeddings().weight.shape[0],
    "logits": logits.tolist(),
    "generated": gen[0, ids.shape[1]:].tolist(),
    "padrec_imported": "modeling_padrec" in sys.modules,
}))
"""

HUB_WORDS = ["<|endoftext|>", "<unk>", "hello", "world", "the"]


def standalone_load(folder: Path, prompt: list[int], cwd: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(folder), json.dumps(prompt)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference(target, prompt: list[int]) -> dict:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = target.model(input_ids=ids).logits[0, -1]
        gen = target.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )
    return {"logits": logits, "generated": gen[0, ids.shape[1] :].tolist()}


def assert_same_model(got: dict, ref: dict):
    assert torch.allclose(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"]), atol=1e-5)
    assert got["generated"] == ref["generated"]


def make_hub_base(folder: Path, tie: bool = False) -> Path:
    """A tiny Qwen2ForCausalLM and a word-level tokenizer (no pad, no bos), saved like a Hub checkpoint."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(HUB_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    tok.save_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(HUB_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(synthetic_dir):
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="module")
def cli_target(tmp_path_factory, synthetic_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "target"
    args = ["train-target", "--data", synthetic_dir, "--out", out, "--base", "qwen2-tiny", "--max-steps", 2]
    args += ["--batch-size", 4, "--list-len", 3, "--history-len", 8, "--seed", 3]
    proc = subprocess.run([*PADREC, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"target written to {out}" in proc.stderr
    return out


@pytest.fixture(scope="module")
def hub_target(tmp_path_factory, synthetic_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hub")
    base = make_hub_base(root / "base")
    out = train_target(
        TargetTrainArgs(data=str(synthetic_dir), out=str(root / "target"), base=str(base), max_steps=2,
                        batch_size=4, list_len=3)
    )  # fmt: skip
    return base, out


def test_train_target_folder_contents(cli_target, dataset):
    names = {p.name for p in cli_target.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert {TARGET_META, "train_log.jsonl", "base"} <= names
    assert {"config.json", "model.safetensors"} <= {p.name for p in (cli_target / "base").iterdir()}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in cli_target.rglob("*"))
    leftovers = [p.name for p in cli_target.parent.iterdir() if p != cli_target]
    assert leftovers == []  # no work dir, no temp dir
    meta = json.loads((cli_target / TARGET_META).read_text())
    assert meta["preset"] == "qwen2-tiny" and meta["list_len"] == 3 and meta["history_len"] == 8
    assert meta["levels"] == dataset.index.levels and meta["dataset"] == "synthetic"
    assert meta["train"]["seed"] == 3 and meta["train"]["lora_steps"] == 2
    adapter = json.loads((cli_target / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(cli_target / "base")
    target = load_target(cli_target)
    assert (
        meta["token_map_fingerprint"]
        == TokenMap.from_tokenizer(target.tokenizer, dataset.index).fingerprint()
    )


def test_target_loads_with_plain_transformers_and_peft(cli_target, dataset, tmp_path):
    target = load_target(cli_target)
    rec = Recommender(target, dataset)
    prompt = rec.prompt(dataset.eval_users("test")[0], "test")
    got = standalone_load(cli_target, prompt, cwd=tmp_path)
    assert got["padrec_imported"] is False
    assert got["tokenizer_len"] == len(target.tokenizer) == got["embeddings"]
    assert len(got["generated"]) >= 1
    assert_same_model(got, reference(target, prompt))


def test_moved_target_still_loads(cli_target, dataset, tmp_path):
    target = load_target(cli_target)
    rec = Recommender(target, dataset)
    prompt = rec.prompt(dataset.eval_users("test")[1], "test")
    ref = reference(target, prompt)
    moved = tmp_path / "elsewhere" / "my-target"
    shutil.copytree(cli_target, moved)
    hidden = cli_target.with_name("hidden-while-testing")
    cli_target.rename(hidden)  # the absolute base path in adapter_config.json no longer exists
    try:
        again = load_target(moved)
        assert_same_model(reference(again, prompt), ref)
        r = Recommender(again, dataset).recommend(dataset.eval_users("test")[1])
        assert len(set(r.items)) == 3 and None not in r.items
    finally:
        hidden.rename(cli_target)


def test_load_target_errors(cli_target, tmp_path):
    with pytest.raises(TargetError, match="no such target directory"):
        load_target(tmp_path / "missing")
    with pytest.raises(TargetError, match="adapter_config.json"):
        load_target(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(cli_target, copy)
    (copy / TARGET_META).write_text("{not json")
    with pytest.raises(TargetError, match="unreadable target metadata"):
        load_target(copy)
    (copy / TARGET_META).unlink()
    with pytest.raises(TargetError, match=TARGET_META):
        load_target(copy)


def test_hub_base_trains_and_loads(hub_target, dataset, tmp_path):
    base, out = hub_target
    assert not (out / "base").exists()
    meta = json.loads((out / TARGET_META).read_text())
    assert meta["preset"] is None and meta["base"] == str(base)
    assert meta["train"]["pretrain_steps"] == 0 and meta["train"]["lora_steps"] == 2
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    target = load_target(out)
    tok = target.tokenizer
    assert len(tok) == len(HUB_WORDS) + len(rec_tokens(dataset.index))
    assert tok.convert_tokens_to_ids(HUB_WORDS) == list(range(len(HUB_WORDS)))  # the base vocabulary is kept
    assert tok.convert_tokens_to_ids("<|sep|>") == len(HUB_WORDS)
    model = target.model.get_base_model()
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    rec = Recommender(target, dataset)
    user = dataset.eval_users("test")[0]
    prompt = rec.prompt(user, "test")
    assert prompt[0] != tok.eos_token_id and prompt[-1] == rec.token_map.rec_id  # no bos token in this base
    r = rec.recommend(user)
    assert len(r.items) == 3 == len(set(r.items)) and None not in r.items
    got = standalone_load(out, prompt, cwd=tmp_path)
    assert got["tokenizer_len"] == got["embeddings"] == len(tok)
    assert_same_model(got, reference(target, prompt))


def test_hub_target_output_ends_with_eos(hub_target, dataset):
    """The Hub base's pad token is its EOS (add_rec_tokens sets it): the closing EOS must survive."""
    target = load_target(hub_target[1])
    rec, stock = Recommender(target, dataset), Recommender(target, dataset, engine="generate")
    assert rec.token_map.pad_id == rec.token_map.eos_id
    r, s = rec.recommend(dataset.eval_users("test")[0]), stock.recommend(dataset.eval_users("test")[0])
    assert r.output_ids == s.output_ids and r.output_ids[-1] == rec.token_map.eos_id
    assert len(r.output_ids) == s.target_forwards == rec.max_new_tokens  # stock: one forward per token
    assert r.target_forwards == r.extra["choices"]  # the engine: one per choice
    users = dataset.eval_users("test")[:4]
    assert stock.recommend_batch(users, batch_size=4)[r.user] == r.items == rec.recommend_batch(users)[r.user]


def test_hub_base_with_tied_embeddings(tmp_path, synthetic_dir):
    base = make_hub_base(tmp_path / "tied", tie=True)
    out = train_target(
        TargetTrainArgs(
            data=str(synthetic_dir), out=str(tmp_path / "t"), base=str(base), max_steps=1, batch_size=4
        )
    )
    assert load_target(out).model.get_base_model().config.tie_word_embeddings


def test_weights_digest_hashes_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    import modeling_padrec.target as target_module

    folder = tmp_path / "t"
    (folder / "base").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"adapter")
    (folder / "base" / "model.safetensors").write_bytes(b"base")
    hashed = []
    real = target_module.hashlib.sha256

    def counting():
        hashed.append(1)
        return real()

    monkeypatch.setattr(target_module.hashlib, "sha256", counting)
    first = target_module.weights_digest(folder)
    assert target_module.weights_digest(folder) == first
    assert target_module.weights_digest(str(folder) + "/") == first
    assert len(hashed) == 1

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert target_module.weights_digest(copy) == first  # the same bytes under the same names
    (copy / "base" / "model.safetensors").rename(copy / "base" / "other.safetensors")
    assert target_module.weights_digest(copy) != first  # a file's name is part of what is hashed

    (folder / "adapter_model.safetensors").write_bytes(b"adapteR")  # another training, same size, same file
    os.utime(folder / "adapter_model.safetensors", ns=(1, 1))  # even one with an old modification time
    assert target_module.weights_digest(folder) != first
