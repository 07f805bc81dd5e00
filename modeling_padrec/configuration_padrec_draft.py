"""Configuration of the PAD-Rec draft model (remote code: imports only ``transformers``).

The draft shares the target's hidden size and vocabulary size, so ``target.generate(..., assistant_model=draft)``
accepts it without a second tokenizer. Its head only covers the recommendation vocabulary (``rec_token_ids``),
and every token id has a *slot*: the code level ``0..L-1`` of an item token, ``L`` for the separator and
``L+1`` (also written ``num_slots - 1``) for anything else.
"""

from transformers import PretrainedConfig

STEP_GATES = ("context", "none")
FORCED_INPUTS = ("chain", "block")


class PadRecDraftConfig(PretrainedConfig):
    r"""
    Configuration of [`PadRecDraftModel`], a one-layer EAGLE-style feature drafter with PAD-Rec's item-position
    (slot) and step-position signals.

    Args:
        vocab_size (`int`): the target's vocabulary size (the draft returns logits over all of it).
        hidden_size (`int`): the target's hidden size (the draft reads and predicts target features).
        intermediate_size (`int`): MLP size of the draft's decoder layer.
        num_attention_heads (`int`), num_key_value_heads (`int`, *optional*), head_dim (`int`, *optional*):
            attention shape of the draft's decoder layer.
        hidden_act (`str`), rms_norm_eps (`float`), max_position_embeddings (`int`), rope_parameters (`dict`):
            as in Qwen2; copy the target's rope settings so positions mean the same thing.
        rec_token_ids (`list[int]`): target ids of the recommendation vocabulary (codes, separator, EOS): the
            draft's embedding table and head cover these ids only.
        rec_token_slots (`list[int]`): slot of each id of `rec_token_ids` (same order). Ids outside
            `rec_token_ids` have slot `num_slots - 1` ("other").
        num_slots (`int`): `L + 2` for items of `L` code tokens.
        max_draft_steps (`int`): draft depth K, the number of step embeddings.
        use_item_position (`bool`): add `alpha * E_slot[slot(x_{t+1})]` to the fused feature.
        use_step_position (`bool`): add `sigmoid(W_g h + b) * E_step[k]` to the fused feature.
            Both off: the plain EAGLE-style baseline.
        step_gate (`str`): how the step embedding is gated. `"context"` (PAD-Rec): `sigmoid(W_g h + b)`, a linear
            layer on every draft step; `"none"`: `h + E_step[k]`, no gate and no per-step matmul (the cheaper form).
        forced_inputs (`str`): what a drafted token the catalog forces reads. `"chain"`: the feature the draft
            predicted at the token before it, like every token. `"block"`: the feature its run read: a drafted
            choice and the forced run after it (or the forced run after the verified positions) all read the
            feature that run started from, so a run costs one draft forward instead of one per token. A draft is
            trained for one of the two (`padrec train-draft --forced-inputs`).
        slot_scale_init (`float`): initial value of the learnable coefficient alpha.
        token_map_fingerprint (`str`, *optional*): hash of the token layout the draft was built for.
        catalog (`dict`, *optional*): the catalog the draft was trained on (its target's): ``items``, ``levels``
            and ``fingerprint``, a digest of every item's codes in item order.
    """

    model_type = "padrec_draft"
    num_hidden_layers = 1  # one decoder layer; not a setting

    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 704
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    rope_parameters: dict | None = None
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    rec_token_ids: list[int] | None = None
    rec_token_slots: list[int] | None = None
    num_slots: int = 6

    max_draft_steps: int = 5
    use_item_position: bool = True
    use_step_position: bool = True
    step_gate: str = "context"
    forced_inputs: str = "chain"
    slot_scale_init: float = 1.0
    token_map_fingerprint: str | None = None
    catalog: dict | None = None

    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rec_token_ids is None:
            self.rec_token_ids, self.rec_token_slots = [], []
        if self.rec_token_slots is None or len(self.rec_token_slots) != len(self.rec_token_ids):
            raise ValueError("rec_token_slots must give one slot per id of rec_token_ids")
        if any(not 0 <= i < self.vocab_size for i in self.rec_token_ids):
            raise ValueError(f"rec_token_ids must lie in [0, vocab_size={self.vocab_size})")
        if len(set(self.rec_token_ids)) != len(self.rec_token_ids):
            raise ValueError("rec_token_ids must not repeat an id")
        if self.num_slots < 2 or any(not 0 <= s < self.num_slots for s in self.rec_token_slots):
            raise ValueError(f"slots must lie in [0, num_slots={self.num_slots})")
        if self.step_gate not in STEP_GATES:
            raise ValueError(f"step_gate must be one of {', '.join(STEP_GATES)}, got {self.step_gate!r}")
        if self.forced_inputs not in FORCED_INPUTS:
            raise ValueError(
                f"forced_inputs must be one of {', '.join(FORCED_INPUTS)}, got {self.forced_inputs!r}"
            )
        if self.max_draft_steps < 1:
            raise ValueError(f"max_draft_steps must be >= 1, got {self.max_draft_steps}")
        super().__post_init__(**kwargs)

    @property
    def levels(self) -> int:
        """L, code tokens per item."""
        return self.num_slots - 2

    @property
    def other_slot(self) -> int:
        """Slot of every id that is neither a code nor the separator."""
        return self.num_slots - 1


PadRecDraftConfig.register_for_auto_class()

__all__ = ["PadRecDraftConfig"]
