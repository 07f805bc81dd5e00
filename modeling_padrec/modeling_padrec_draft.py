"""PAD-Rec draft model: a one-layer, feature-level drafter for list-wise recommendation (remote code).

This file imports only ``torch``, ``transformers``, the standard library and its configuration, so it runs when
copied alone into a model folder and loaded with ``trust_remote_code=True``.

At position t the draft reads the target's last hidden state f_t and the next token x_{t+1}::

    h = fc([f_t ; e(x_{t+1})])
    h = h + alpha * E_slot[slot(x_{t+1})]                 (use_item_position)
    h = h + sigmoid(W_g h + b) * E_step[k]                (use_step_position, k = draft step of the round;
                                                          step_gate="none": h + E_step[k])
    f_{t+1} ~ decoder_layer(h)                            (the predicted feature)
    logits = lm_head(norm(f_{t+1}))                       (recommendation vocabulary only)

Drafting step k > 0 feeds the draft its own predicted feature. In ``target.generate(...,
assistant_model=draft)`` the stock ``AssistedCandidateGenerator`` calls :meth:`PadRecDraftModel.generate` once
per round; the target's features reach the draft through a forward hook that :meth:`PadRecDraftModel.attach`
installs on the target's decoder.
"""

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers.initialization as init
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.utils import ModelOutput

from .configuration_padrec_draft import PadRecDraftConfig


class PadRecDraftError(ValueError):
    """The draft cannot be used as asked (not attached, built for another target or token layout, ...)."""


@dataclass
class PadRecDraftOutput(ModelOutput):
    """
    Args:
        features (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            predicted target features: position t predicts f_{t+1}.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, len(config.rec_token_ids))`):
            next-token logits over the recommendation vocabulary (column i is `config.rec_token_ids[i]`);
            :meth:`PadRecDraftModel.vocab_logits` scatters them to the full vocabulary.
        cache (`DynamicCache`, *optional*): the draft layer's key/value cache.
    """

    features: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: DynamicCache | None = None


class PadRecPositionSignals(nn.Module):
    """PAD-Rec's two position signals, added to the fused feature h.

    * item position: ``h + alpha * E_slot[slot]`` with a learnable scalar alpha;
    * draft step: ``h + sigmoid(W_g h + b) * E_step[step]``, a gate computed from the context (``step_gate=
      "context"``), or ``h + E_step[step]`` (``"none"``: no linear layer on the step's path).
    """

    def __init__(self, config: PadRecDraftConfig):
        super().__init__()
        self.use_item_position = config.use_item_position
        self.use_step_position = config.use_step_position
        self.max_step = config.max_draft_steps - 1
        if self.use_item_position:
            self.slot_embed = nn.Embedding(config.num_slots, config.hidden_size)
            self.slot_scale = nn.Parameter(torch.tensor(float(config.slot_scale_init)))
        self.gated = self.use_step_position and config.step_gate == "context"
        if self.use_step_position:
            self.step_embed = nn.Embedding(config.max_draft_steps, config.hidden_size)
        if self.gated:
            self.step_gate = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, slots: torch.LongTensor, steps: torch.LongTensor) -> torch.Tensor:
        if self.use_item_position:
            hidden = hidden + self.slot_scale * self.slot_embed(slots)
        if self.use_step_position:
            # a round deeper than the trained depth reuses the last step embedding
            embed = self.step_embed(steps.clamp(max=self.max_step))
            hidden = hidden + (torch.sigmoid(self.step_gate(hidden)) * embed if self.gated else embed)
        return hidden


