"""Package side of the PAD-Rec draft: build one for a padrec target, check it, load it, read its statistics.

The model itself lives in the two remote-code files (``configuration_padrec_draft.py``,
``modeling_padrec_draft.py``) so a saved draft loads from the Hub without this package. Typical use::

    target = load_target(target_dir)
    token_map = target.check_dataset(dataset)
    draft = new_draft(target, token_map, depth=5).attach(target.model, token_map)
    out = target.model.generate(**inputs, assistant_model=draft, logits_processor=[constraint])
    draft.stats.summary()
"""

from __future__ import annotations

from pathlib import Path

import torch

from .configuration_padrec_draft import PadRecDraftConfig
from .modeling_padrec_draft import PadRecDraftError, PadRecDraftModel, PadRecDraftStats
from .target import LOAD_OPTIONS
from .tokenization import TokenMap

__all__ = [
    "PadRecDraftConfig",
    "PadRecDraftError",
    "PadRecDraftModel",
    "PadRecDraftStats",
    "causal_lm",
    "check_token_map",
    "draft_config",
    "load_draft",
    "new_draft",
    "target_features",
]


def causal_lm(target) -> torch.nn.Module:
    """The ``transformers`` causal LM under a :class:`~modeling_padrec.target.Target`, a PEFT model or itself."""
    model = getattr(target, "model", target) if not isinstance(target, torch.nn.Module) else target
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def draft_config(
    target,
    token_map: TokenMap,
    depth: int = 5,
    use_item_position: bool = True,
    use_step_position: bool = True,
    **overrides,
) -> PadRecDraftConfig:
    """A draft config sized like the target (hidden size, vocabulary, one decoder layer of its shape, its rope)
    whose head covers ``token_map.rec_vocab()`` and whose slots come from ``token_map.slot_table()``."""
    text = causal_lm(target).config.get_text_config()
    if token_map.vocab_size != text.vocab_size:
        raise PadRecDraftError(
            f"the token map covers {token_map.vocab_size} ids, the target's vocabulary has {text.vocab_size}"
        )
    rec_ids = token_map.rec_vocab()
    slots = token_map.slot_table()[rec_ids].tolist()
    rope = getattr(text, "rope_parameters", None)
    settings = dict(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 4 * text.hidden_size),
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", None),
        head_dim=getattr(text, "head_dim", None),
        hidden_act=getattr(text, "hidden_act", "silu"),
        rms_norm_eps=getattr(text, "rms_norm_eps", 1e-6),
        max_position_embeddings=getattr(text, "max_position_embeddings", 4096),
        rope_parameters=dict(rope) if isinstance(rope, dict) and "rope_type" in rope else None,
        rec_token_ids=rec_ids,
        rec_token_slots=slots,
        num_slots=token_map.num_slots,
        max_draft_steps=depth,
        use_item_position=use_item_position,
        use_step_position=use_step_position,
        token_map_fingerprint=token_map.fingerprint(),
        catalog=getattr(getattr(target, "meta", None), "catalog", None),  # a padrec Target's record, if any
        pad_token_id=token_map.pad_id,
        bos_token_id=token_map.bos_id,
        eos_token_id=token_map.eos_id,
    )
    settings.update(overrides)
    return PadRecDraftConfig(**settings)


@torch.no_grad()
def init_from_target(draft: PadRecDraftModel, target) -> None:
    """Copy the target's embedding rows and LM-head rows of the recommendation vocabulary into the draft.

    The rows are read by *calling* the target's modules (embedding on the ids, head on the identity matrix), so
    PEFT wrappers (trainable tokens, ``modules_to_save``, LoRA on the head) contribute what they would at
    inference. The draft's "other" embedding row is the mean of the target's rows outside the rec vocabulary.
    """
    model = causal_lm(target)
    device = draft.device
    rec_ids = torch.tensor(draft.config.rec_token_ids, device=device)
    embed = model.get_input_embeddings()
    vocab = torch.arange(draft.config.vocab_size, device=device)
    others = vocab[~torch.isin(vocab, rec_ids)]
    draft.embed_tokens.weight[:-1] = embed(rec_ids).to(draft.dtype)
    if len(others):
        draft.embed_tokens.weight[-1] = embed(others).mean(0).to(draft.dtype)
    head = model.get_output_embeddings()
    eye = torch.eye(draft.config.hidden_size, device=device, dtype=draft.dtype)
    weight_t = head(eye) - head(torch.zeros_like(eye[:1]))  # (hidden, vocab) = W^T, bias removed
    draft.lm_head.weight.copy_(weight_t[:, rec_ids].T)


def new_draft(
    target,
    token_map: TokenMap,
    depth: int = 5,
    use_item_position: bool = True,
    use_step_position: bool = True,
    seed: int = 0,
    step_gate: str = "context",
    forced_inputs: str = "chain",
) -> PadRecDraftModel:
    """An untrained draft for ``target`` (a Target, PEFT model or causal LM): random layer weights drawn from
    ``seed``, token embeddings and head rows copied from the target. Eval mode, on the target's device.
    ``step_gate``: ``"context"`` (PAD-Rec's gate) or ``"none"`` (the step embedding added ungated);
    ``forced_inputs``: ``"chain"`` or ``"block"`` (:class:`PadRecDraftConfig`)."""
    config = draft_config(target, token_map, depth, use_item_position, use_step_position, step_gate=step_gate,
                          forced_inputs=forced_inputs)  # fmt: skip
    model = causal_lm(target)
    torch.manual_seed(seed)
    draft = PadRecDraftModel(config).to(model.device)
    init_from_target(draft, model)
    return draft.eval()


def load_draft(
    path: str | Path,
    token_map: TokenMap | None = None,
    device: str | torch.device = "cpu",
    dataset=None,
):
    """Load a saved draft (a folder or a Hub repo id) with the package's classes (no ``trust_remote_code``
    needed); check ``token_map``, and that ``dataset``'s catalog is the one the draft was trained on."""
    from .target import resolve_folder

    path = resolve_folder(path, PadRecDraftError, "draft")
    if not (path / "config.json").is_file():
        raise PadRecDraftError(f"{path}: not a saved PAD-Rec draft (no config.json)")
    draft = _from_pretrained(path)
    if token_map is not None:
        draft.check_token_map(token_map)
    if dataset is not None:
        from .catalog import check_catalog

        check_catalog(draft.config.catalog, dataset.index, f"draft {path}", str(dataset.path))
    return draft.to(device).eval()


def _from_pretrained(path: Path) -> PadRecDraftModel:
    """The draft in ``path``, or one clear :class:`PadRecDraftError` for a damaged or foreign folder."""
    import json

    from safetensors import SafetensorError

    from .errors import first_line

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PadRecDraftError(f"{path / 'config.json'}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != PadRecDraftConfig.model_type:
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise PadRecDraftError(f"{path}: not a PAD-Rec draft (its config.json describes model_type {kind!r})")
    if not (path / "model.safetensors").is_file():
        raise PadRecDraftError(f"{path}: the draft's weights (model.safetensors) are missing")
    try:
        return PadRecDraftModel.from_pretrained(path, use_kernels=LOAD_OPTIONS["use_kernels"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise PadRecDraftError(f"{path}: cannot load the draft ({first_line(e)})") from None


def check_token_map(draft: PadRecDraftModel, token_map: TokenMap) -> None:
    """Raise :class:`PadRecDraftError` when the draft was built for another token layout."""
    draft.check_token_map(token_map)


def target_features(
    target, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The target's last hidden states (what the draft reads), without the LM head: ``(batch, seq, hidden)``."""
    decoder = causal_lm(target).get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
