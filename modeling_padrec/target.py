"""The list-wise target: a causal LM over semantic-ID tokens, LoRA-tuned with PEFT.

A target directory is a plain PEFT adapter folder that standard tools load on their own::

    tok = AutoTokenizer.from_pretrained(OUT)
    model = AutoPeftModelForCausalLM.from_pretrained(OUT)

plus ``padrec_target.json`` (how prompts are built) and ``train_log.jsonl``. With a preset base the base model
lives in ``OUT/base`` and the adapter config points at it by absolute path; :func:`load_target` also finds it
when the folder has been moved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from .data import ItemIndex, RecDataset
from .errors import TargetError, first_line
from .fileio import staged_dir
from .tokenization import TokenMap, add_rec_tokens, build_tokenizer

# From transformers 5.25, ``from_pretrained`` swaps layers for Hub kernels by default (fetched from the Hub on a
# GPU). padrec loads plain torch layers: the same forward on every 5.x and no network at load time.
LOAD_OPTIONS = {"dtype": torch.float32, "use_kernels": False}

TARGET_META = "padrec_target.json"

# Qwen2-architecture bases built from config (nothing is downloaded). qwen2-small is the CPU reference.
PRESETS: dict[str, dict] = {
    "qwen2-tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "qwen2-small": dict(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
# qwen2-small's width at twice its depth: the study's deeper target (a costlier target per draft step).
PRESETS["qwen2-deep"] = {**PRESETS["qwen2-small"], "num_hidden_layers": 8}


@dataclass
class TargetMeta:
    """What padrec needs beyond the PEFT files: how to build prompts and which catalog the tokens encode."""

    base: str
    dataset: str
    levels: int
    history_len: int
    list_len: int
    token_map_fingerprint: str
    preset: str | None = None
    train: dict = field(default_factory=dict)
    format_version: int = 1
    catalog: dict | None = None  # which item has which codes (modeling_padrec.catalog); None: made before it

    def save(self, folder: Path) -> None:
        (folder / TARGET_META).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> TargetMeta:
        path = folder / TARGET_META
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise TargetError(f"{folder}: not a padrec target directory (no {TARGET_META})") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise TargetError(f"{path}: unreadable target metadata ({e})") from None


def is_preset(base: str) -> bool:
    return base in PRESETS


def build_preset_base(preset: str, tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM sized by ``preset`` over ``tokenizer``'s vocabulary."""
    if preset not in PRESETS:
        raise TargetError(
            f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)} or pass a Hub id / path"
        )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    _set_generation_defaults(model, tokenizer)
    return model


def load_base(base: str, index: ItemIndex, seed: int = 0):
    """(model, tokenizer, ids of padrec's tokens) for a preset name, a Hub id or a local model folder."""
    if is_preset(base):
        tokenizer = build_tokenizer(index)
        model = build_preset_base(base, tokenizer, seed)
        new_ids = add_rec_tokens(tokenizer, index)  # already present: returns their ids
        return model, tokenizer, new_ids
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, **LOAD_OPTIONS)
    except OSError as e:
        raise TargetError(f"--base {base}: cannot load a causal LM and tokenizer from it ({e})") from None
    new_ids = add_rec_tokens(tokenizer, index)
    model.resize_token_embeddings(len(tokenizer))
    _set_generation_defaults(model, tokenizer)
    return model, tokenizer, new_ids


def _set_generation_defaults(model, tokenizer) -> None:
    gc = model.generation_config
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.do_sample = False


def lora_config(
    new_token_ids: list[int], r: int = 16, alpha: int = 32, dropout: float = 0.05, tied: bool = False
):
    """LoRA on every linear layer of the blocks; padrec's token embeddings and the LM head trained too.

    With tied input/output embeddings the trainable token rows *are* the head's rows for those tokens, so the
    head is not saved separately (PEFT cannot wrap a tied head in both ways at once).
    """
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        trainable_token_indices={"embed_tokens": list(new_token_ids)},
        modules_to_save=None if tied else ["lm_head"],
    )


def save_target(
    peft_model,
    tokenizer,
    meta: TargetMeta,
    out: Path,
    base_dir: Path | None = None,
    extra_files: dict | None = None,
):
    """Write the target folder in a temp dir beside ``out``, then move it into place.

    ``base_dir``: a saved preset base (saved before PEFT wrapped it), copied to ``out/base``.
    """
    out = Path(out).absolute()
    with staged_dir(out) as tmp:
        peft_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if base_dir is not None:
            shutil.copytree(base_dir, tmp / "base")
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = str(out / "base")
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        meta.save(tmp)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)