class PadRecDraftCache(DynamicCache):
    """The draft layer's cache for one ``generate`` call, plus the round that awaits the target's verdict.

    It holds keys/values for the positions whose inputs carry *true* target features; the drafted positions of
    a round are cropped away when the round ends. ``AssistedCandidateGenerator`` keeps this object between
    rounds (it reads ``output.cache`` and passes it back as ``cache=``), which is how the draft tells a new
    ``generate`` call from the next round of the current one.
    """

    def __init__(self):
        super().__init__()
        self.pending: dict | None = None

    def crop(self, tokens_to_remove: int) -> None:
        """Ignored: between rounds this cache holds verified positions only, so there is nothing to roll back.

        ``AssistedCandidateGenerator`` crops the assistant's cache before each round to drop the drafted tokens
        the target rejected. This cache never kept them (:meth:`keep` drops every drafted position when its
        round ends), and transformers 5.25 sizes that crop from the drafted sequence's length rather than the
        cache's, which would cut verified positions whose target features are gone.
        """

    def keep(self, length: int) -> None:
        """Keep the first ``length`` positions (the draft's own rollback at the end of a round)."""
        extra = self.get_seq_length() - length
        if extra > 0:
            super().crop(-extra)


class PadRecDraftStats:
    """Drafting statistics, recorded as rounds are resolved; they never change what is generated.

    A round is resolved once the tokens the target kept are known: at the draft's next round, or when the
    attached target's ``generate`` returns. The first round of every ``generate`` call drafts blind (no target
    feature exists yet) and is counted apart, in ``blind_rounds`` / ``blind_accepted``.
    """

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.reset()

    def reset(self) -> None:
        self.rounds: list[tuple[int, int]] = []  # (drafted, accepted) of every featured round
        self.blind_rounds = 0
        self.blind_accepted = 0
        self.reached_by_step: list[int] = []  # step k drafted and steps < k accepted
        self.accepted_by_step: list[int] = []
        self.reached_by_slot = [0] * self.num_slots
        self.accepted_by_slot = [0] * self.num_slots
        self.seconds_by_step: list[float] = []
        self.timed_by_step: list[int] = []

    def record(self, slots: list[int], accepted: int, step_seconds: list[float], blind: bool = False) -> None:
        """One resolved round: the slots of its drafted tokens, how many the target accepted, step timings."""
        if blind:
            self.blind_rounds += 1
            self.blind_accepted += accepted
            return
        self.rounds.append((len(slots), accepted))
        for step, slot in enumerate(slots[: accepted + 1]):
            _bump(self.reached_by_step, step, 1)
            _bump(self.accepted_by_step, step, int(step < accepted))
            self.reached_by_slot[slot] += 1
            self.accepted_by_slot[slot] += int(step < accepted)
        for step, seconds in enumerate(step_seconds):
            _bump(self.seconds_by_step, step, seconds)
            _bump(self.timed_by_step, step, 1)

    def accepted_per_round(self) -> list[int]:
        """Accepted draft tokens of every resolved round, the blind first round (if any) first."""
        blind = [self.blind_accepted] if self.blind_rounds == 1 else []
        return blind + [a for _, a in self.rounds]

    def summary(self) -> dict:
        """Means over featured rounds: lengths, acceptance by step (alpha_k) and slot, draft ms per step."""
        n = len(self.rounds)
        drafted = sum(d for d, _ in self.rounds)
        accepted = sum(a for _, a in self.rounds)
        return {
            "rounds": n,
            "drafted": drafted,
            "accepted": accepted,
            "mean_drafted": drafted / n if n else None,
            "mean_accepted": accepted / n if n else None,
            "acceptance_by_step": _ratios(self.accepted_by_step, self.reached_by_step),
            "acceptance_by_slot": _ratios(self.accepted_by_slot, self.reached_by_slot),
            "acceptance_by_step_counts": [
                list(p) for p in zip(self.accepted_by_step, self.reached_by_step, strict=True)
            ],
            "acceptance_by_slot_counts": [
                list(p) for p in zip(self.accepted_by_slot, self.reached_by_slot, strict=True)
            ],
            "draft_seconds": sum(self.seconds_by_step),
            "draft_steps": sum(self.timed_by_step),
            "draft_ms_by_step": [
                1000 * s / c if c else None
                for s, c in zip(self.seconds_by_step, self.timed_by_step, strict=True)
            ],
            "blind_rounds": self.blind_rounds,
            "blind_accepted": self.blind_accepted,
        }


def _bump(values: list, index: int, amount) -> None:
    values.extend([type(amount)(0)] * (index + 1 - len(values)))
    values[index] += amount


def _ratios(num: list[int], den: list[int]) -> list[float | None]:
    return [a / b if b else None for a, b in zip(num, den, strict=True)]


