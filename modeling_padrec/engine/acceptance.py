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

    def draw(self, probs: torch.Tensor, k: int) -> torch.Tensor:
        """``k`` distinct indices drawn without replacement from ``probs`` (fewer if fewer have mass), in draw
        order: the candidates of a sampled draft tree's choice point."""
        k = min(k, int((probs > 0).sum()))
        return torch.multinomial(probs, k, generator=self.generator)

    def accept(
        self, drafted: int, q: torch.Tensor | None, logits: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[bool, int]:
        """Verify one drafted choice against the target's ``logits`` over ``allowed``: (kept, the token written
        there — the drafted one if kept, else the target's correction)."""
        index, token = self.accept_among([drafted], q, logits, allowed)
        return index is not None, token

    def accept_among(
        self, drafted: list[int], q: torch.Tensor | None, logits: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[int | None, int]:
        """Verify the drafted candidates of one choice point (siblings of a tree, in draw order) against the
        target's ``logits`` over ``allowed``: (index of the kept candidate or None, the token written there).

        Greedy: the target's choice, kept if it is a candidate. Sampling (``q``: the draft's distribution the
        candidates were drawn from without replacement): recursive rejection sampling — candidate i is kept with
        probability ``min(1, p_i(x) / q_i(x))``; on rejection ``p_{i+1} = norm(max(p_i - q_i, 0))`` and ``q_{i+1}``
        is ``q_i`` without x, renormalised; if every candidate is rejected the token is drawn from the last
        residual. The written token is distributed exactly as plain sampling from ``p`` (one candidate: standard
        speculative sampling)."""
        if self.greedy:
            token = int(allowed[int(logits.argmax())])
            return (drafted.index(token) if token in drafted else None), token
        if not drafted:
            return None, self.choose(logits, allowed)[0]
        if q is None or q.shape != logits.shape:
            raise ValueError(
                "speculative sampling needs the draft's distribution over the same allowed tokens"
            )
        p, q = self.probs(logits), q.float().clone()
        for i, token in enumerate(drafted):
            index = int((allowed == token).nonzero()[0])
            ratio = float(p[index]) / max(float(q[index]), 1e-30)
            if ratio >= 1.0 or float(torch.rand((), generator=self.generator)) < ratio:
                return i, token
            residual = (p - q).clamp(min=0)
            total = float(residual.sum())
            p = residual / total if total > 0 else p  # total is 0 only when p == q up to rounding
            if i + 1 < len(drafted):
                q[index] = 0.0
                q = q / q.sum()
        return None, int(allowed[self._draw(p)])
