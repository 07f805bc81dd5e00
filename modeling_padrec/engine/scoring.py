"""The target's side of the engine: score candidate positions in one forward, then keep a subset of them.

One primitive carries jump-forward, chain verification and (later) trees and batches:
:meth:`TargetScorer.score` runs the target's decoder over new positions (any tokens, any position ids, an
optional 4-D attention mask over cache + new positions) and returns their last hidden states, which are both the
features a PAD-Rec draft reads and, through the LM head, the logits; :meth:`TargetScorer.keep` then keeps only
the chosen new positions in the cache (a gather; a plain crop when they are a prefix).

This file imports only torch and transformers: it ships as Hub remote code.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``transformers`` causal LM under a PEFT model (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def crop(cache: DynamicCache, length: int) -> None:
    """Cut ``cache`` back to its first ``length`` positions (a no-op when it holds no more)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class TargetScorer:
    """A causal LM (plain, PEFT-wrapped or merged) seen as: decoder → features, LM head → logits, a KV cache.

    Calling the decoder and the head separately is what lets the engine feed the draft the target's own features
    with no hooks, and compute logits only at the positions where the list has a choice.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.lm = causal_lm(model)
        self.decoder = self.lm.get_decoder()
        self.head = self.lm.get_output_embeddings()
        self.config = self.lm.config
        first = next(self.lm.parameters())
        self.device, self.dtype = first.device, first.dtype

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def score(
        self,
        cache: DynamicCache,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``input_ids`` ``(batch, n)`` after what ``cache`` holds; returns the last hidden states
        ``(batch, n, hidden)``. ``attention_mask``: None (causal over cache + new positions) or a 4-D mask
        ``(batch, 1, n, cache + n)``, boolean (True = attend) or additive."""
        out = self.decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) of the given hidden states."""
        return self.head(hidden).float()

    @staticmethod
    def keep(cache: DynamicCache, past: int, keep: torch.LongTensor | int) -> None:
        """Keep, of the positions after the first ``past`` in ``cache``, only ``keep``: an int ``k`` (the first k,
        a crop) or indices relative to ``past`` (a gather, in the given order; nothing is recomputed)."""
        if isinstance(keep, int):
            crop(cache, past + keep)
            return
        for layer in cache.layers:
            index = keep.to(layer.keys.device) + past
            kept_k = layer.keys.index_select(-2, index)
            kept_v = layer.values.index_select(-2, index)
            layer.keys = torch.cat([layer.keys[..., :past, :], kept_k], dim=-2)
            layer.values = torch.cat([layer.values[..., :past, :], kept_v], dim=-2)