class _FeatureTap:
    """Forward hook on the target's decoder: keeps its last hidden states, indexed by sequence position.

    A forward over ``n`` new tokens on a cache that ends at position ``end`` yields the features of positions
    ``[end - n, end)``; they overwrite whatever the buffer held from that position on (rejected drafts of the
    previous round). Batched forwards (batch > 1) are ignored: assisted generation runs at batch size 1.
    """

    def __init__(self, decoder: nn.Module):
        self.start = 0
        self.features: torch.Tensor | None = None
        self.handle = decoder.register_forward_hook(self._capture, with_kwargs=True)

    @property
    def end(self) -> int:
        return self.start + (0 if self.features is None else self.features.shape[1])

    def _capture(self, module, args, kwargs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if hidden.shape[0] != 1:
            return
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        end = cache.get_seq_length() if cache is not None else hidden.shape[1]
        start = end - hidden.shape[1]
        hidden = hidden.detach()
        if self.features is None or start <= self.start or start > self.end:
            self.start, self.features = start, hidden
        else:
            self.features = torch.cat([self.features[:, : start - self.start], hidden], dim=1)

    def take(self, begin: int, end: int) -> torch.Tensor | None:
        """Features of positions ``[begin, end)`` (non-empty), then forget everything before ``end``; None if not
        held."""
        if self.features is None or begin < self.start or end > self.end or end <= begin:
            return None
        out = self.features[:, begin - self.start : end - self.start]
        self.features = self.features[:, end - self.start :]
        self.start = end
        return out

    def reset(self) -> None:
        self.start, self.features = 0, None

    def remove(self) -> None:
        self.handle.remove()
        self.reset()


class _Attachment:
    """Everything :meth:`PadRecDraftModel.attach` installs on a target, and how to take it off again.

    * a :class:`_FeatureTap` on the target's decoder;
    * a thin wrapper around the target's ``generate`` (an instance attribute shadowing the method) that tells
      the draft when a call ends, so the last round of a call is resolved against the final output.

    A plain object, not an ``nn.Module``: the target must not become a submodule of the draft.
    """

    def __init__(self, target: nn.Module, decoder: nn.Module, draft: "PadRecDraftModel"):
        self.target = target
        self.tap = _FeatureTap(decoder)
        original = target.generate

        @functools.wraps(original)
        def generate(*args, **kwargs):
            draft._open_cache = None
            try:
                out = original(*args, **kwargs)
            finally:
                cache, draft._open_cache = draft._open_cache, None
            if cache is not None:  # the last round of an assisted call: resolve it against the final output
                draft._resolve_round(cache, out if torch.is_tensor(out) else out.sequences)
            return out

        generate.__padrec_draft_wrapper__ = True
        target.generate = generate

    def remove(self) -> None:
        self.tap.remove()
        if getattr(self.target.__dict__.get("generate"), "__padrec_draft_wrapper__", False):
            del self.target.generate


class PadRecDraftModel(PreTrainedModel, GenerationMixin):
    """PAD-Rec draft: EAGLE-style feature drafter with item-position and step-position signals.

    Use::

        draft.attach(target)                       # hook the target's decoder (PEFT or plain causal LM)
        out = target.generate(**inputs, assistant_model=draft, logits_processor=[constraint], max_new_tokens=n)
        draft.stats.summary()                      # acceptance by step / slot, draft time per step
        draft.detach()

    Token embedding: the draft keeps its own table over the recommendation vocabulary plus one row shared by
    every other id (BOS, the prompt end, text). It is initialised from the target's rows when the draft is
    built, but lives in the draft: the checkpoint stays small on a 150k-vocabulary LLM and loads without the
    target's weights.
    """

    config: PadRecDraftConfig
    config_class = PadRecDraftConfig
    base_model_prefix = "padrec_draft"
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer"]
    _supports_sdpa = True
    # ``head_logits(features, rows)`` computes only those rows (drafts saved before it did not)
    head_reads_rows = True

    def __init__(self, config: PadRecDraftConfig):
        super().__init__(config)
        num_rec = len(config.rec_token_ids)
        # one row per rec-vocabulary id, then a last row shared by every other id
        self.embed_tokens = nn.Embedding(num_rec + 1, config.hidden_size)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.signals = PadRecPositionSignals(config)
        self.layer = Qwen2DecoderLayer(config, layer_idx=0)
        self.rotary_emb = Qwen2RotaryEmbedding(config)
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, num_rec, bias=False)
        self.stats = PadRecDraftStats(config.num_slots)
        self._lookup_tables: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._attachment: _Attachment | None = None
        self._open_cache: PadRecDraftCache | None = None
        self.post_init()
        # Draft exactly K tokens per round: the step embeddings were trained for depths 0..K-1, and a constant
        # schedule keeps ``generate`` from rewriting the depth between calls (see num_assistant_tokens_schedule).
        self.generation_config.num_assistant_tokens = config.max_draft_steps
        self.generation_config.num_assistant_tokens_schedule = "constant"
        self.generation_config.assistant_confidence_threshold = 0.0
        self.generation_config._from_model_config = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PadRecPositionSignals) and module.use_item_position:
            init.constant_(module.slot_scale, self.config.slot_scale_init)

    # ------------------------------------------------------------------ token tables

    def _lookups(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rec ids, row of every vocab id in ``embed_tokens``, slot of every vocab id), built from the config."""
        key = str(device)
        if key not in self._lookup_tables:
            with torch.inference_mode(False):  # built once, possibly inside generate; reused for training
                self._lookup_tables[key] = self._build_lookups(device)
        return self._lookup_tables[key]

    def _build_lookups(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        ids = torch.tensor(cfg.rec_token_ids, dtype=torch.long)
        rows = torch.full((cfg.vocab_size,), len(ids), dtype=torch.long)
        rows[ids] = torch.arange(len(ids))
        slots = torch.full((cfg.vocab_size,), cfg.other_slot, dtype=torch.long)
        slots[ids] = torch.tensor(cfg.rec_token_slots, dtype=torch.long)
        return ids.to(device), rows.to(device), slots.to(device)

    def slot_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Slot of every token id: code level, ``L`` for the separator, ``L + 1`` for anything else."""
        return self._lookups(input_ids.device)[2][input_ids]

    def vocab_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scatter logits over the recommendation vocabulary into the full vocabulary (-inf elsewhere)."""
        ids = self._lookups(logits.device)[0]
        full = logits.new_full((*logits.shape[:-1], self.config.vocab_size), float("-inf"))
        full[..., ids] = logits
        return full

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor,
        target_features: torch.Tensor,
        step_ids: torch.LongTensor | int | None = None,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        compute_logits: bool = True,
        **kwargs,
    ) -> PadRecDraftOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): x_{t+1} for every position t.
            target_features (`torch.Tensor` of shape `(batch, seq, hidden_size)`): f_t, the target's last hidden
                state at position t (or the draft's own prediction of it at draft step k > 0).
            step_ids (`torch.LongTensor` of shape `(batch, seq)` or `int`, *optional*): draft step k of every
                position (0: the feature came from the target). Defaults to 0.
            position_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): sequence positions t; by
                default they continue the cache.
            attention_mask (`torch.Tensor`, *optional*): a 2-D padding mask over cache + new positions (1 = keep),
                or a ready 4-D additive mask `(batch, 1, seq, kv_len)` (training-time test uses one).
            cache (`DynamicCache`, *optional*): keys/values of earlier positions; updated in place.
            compute_logits (`bool`): False skips the head (``logits`` is None) when only the predicted features
                are needed, as at a token the catalog forces; :meth:`head_logits` computes them later.
        """
        ids, rows, slots = self._lookups(input_ids.device)
        if step_ids is None or isinstance(step_ids, int):
            step_ids = torch.full_like(input_ids, step_ids or 0)
        features = target_features.to(device=input_ids.device, dtype=self.fc.weight.dtype)
        hidden = self.fc(torch.cat([features, self.embed_tokens(rows[input_ids])], dim=-1))
        hidden = self.signals(hidden, slots[input_ids], step_ids)

        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        mask = _attention_mask(attention_mask, input_ids.shape[1], past, hidden.dtype, hidden.device)
        hidden = self.layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None if use_cache is None else use_cache,
            position_embeddings=self.rotary_emb(hidden, position_ids),
        )
        logits = self.head_logits(hidden) if compute_logits else None
        return PadRecDraftOutput(features=hidden, logits=logits, cache=cache)

    def head_logits(self, features: torch.Tensor, rows: torch.LongTensor | None = None) -> torch.Tensor:
        """Logits over the recommendation vocabulary from predicted features (what ``forward`` returns), or with
        ``rows`` (indices into ``config.rec_token_ids``) only over those tokens, in that order: a decoder that
        knows which tokens are allowed reads only their rows of the head."""
        if rows is None:
            return self.lm_head(self.norm(features))
        hidden = _rms_norm(features, self.norm.weight, self.config.rms_norm_eps)
        return F.linear(hidden, self.lm_head.weight.index_select(0, rows))

    # ------------------------------------------------------------------ one-token decode step

    @torch.no_grad()
    def decode_step(
        self,
        input_ids: torch.LongTensor,
        target_features: torch.Tensor,
        step: int | torch.LongTensor,
        cache: DynamicCache,
        compute_logits: bool = True,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tables: dict | None = None,
    ) -> PadRecDraftOutput:
        """``forward`` for new positions after ``cache`` (inference only), in far fewer ops.

        One token per row (``input_ids`` ``(batch, 1)``, positions continuing the cache), or several: continuing
        the cache, causal (the verified positions a chain catches up on), or with their own ``position_ids``
        ``(batch, m)`` and a boolean ``attention_mask`` ``(batch, 1, m, cache + m)`` (True = attend; the nodes of
        one level of a draft tree, or the rows of a batch whose caches hold different numbers of positions); draft
        steps ``step`` an int or ``(batch, m)``. The same weights and the same
        function, rearranged: the fused input's token half, the item-slot signal and the step embedding are
        per-token constants read from tables; q/k/v and gate/up run as one matmul each; rotary angles come from a
        table. The tables are rebuilt whenever a weight changes; a caller stepping many times with unchanged
        weights passes ``tables=draft.decode_tables(device)`` to skip that check. Results equal ``forward``'s up to
        float rounding."""
        past, (rows, m) = cache.get_seq_length(), input_ids.shape
        t = tables if tables is not None else self.decode_tables(input_ids.device)
        if position_ids is None:  # positions continue the cache: known on the host, no device op to find them
            last, index = past + m - 1, slice(past, past + m)
        else:
            positions = position_ids.reshape(rows, m)
            last, index = int(positions.max()), positions
        if last >= len(t["cos"]) or (m > 1 and attention_mask is None and position_ids is not None):
            positions = t["positions"][index].expand(rows, m) if position_ids is None else positions
            return self(input_ids, target_features, step_ids=step, position_ids=positions,
                        attention_mask=attention_mask, cache=cache, compute_logits=compute_logits)  # fmt: skip
        if m > 1 and attention_mask is None:  # positions continuing the cache: causal over cache + new
            keys = t["positions"][: past + m]
            attention_mask = (keys[None, :] <= keys[past:, None])[None, None]
        heads, kv_heads, head_dim, eps = t["shape"]
        feature = target_features.reshape(rows * m, -1).to(t["fc_feature"].dtype)
        hidden = torch.addmm(t["token"][t["rows"][input_ids.reshape(-1)]], feature, t["fc_feature"])
        hidden = hidden.view(rows, m, -1)
        if t["step"] is not None:
            if torch.is_tensor(step):
                embed = t["step"][step.reshape(rows, m).clamp(max=len(t["step"]) - 1)]
            else:
                embed = t["step"][min(step, len(t["step"]) - 1)]
            if t["gate"] is not None:
                hidden = torch.addcmul(hidden, torch.sigmoid(F.linear(hidden, *t["gate"])), embed)
            else:
                hidden = hidden + embed
        x = _rms_norm(hidden, t["input_norm"], eps)
        qkv = F.linear(x, t["qkv_weight"], t["qkv_bias"])
        qk = qkv[..., : (heads + kv_heads) * head_dim].view(rows, m, heads + kv_heads, head_dim)
        first, second = qk.chunk(2, dim=-1)
        cos, sin = t["cos"][index], t["sin"][index]  # a slice (a view) when the positions continue the cache
        qk = torch.addcmul(qk * cos, torch.cat((-second, first), dim=-1), sin)
        q = qk[:, :, :heads].transpose(1, 2)  # (batch, heads, m, head_dim)
        k = qk[:, :, heads:].transpose(1, 2)
        v = qkv[..., (heads + kv_heads) * head_dim :].view(rows, m, kv_heads, head_dim).transpose(1, 2)
        keys, values = cache.update(k, v, 0)
        mask = None if attention_mask is None else attention_mask.to(device=q.device, dtype=torch.bool)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=t["scaling"], enable_gqa=heads != kv_heads
        )
        hidden = hidden + F.linear(out.transpose(1, 2).reshape(rows, m, heads * head_dim), t["o_proj"])
        x = F.rms_norm(hidden, hidden.shape[-1:], t["post_norm"], eps)
        gate_proj, up_proj = F.linear(x, t["gate_up"]).chunk(2, dim=-1)
        hidden = hidden + F.linear(t["act"](gate_proj) * up_proj, t["down_proj"])
        logits = self.head_logits(hidden) if compute_logits else None
        return PadRecDraftOutput(features=hidden, logits=logits, cache=cache)

    def decode_tables(self, device) -> dict:
        """The per-token constants and fused weights :meth:`decode_step` reads, rebuilt when a weight changed."""
        attn, mlp, signals = self.layer.self_attn, self.layer.mlp, self.signals
        params = (self.fc.weight, self.embed_tokens.weight, attn.q_proj.weight, attn.k_proj.weight,
                  attn.v_proj.weight, attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias, attn.o_proj.weight,
                  mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                  self.layer.input_layernorm.weight, self.layer.post_attention_layernorm.weight)  # fmt: skip
        if signals.use_item_position:
            params += (signals.slot_embed.weight, signals.slot_scale)
        if signals.use_step_position:
            params += (signals.step_embed.weight,)
        if signals.gated:
            params += (signals.step_gate.weight, signals.step_gate.bias)
        key = (str(device), tuple(p._version for p in params), tuple(p.data_ptr() for p in params))
        cached = getattr(self, "_decode_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad(), torch.inference_mode(False):
            cfg = self.config
            hidden = cfg.hidden_size
            ids, rows, slots = self._lookups(device)
            token = F.linear(self.embed_tokens.weight, self.fc.weight[:, hidden:])  # (rows, hidden)
            if signals.use_item_position:
                row_slots = torch.full((token.shape[0],), cfg.other_slot, dtype=torch.long, device=device)
                row_slots[: len(ids)] = slots[ids]
                token = token + signals.slot_scale * signals.slot_embed(row_slots)
            positions = torch.arange(cfg.max_position_embeddings, device=device)[None]
            cos, sin = self.rotary_emb(token[None, :1], positions)
            tables = {
                "shape": (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps),
                "scaling": attn.scaling,
                "positions": positions[0],
                "rows": rows,
                "token": token,
                "fc_feature": self.fc.weight[:, :hidden].t().contiguous(),  # (in, out), for addmm
                "qkv_weight": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                "qkv_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                "o_proj": attn.o_proj.weight,
                "input_norm": self.layer.input_layernorm.weight,
                "post_norm": self.layer.post_attention_layernorm.weight,
                "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                "act": F.silu if cfg.hidden_act == "silu" else mlp.act_fn,
                "down_proj": mlp.down_proj.weight,
                "cos": cos[0, :, None, :],  # (position, 1, head_dim): broadcast over heads
                "sin": sin[0, :, None, :],
                "step": signals.step_embed.weight if signals.use_step_position else None,
                "gate": (signals.step_gate.weight, signals.step_gate.bias) if signals.gated else None,
            }
        self._decode_cache = (key, tables)
        return tables

    # ------------------------------------------------------------------ target hookup

    def attach(self, target: nn.Module, token_map=None) -> "PadRecDraftModel":
        """Hook the target so its verification forwards feed the draft; returns the draft.

        ``target``: the causal LM that will call ``generate(..., assistant_model=draft)``, a PEFT ``PeftModel``
        or a plain ``transformers`` model. ``token_map`` (optional): anything with a ``fingerprint()`` method,
        checked against the draft's (see :meth:`check_token_map`). Attaching again first detaches. The target's
        ``generate`` is shadowed by a wrapper until :meth:`detach`: detach before copying or pickling the target.
        """
        self.detach()
        if not isinstance(target, nn.Module) and isinstance(getattr(target, "model", None), nn.Module):
            target = target.model  # a wrapper holding the model (e.g. padrec's ``Target``)
        base = target.get_base_model() if hasattr(target, "get_base_model") else target
        text_config = base.config.get_text_config()
        for name in ("hidden_size", "vocab_size"):
            theirs, ours = getattr(text_config, name), getattr(self.config, name)
            if theirs != ours:
                raise PadRecDraftError(
                    f"the draft was built for {name}={ours}, the target has {name}={theirs}"
                )
        if token_map is not None:
            self.check_token_map(token_map)
        self._attachment = _Attachment(target, base.get_decoder(), self)
        return self

    def detach(self) -> None:
        """Remove every hook :meth:`attach` installed; a no-op when not attached."""
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None
        self._open_cache = None

    @property
    def is_attached(self) -> bool:
        return self._attachment is not None

    def check_token_map(self, token_map) -> None:
        """Raise :class:`PadRecDraftError` unless ``token_map.fingerprint()`` is the draft's token layout."""
        theirs, ours = token_map.fingerprint(), self.config.token_map_fingerprint
        if theirs != ours:
            raise PadRecDraftError(
                f"the draft was built for token layout {ours}, this tokenizer/catalog gives {theirs}"
            )

    # ------------------------------------------------------------------ drafting

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        generation_config=None,
        logits_processor=None,
        max_new_tokens: int | None = None,
        cache: DynamicCache | None = None,
        **kwargs,
    ) -> GenerateDecoderOnlyOutput:
        """Draft one round for ``AssistedCandidateGenerator`` (not for direct use).

        Returns ``sequences`` = ``input_ids`` + drafted tokens, ``scores`` = the processed logits each token was
        picked from (the speculative-sampling ``q``), and ``cache`` = the draft's state for the next round.
        """
        if self._attachment is None:
            raise PadRecDraftError(
                "call draft.attach(target) before target.generate(..., assistant_model=draft)"
            )
        if not getattr(generation_config, "is_assistant", False):
            raise PadRecDraftError("a PAD-Rec draft only drafts for its target: pass it as assistant_model=")
        if input_ids.shape[0] != 1:
            raise PadRecDraftError(f"assisted generation runs at batch size 1, got {input_ids.shape[0]}")
        input_ids = input_ids.to(self.device)
        blind = not isinstance(cache, PadRecDraftCache)
        if blind:  # first round of a generate call: stale features of an earlier call must not be read
            cache = PadRecDraftCache()
            self._attachment.tap.reset()
        else:
            self._resolve_round(cache, input_ids)
        self._open_cache = cache

        budget = self.config.max_draft_steps if max_new_tokens is None else int(max_new_tokens)
        eos = generation_config.eos_token_id
        eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        processors = list(logits_processor or [])
        tokens, scores, seconds = self._draft(
            input_ids, cache, blind, budget, processors, bool(generation_config.do_sample), eos
        )
        drafted = torch.tensor([tokens], dtype=torch.long, device=input_ids.device)
        cache.pending = {
            "start": input_ids.shape[1],
            "tokens": tokens,
            "slots": self.slot_ids(drafted)[0].tolist(),
            "seconds": seconds,
            "blind": blind,
        }
        return GenerateDecoderOnlyOutput(
            sequences=torch.cat([input_ids, drafted], dim=1), scores=scores, cache=cache
        )

    def _draft(self, input_ids, cache, blind, budget, processors, do_sample, eos):
        """Draft up to ``budget`` tokens after ``input_ids``; returns (tokens, processed scores, step seconds)."""
        length = input_ids.shape[1]
        known = cache.get_seq_length()  # positions [0, known) already in the draft cache
        start = time.perf_counter()
        tables = self.decode_tables(self.device)  # the fast path's tables, checked once a round
        if blind:
            # Blind round: the target has not run yet, so no feature exists. Draft a single token from a zero
            # feature at the last position; the target's prefill verifies it for free.
            budget = min(budget, 1)
            zero_feature = torch.zeros(1, 1, self.config.hidden_size, device=self.device, dtype=self.dtype)
            position = torch.tensor([[max(length - 2, 0)]], device=self.device)
            out = self(input_ids[:, -1:], zero_feature, position_ids=position)
        else:
            features = self._attachment.tap.take(known, length - 1)
            if features is None:
                raise PadRecDraftError(
                    f"no target features for positions {known}..{length - 2}: is the draft attached to the "
                    "model that generates?"
                )
            new = input_ids[:, known + 1 :]
            if known:  # the fast path over the verified positions (causal: they continue the cache)
                out = self.decode_step(new, features, 0, cache, tables=tables)
            else:
                out = self(new, features, step_ids=0, cache=cache)
        feature, logits = out.features[:, -1:], out.logits[:, -1]

        tokens, scores, seconds, sequence = [], [], [], input_ids
        block = self.config.forced_inputs == "block"
        run_input = feature  # a block draft: a forced token reads what its predecessor read
        for step in range(budget):
            raw = self.vocab_logits(logits.float())
            processed = raw.clone()
            for processor in processors:
                processed = processor(sequence, processed)
            finite = int(torch.isfinite(processed).sum())
            stop = finite == 0
            if stop:  # every proposal is masked: propose from the raw head once, the target will correct it
                processed = raw
            if do_sample:
                token = torch.multinomial(torch.softmax(processed, dim=-1), num_samples=1)
            else:
                token = processed.argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
            scores.append(processed)
            sequence = torch.cat([sequence, token], dim=1)
            seconds.append(time.perf_counter() - start)
            if stop or step + 1 == budget or int(token) in eos:
                break
            start = time.perf_counter()
            if block:  # the token drafted at step 0 opens a run; a later forced one continues the last run
                run_input = run_input if step and finite == 1 else feature
            out = self.decode_step(token, run_input if block else feature, step + 1, cache, tables=tables)
            feature, logits = out.features, out.logits[:, -1]
        cache.keep(length - 1)  # only positions whose inputs carry true target features
        return tokens, tuple(scores), seconds

    def _resolve_round(self, cache: PadRecDraftCache, sequence: torch.LongTensor) -> None:
        """Record the pending round of ``cache``: its accepted length is the prefix the target kept."""
        pending, cache.pending = cache.pending, None
        if pending is None:
            return
        start, tokens = pending["start"], pending["tokens"]
        kept = sequence[0, start : start + len(tokens)].tolist()
        accepted = 0
        for drafted, final in zip(tokens, kept, strict=False):
            if drafted != final:
                break
            accepted += 1
        self.stats.record(pending["slots"], accepted, pending["seconds"], blind=pending["blind"])


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2's RMSNorm on a float32 activation (``torch.nn.functional.rms_norm`` is slower here on the CPU)."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps) * weight


def _attention_mask(
    mask: torch.Tensor | None, query_len: int, past: int, dtype, device
) -> torch.Tensor | None:
    """Additive 4-D mask: causal over ``past`` cached + ``query_len`` new positions, plus a 2-D padding mask."""
    if mask is not None and mask.dim() == 4:
        return mask.to(device=device, dtype=dtype) if mask.dtype != torch.bool else mask.to(device)
    if mask is None and query_len == 1:
        return None
    total = past + query_len
    keys = torch.arange(total, device=device)
    queries = torch.arange(past, total, device=device)
    allowed = (keys[None, :] <= queries[:, None])[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, -total:].to(device=device, dtype=torch.bool)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


PadRecDraftModel.register_for_auto_class("AutoModel")

__all__ = ["PadRecDraftModel", "PadRecDraftError", "PadRecDraftOutput", "PadRecDraftStats"]
