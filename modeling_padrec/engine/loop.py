"""The engine's decoding loop: prefill, jump-forward over forced tokens, propose, verify in one forward, keep.

One round::

    forced run      the trie appends every forced token (no model call; their keys and values are computed in
                    the next target forward, together with the next open position)
    propose         the proposer drafts up to ``depth`` choices (forced tokens filled in by the trie)
    score           one target forward over every position not yet in the cache + the proposal
    accept          walk the proposal: a forced token is kept as is; a choice is checked against the target's
                    constrained choice (greedy) or by speculative sampling; the first rejection writes the
                    target's own token instead, full acceptance adds the target's next token where it is a choice
    keep            the target's cache is cut back to the kept positions; the draft gets their features

Greedy output equals ``target.generate(..., logits_processor=[CatalogListConstraint])`` token for token: every
written token is either the only one the catalog allows or the target's constrained argmax at that position.

This file imports only torch, transformers and its sibling files: it ships as Hub remote code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .acceptance import Chooser, GenerationSettings
from .proposers import DraftProposer, NoProposer, Proposal
from .scoring import TargetScorer
from .trie import CatalogTrie

__all__ = ["Engine", "EngineOutput", "GenerationSettings", "Round"]


@dataclass
class Round:
    """One verified proposal: where it starts in the output, its length, how much of it was kept, and the
    offsets (within the proposal) of its choices; forced tokens are the others."""

    start: int
    drafted: int
    accepted: int
    choice_offsets: list[int]

    def to_json(self) -> list:
        return [self.start, self.drafted, self.accepted, self.choice_offsets]


@dataclass
class EngineOutput:
    """One request's result and what it cost."""

    output_ids: list[int]  # generated tokens, EOS included
    target_forwards: int = 0
    forced_tokens: int = 0  # written because the catalog allowed nothing else
    choices: int = 0  # positions where the catalog left a choice
    rounds: list[Round] = field(default_factory=list)
    draft_steps: int = 0
    draft_seconds: float = 0.0
    forward_seconds: float = 0.0
    seconds: float = 0.0


class Engine:
    """Catalog-constrained list decoding for one target, with jump-forward and optional PAD-Rec drafting.

    Args:
        model: the target causal LM (PEFT-wrapped, merged or plain ``transformers``).
        trie: the catalog (:class:`CatalogTrie`), built for the target's token ids and list length.
        draft: optional PAD-Rec draft; ``depth`` choices are proposed per round (default: its trained depth).
        settings: greedy (default) or sampling, and ``max_new_tokens``.

    ``engine.generate(prompt_ids)`` decodes one request (a list of token ids ending with the prompt-end token).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        trie: CatalogTrie,
        draft: torch.nn.Module | None = None,
        depth: int | None = None,
        settings: GenerationSettings | None = None,
    ):
        self.scorer = TargetScorer(model)
        self.trie = trie
        self.proposer = DraftProposer(draft, depth) if draft is not None else NoProposer()
        self.settings = settings or GenerationSettings()
        if draft is not None:
            theirs, ours = self.scorer.config.get_text_config(), draft.config
            for name in ("hidden_size", "vocab_size"):
                if getattr(theirs, name) != getattr(ours, name):
                    raise ValueError(
                        f"the draft was built for {name}={getattr(ours, name)}, the target has "
                        f"{name}={getattr(theirs, name)}"
                    )
        self.sync = self.scorer.device.type == "cuda"

    @property
    def depth(self) -> int:
        return self.proposer.depth

    def _clock(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @torch.no_grad()
    def generate(
        self,
        prompt_ids,
        generator: torch.Generator | None = None,
        settings: GenerationSettings | None = None,
    ) -> EngineOutput:
        """Decode one list after ``prompt_ids`` (ids or a ``(1, n)`` tensor); ``generator`` seeds sampling."""
        settings = settings or self.settings
        chooser = Chooser(settings, generator)
        prompt = (
            prompt_ids[0].tolist()
            if torch.is_tensor(prompt_ids) and prompt_ids.dim() == 2
            else list(prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)
        )
        if not prompt:
            raise ValueError("the prompt must hold at least one token (the prompt-end token)")
        limit = settings.max_new_tokens if settings.max_new_tokens is not None else float("inf")
        scorer, proposer, device = self.scorer, self.proposer, self.scorer.device
        t_start = self._clock()
        out = EngineOutput([])
        seq, state = list(prompt), self.trie.start()
        cache, committed = scorer.new_cache(), 0
        proposer.reset()

        def written() -> int:
            return len(seq) - len(prompt)

        while True:
            run = state.forced_run(limit=None if limit == float("inf") else int(limit - written()))
            seq += run
            out.forced_tokens += len(run)
            if state.done or written() >= limit:
                break
            proposal = (
                proposer.propose(seq, committed, state, chooser, int(min(limit - written(), 1 << 30)))
                if committed
                else Proposal()  # the prefill has no target features for a draft to read yet
            )
            out.draft_steps += proposal.draft_steps
            out.draft_seconds += proposal.draft_seconds
            new = seq[committed:] + proposal.tokens
            waiting = len(seq) - committed
            t0 = self._clock()
            positions = torch.arange(committed, committed + len(new), device=device)[None]
            hidden = scorer.score(cache, torch.tensor([new], device=device), positions)
            # logits only where the list has a choice: each drafted choice, and the position after the proposal
            rows = [waiting - 1 + i for i, c in enumerate(proposal.choice) if c] + [len(new) - 1]
            logits = scorer.logits(hidden[0, rows])
            out.forward_seconds += self._clock() - t0
            out.target_forwards += 1

            accepted, correction, row = 0, None, 0
            for token, is_choice, q in zip(proposal.tokens, proposal.choice, proposal.q, strict=True):
                if is_choice:
                    allowed = state.allowed_tensor(device)
                    kept, target_token = chooser.accept(token, q, logits[row][allowed], allowed)
                    row += 1
                    out.choices += 1
                    if not kept:
                        correction = target_token
                        break
                state.advance(token)
                accepted += 1
            else:
                if not state.done and written() + accepted < limit and state.forced() is None:
                    allowed = state.allowed_tensor(device)
                    correction = chooser.choose(logits[-1][allowed], allowed)[0]
                    out.choices += 1
            if proposal.tokens:
                offsets = [i for i, c in enumerate(proposal.choice) if c]
                out.rounds.append(Round(written(), len(proposal.tokens), accepted, offsets))
            kept_positions = waiting + accepted
            scorer.keep(cache, committed, kept_positions)
            proposer.feed(hidden[:, :kept_positions])
            seq += proposal.tokens[:accepted]
            out.forced_tokens += sum(1 for c in proposal.choice[:accepted] if not c)
            committed += kept_positions
            if correction is not None:
                state.advance(correction)
                seq.append(correction)
            if state.done or written() >= limit:
                break
        generated = seq[len(prompt) :]
        if written() > limit:
            generated = generated[: int(limit)]
        out.output_ids = generated
        out.seconds = self._clock() - t_start
        return out
