"""The vanilla speculative-decoding baseline: a standalone small Qwen2 assistant distilled from the target.

Same data and recipe family as the PAD-Rec draft (the target's own constrained greedy lists on training
prompts, soft cross-entropy to the target's next-token distribution over the recommendation vocabulary), but a
plain causal LM: it reads tokens only, never the target's features, and is used through stock
``target.generate(..., assistant_model=assistant)``. The saved folder is an ordinary ``transformers`` model::

    assistant = AutoModelForCausalLM.from_pretrained(OUT)

with the target's tokenizer, a ``generation_config.json`` that sets the draft length (``num_assistant_tokens``,
constant schedule, no confidence cut-off) and ``padrec_assistant.json`` (arguments, token-layout fingerprint).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from .draft import causal_lm
from .draft_training import Distillation, rec_head
from .errors import PadrecError
from .fileio import staged_dir
from .target import LOAD_OPTIONS
from .tokenization import TokenMap
from .training import LOG_NAME

META_NAME = "padrec_assistant.json"


class AssistantError(PadrecError):
    """An assistant folder that cannot be used with this target."""


@dataclass
class AssistantTrainArgs:
    target_dir: str
    data: str
    out: str
    layers: int = 1
    depth: int = 5
    max_steps: int = 1000
    seed: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    max_users: int | None = 4000
    prompts_per_user: int = 1
    save_every: int = 200
    cache_dir: str | None = None


def assistant_config(target, layers: int) -> Qwen2Config:
    """The target's text config with ``layers`` decoder layers (same width, vocabulary, rope, special ids)."""
    text = causal_lm(target).config.get_text_config()
    settings = text.to_dict()
    for key in ("architectures", "auto_map", "_name_or_path", "transformers_version", "layer_types"):
        settings.pop(key, None)
    settings.update(num_hidden_layers=layers, tie_word_embeddings=False, use_cache=True)
    return Qwen2Config(**settings)


@torch.no_grad()
def new_assistant(target, layers: int = 1, seed: int = 0) -> Qwen2ForCausalLM:
    """An assistant with random decoder layers (from ``seed``) and the target's embedding and head rows,
    read by calling the target's (possibly PEFT-wrapped) modules so adapters contribute what they do at
    inference."""
    model = causal_lm(target)
    torch.manual_seed(seed)
    assistant = Qwen2ForCausalLM(assistant_config(target, layers)).to(model.device)
    vocab = torch.arange(assistant.config.vocab_size, device=model.device)
    assistant.get_input_embeddings().weight.copy_(model.get_input_embeddings()(vocab))
    head = model.get_output_embeddings()
    eye = torch.eye(assistant.config.hidden_size, device=model.device)
    assistant.lm_head.weight.copy_((head(eye) - head(torch.zeros_like(eye[:1]))).T)
    return assistant.eval()


def assistant_loss(assistant, batch, head, rec_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Soft CE to the target's distribution over the recommendation vocabulary, at every list position."""
    ids, feats = batch["input_ids"], batch["features"]
    lengths, prompt_lens = batch["lengths"], batch["prompt_lens"]
    weight, bias = (x.to(ids.device) for x in head)
    width = ids.shape[1]
    mask = (torch.arange(width, device=ids.device)[None] < lengths[:, None]).long()
    with torch.no_grad():
        target_dist = torch.softmax(feats[:, :-1].float() @ weight.T + bias, dim=-1)  # predicting x_{t+1}
    logits = assistant(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits[..., rec_ids.to(ids.device)]
    t = torch.arange(width - 1, device=ids.device)[None]
    scored = (t + 1 >= prompt_lens[:, None]) & (t + 1 < lengths[:, None])
    log_q = torch.log_softmax(logits.float(), dim=-1)
    loss = -(target_dist * log_q).sum(-1)[scored].mean()
    agree = (logits.argmax(-1) == target_dist.argmax(-1))[scored].float().mean().item()
    return loss, {"acc": agree}


def train_assistant(
    target_dir: str | Path,
    data: str | Path,
    out: str | Path,
    layers: int = 1,
    depth: int = 5,
    max_steps: int = 1000,
    seed: int = 0,
    *,
    accelerator=None,
    **options,
) -> Path:
    """Distil a ``layers``-layer Qwen2 assistant from the target in ``target_dir`` on ``data``; save to ``out``.

    ``options``: the other fields of :class:`AssistantTrainArgs`. The training prompts and the target's lists
    are the same ones ``padrec train-draft`` uses with the same ``max_users`` / ``seed``.
    """
    from accelerate import Accelerator

    args = AssistantTrainArgs(str(target_dir), str(data), str(out), layers, depth, max_steps, seed, **options)
    accelerator = accelerator or Accelerator()
    run = Distillation.prepare(args, accelerator)
    tm = run.recommender.token_map
    rec_ids = tm.rec_vocab()
    head = rec_head(run.target.model, rec_ids)
    rec_ids = torch.tensor(rec_ids)
    assistant, final = run.train(
        new_assistant(run.target, layers, seed).train(),
        "assistant",
        args,
        lambda m, b: assistant_loss(m, b, head, rec_ids),
        accelerator,
    )
    if accelerator.is_main_process:
        meta = {
            "args": asdict(args),
            "target_weights": run.target_weights,
            "examples": len(run.examples),
            "final": final,
            "token_map_fingerprint": tm.fingerprint(),
        }
        save_assistant(assistant.eval(), run.target.tokenizer, run.out, depth, meta, run.work / LOG_NAME)
    run.finish(accelerator)
    return run.out


def save_assistant(assistant, tokenizer, out: Path, depth: int, meta: dict, log: Path | None = None) -> None:
    """Write the assistant folder (model, tokenizer, generation config, metadata) staged, then moved into
    place."""
    gen = assistant.generation_config
    gen.num_assistant_tokens = depth
    gen.num_assistant_tokens_schedule = "constant"
    gen.assistant_confidence_threshold = 0.0  # a fixed-length chain, like the PAD-Rec draft
    with staged_dir(out) as tmp:
        assistant.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        if log is not None and log.is_file():
            shutil.copyfile(log, tmp / LOG_NAME)


def load_assistant(path: str | Path, token_map: TokenMap | None = None, device="cpu") -> Qwen2ForCausalLM:
    """Load an assistant (a folder written by :func:`train_assistant`, or its Hub repo id); check it was made for
    ``token_map``."""
    from .target import resolve_folder

    folder = resolve_folder(path, AssistantError, "assistant")
    if not (folder / META_NAME).is_file():
        raise AssistantError(f"{folder}: not a padrec assistant folder (no {META_NAME})")
    meta = json.loads((folder / META_NAME).read_text())
    if token_map is not None and meta.get("token_map_fingerprint") != token_map.fingerprint():
        raise AssistantError(
            f"{folder}: the assistant was distilled for another token layout "
            f"(fingerprint {meta.get('token_map_fingerprint')}, the target's is {token_map.fingerprint()})"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **LOAD_OPTIONS)
    except (OSError, ValueError) as e:
        raise AssistantError(f"{folder}: cannot load the assistant ({e})") from None
    return model.to(device).eval()