@dataclass
class Target:
    """A loaded target: the PEFT model (eval mode), its tokenizer, metadata and token map."""

    model: torch.nn.Module
    tokenizer: object
    meta: TargetMeta
    path: Path
    unseen_items: int = 0  # items of the checked dataset's catalog the target never saw (check_dataset)

    def token_map(self, index: ItemIndex) -> TokenMap:
        tm = TokenMap.from_tokenizer(self.tokenizer, index, vocab_size=self.model.config.vocab_size)
        if tm.fingerprint() != self.meta.token_map_fingerprint:
            raise TargetError(
                f"{self.path}: the target was trained on another catalog's tokens "
                f"(fingerprint {self.meta.token_map_fingerprint}, this dataset gives {tm.fingerprint()})"
            )
        return tm

    def check_dataset(self, dataset: RecDataset) -> TokenMap:
        """The token map of ``dataset`` for this target, once the data is known to fit it: the same token
        layout and the catalog the target was trained on (or that catalog with items appended: their number is
        left in ``unseen_items``). Raises :class:`TargetError` / :class:`~modeling_padrec.catalog.CatalogError`."""
        from .catalog import check_catalog

        if dataset.index.levels != self.meta.levels:
            raise TargetError(
                f"{self.path}: the target's items have {self.meta.levels} tokens, "
                f"{dataset.path} has {dataset.index.levels}"
            )
        tm = self.token_map(dataset.index)
        self.unseen_items = check_catalog(
            self.meta.catalog, dataset.index, f"target {self.path}", str(dataset.path)
        )
        return tm


# weights_digest's results in this process, keyed by each file's path, size, inode and modification time: a
# study group asks for its target's digest several times, and an LLM-size target takes seconds to hash.
_DIGESTS: dict[tuple, str] = {}


def weights_digest(folder: str | Path) -> str:
    """A short hash of every ``.safetensors`` file under a target folder (the adapter and a preset base): two
    trainings of a target are the same instance only if it is equal. Hashed once per process while the files
    stay as they are (a rewritten file has another modification time, so it is hashed again)."""
    folder = Path(folder).resolve()
    files = sorted(folder.rglob("*.safetensors"))
    stats = tuple((p.relative_to(folder).as_posix(), *_identity(p)) for p in files)
    key = (str(folder), stats)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for path, (name, *_) in zip(files, stats, strict=True):
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_ino, st.st_mtime_ns


def resolve_folder(path: str | Path, error: type[Exception], what: str) -> Path:
    """A local folder as is; otherwise a Hub repo id, fetched through huggingface_hub's cache (offline mode
    reads the cache only)."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists() or str(path).count("/") != 1:
        raise error(f"{path}: no such {what} directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(str(path)))
    except (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as e:
        raise error(f"{path}: not a local {what} directory, and not available from the Hub ({e})") from None


def load_target(path: str | Path, device: str | torch.device = "cpu", merge_lora: bool = False) -> Target:
    """Load a target folder written by ``padrec train-target`` (or exported to the Hub: pass its repo id).

    ``merge_lora``: fold the LoRA weights into the base (PEFT's ``merge_and_unload``; the folder is untouched),
    so every forward runs plain ``transformers`` layers. Greedy lists stay the same up to float rounding."""
    from peft import PeftConfig, PeftModel
    from safetensors import SafetensorError

    folder = resolve_folder(path, TargetError, "target")
    if not (folder / "adapter_config.json").is_file():
        raise TargetError(f"{folder}: not a padrec target directory (no adapter_config.json)")
    meta = TargetMeta.load(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path
        if (folder / "base").is_dir() and (meta.preset or not Path(base_path).exists()):
            base_path = str(folder / "base")  # preset base travels with the folder (an exported one does not)
        base = AutoModelForCausalLM.from_pretrained(base_path, **LOAD_OPTIONS)
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise TargetError(f"{folder}: cannot load the target ({first_line(e)})") from None
    if merge_lora:
        model = model.merge_and_unload()
    model.to(device).eval()
    return Target(model=model, tokenizer=tokenizer, meta=meta, path=folder)
