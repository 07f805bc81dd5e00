"""Choosing tokens and accepting proposals: greedy, or speculative sampling with real draft probabilities.

Every choice is made over the tokens the catalog trie allows at that point, given as a sorted id tensor: greedy
takes the first highest logit (the same tie-break as ``argmax`` over the masked vocabulary in stock ``generate``);
sampling draws from the warped distribution over them. A forced token (one allowed id) is never scored.

Speculative sampling (Leviathan et al., Chen et al.): a drafted token x drawn from q is kept with probability
``min(1, p(x) / q(x))``; otherwise the target's token is drawn from ``norm(max(p - q, 0))``. Output tokens are then
distributed exactly as plain constrained sampling from p.

This file imports only torch and transformers: it ships as Hub remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


@dataclass
class GenerationSettings:
    """How tokens are chosen. ``do_sample=False`` is greedy (temperature, top_k, top_p unused)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


class Chooser:
    """Greedy or sampled choice over a set of allowed tokens, and the acceptance test of drafted tokens."""

    def __init__(self, settings: GenerationSettings, generator: torch.Generator | None = None):
        self.settings = settings
        self.generator = generator
        warpers = []
        if settings.do_sample:
            if settings.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k is not None:
                warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p is not None and settings.top_p < 1.0:
                warpers.append(TopPLogitsWarper(settings.top_p))
        self.warpers = warpers

    @property
    def greedy(self) -> bool:
        return not self.settings.do_sample

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution over the allowed tokens whose logits are given ``(n,)``."""
        scores = logits.float()[None]
        for warp in self.warpers:
            scores = warp(None, scores)
        return torch.softmax(scores[0], dim=-1)

    def _draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def choose(self, logits: torch.Tensor, allowed: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """A token among ``allowed`` from its ``logits`` over the allowed tokens; returns (token, distribution or
        None when greedy)."""
        if self.greedy:
            return int(allowed[int(logits.argmax())]), None
        probs = self.probs(logits)
        return int(allowed[self._draw(probs)]), probs

    def accept(
        self, drafted: int, q: torch.Tensor | None, logits: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[bool, int]:
        """Verify one drafted choice against the target's ``logits`` over ``allowed``: (kept, the token written
        there — the drafted one if kept, else the target's correction)."""
        if self.greedy:
            token = int(allowed[int(logits.argmax())])
            return token == drafted, token
        p = self.probs(logits)
        index = int((allowed == drafted).nonzero()[0])
        if q is None or q.shape != p.shape:
            raise ValueError(
                "speculative sampling needs the draft's distribution over the same allowed tokens"
            )
        ratio = float(p[index]) / max(float(q[index]), 1e-30)
        if ratio >= 1.0 or float(torch.rand((), generator=self.generator)) < ratio:
            return True, drafted
        residual = (p - q).clamp(min=0)
        total = float(residual.sum())
        residual = residual / total if total > 0 else p
        return False, int(allowed[self._draw(residual)])
