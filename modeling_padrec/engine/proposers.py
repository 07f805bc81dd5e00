"""Who proposes the tokens a target forward verifies: nobody (jump-forward alone) or a PAD-Rec draft.

A proposal is a chain (here) or a tree (:mod:`.tree`) of tokens after the current sequence. The draft is asked
only where the catalog trie leaves a choice; forced tokens are filled in by the trie (the draft still steps over
them when another choice follows, to carry its feature chain: one step per token, or, for a draft trained with
``forced_inputs="block"``, one forward per drafted choice and the forced run after it, all read on the feature the
choice read). ``depth`` counts choices, not tokens: a round ends after ``depth`` choices plus the forced run that
follows the last one.

:class:`DraftProposer` reads the target's features from the engine's own forwards (no hooks): after every target
forward the engine hands it the features of the positions it kept. The draft's cache holds only positions whose
inputs carry true target features; positions drafted on its own predictions are cropped at the end of a round.

The draft is used through its forward (``draft(input_ids, target_features, step_ids=, cache=, compute_logits=)``
returning ``.features`` and ``.logits`` over ``config.rec_token_ids``), ``draft.head_logits(features)`` (with
``rows=``, where the draft takes it, only the allowed tokens' rows of its head are read) and, where
the draft has it, its one-token fast path ``draft.decode_step``; any PAD-Rec ablation fits. This file imports only
torch and transformers and its sibling files: it ships as Hub remote code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .acceptance import Chooser
from .scoring import crop
from .trie import ListState


@dataclass
class Proposal:
    """Tokens proposed after the sequence, as a chain or a tree.

    ``choice[i]``: token i was a choice (else forced); ``q[i]``: the draft's distribution over the allowed
    tokens at the choice point token i was drawn from (None when greedy or forced; siblings share it, and were
    drawn in index order). ``parent[i]``: the index of the token that token i follows, -1 for the end of the
    sequence; None for a chain (token i follows token i - 1). Parents come before their children."""

    tokens: list[int] = field(default_factory=list)
    choice: list[bool] = field(default_factory=list)
    q: list[torch.Tensor | None] = field(default_factory=list)
    parent: list[int] | None = None
    draft_steps: int = 0
    # of ``draft_steps``, those over forced tokens only (a draft reading only choices would skip them)
    forced_steps: int = 0
    draft_seconds: float = 0.0
    # trees only: each node's value (the draft's cumulative log-probability of its path, or the log of its
    # calibrated acceptance) and level (choices on its path), the draft's time from the round's start to the end
    # of each level, and the draft forwards and nodes spent growing the tree (``draft_steps`` adds the catch-up)
    score: list[float] | None = None
    level: list[int] | None = None
    level_seconds: list[float] | None = None
    tree_forwards: int = 0
    tree_nodes: int = 0

    @property
    def choices(self) -> int:
        return sum(self.choice)

    @property
    def parents(self) -> list[int]:
        return list(range(-1, len(self.tokens) - 1)) if self.parent is None else self.parent

    @property
    def is_chain(self) -> bool:
        return self.parent is None or all(p == i - 1 for i, p in enumerate(self.parent))


class NoProposer:
    """Jump-forward alone: nothing is proposed; every choice is the target's."""

    depth = 0

    def reset(self) -> None:
        pass

    def feed(self, features: torch.Tensor) -> None:
        pass

    def propose(self, sequence, committed, state, chooser, max_tokens) -> Proposal:
        return Proposal()


class DraftProposer:
    """A PAD-Rec draft proposing ``depth`` choices per round from the target's features.

    Args:
        draft: a PAD-Rec draft model (any of the four ablations).
        depth: choices proposed per round (default: the draft's trained depth, ``config.max_draft_steps``).
    """

    def __init__(self, draft: torch.nn.Module, depth: int | None = None):
        self.draft = draft
        self.depth = int(depth or draft.config.max_draft_steps)
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        param = next(draft.parameters())
        self.device, self.dtype = param.device, param.dtype
        ids = torch.tensor(draft.config.rec_token_ids, dtype=torch.long)
        rows = torch.full((draft.config.vocab_size,), -1, dtype=torch.long)
        rows[ids] = torch.arange(len(ids))
        self.rows = rows.to(self.device)  # target id → column of the draft's head (-1: not in it)
        # every token id as a (1, 1) tensor: a step's input is a view, not a new tensor
        self.ids = torch.arange(draft.config.vocab_size, device=self.device).view(-1, 1, 1)
        self.fused = callable(getattr(draft, "decode_step", None)) and callable(
            getattr(draft, "decode_tables", None)
        )
        # a draft whose head reads only the rows asked for (``head_logits(features, rows)``) says so
        self.head_rows = bool(getattr(draft, "head_reads_rows", False))
        # a draft trained to read a choice and its forced run on one feature reads the run in one forward
        self.block = getattr(draft.config, "forced_inputs", "chain") == "block"
        self.tables = None
        self.reset()

    def reset(self) -> None:
        """Forget the previous request."""
        self.cache = DynamicCache()
        self.pending: list[torch.Tensor] = []  # target features of positions not yet in the draft cache
        self.forwards = 0  # this round's draft forwards, the catch-up included
        self.forced_steps = 0  # of them, those over forced tokens only

    @property
    def known(self) -> int:
        return self.cache.get_seq_length()

    def feed(self, features: torch.Tensor) -> None:
        """Target features ``(1, m, hidden)`` of the next ``m`` positions the target kept."""
        if features.shape[1]:
            self.pending.append(features)

    def _step(self, token: int, feature: torch.Tensor, step: int) -> torch.Tensor:
        """One draft step over ``token`` (its input feature ``feature``); returns the predicted next feature."""
        ids = self.ids[token]
        self.forwards += 1
        if self.fused:  # the draft's one-token fast path: the same function in fewer ops
            out = self.draft.decode_step(
                ids, feature, step, self.cache, compute_logits=False, tables=self.tables
            )
        else:
            out = self.draft(ids, feature, step_ids=step, cache=self.cache, compute_logits=False)
        return out.features[:, -1:]

    def _step_run(
        self, tokens: list[int], feature: torch.Tensor, steps: int, forced: bool = False
    ) -> tuple[torch.Tensor, int]:
        """Step over decided ``tokens``: a drafted choice and its forced run, or (``forced``) the forced run after
        the verified positions. One by one, each reading the feature the one before predicted, or, for a draft
        trained with ``forced_inputs="block"``, in one forward, all reading ``feature``. Returns (the feature
        after the last one, the next step)."""
        if self.block and len(tokens) > 1:
            self.forwards += 1
            self.forced_steps += forced
            ids = torch.tensor([tokens], device=self.device)
            step_ids = torch.arange(steps, steps + len(tokens), device=self.device)[None]
            feats = feature.expand(1, len(tokens), feature.shape[-1])
            if self.fused:
                out = self.draft.decode_step(ids, feats, step_ids, self.cache, compute_logits=False,
                                             tables=self.tables)  # fmt: skip
            else:
                out = self.draft(ids, feats, step_ids=step_ids, cache=self.cache, compute_logits=False)
            return out.features[:, -1:], steps + len(tokens)
        self.forced_steps += len(tokens) - (not forced) if tokens else 0
        for token in tokens:
            feature = self._step(token, feature, steps)
            steps += 1
        return feature, steps

    def scores(self, feature: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The draft's logits (float32) over the ``allowed`` tokens from the predicted ``feature`` ``(1, 1, h)``;
        a draft that can reads only those rows of its head."""
        columns = self.rows[allowed]
        if self.head_rows:
            return self.draft.head_logits(feature, columns)[0, -1].float()
        return self.draft.head_logits(feature)[0, -1][columns].float()

    def _catch_up(self, sequence: list[int], committed: int) -> tuple[torch.Tensor, int]:
        """Bring the draft up to the end of ``sequence``: one forward over the positions the target kept (their
        true features, step 0), then one step per decided token the target has not run yet (the bonus token and
        the forced run). Returns the feature predicting the next token and the draft step the next position
        takes."""
        known = self.known
        self.forwards, self.forced_steps = 1, 0
        # the fast path's tables, checked against the weights once per round rather than once per step
        self.tables = self.draft.decode_tables(self.device) if self.fused else None
        features = torch.cat(self.pending, dim=1) if len(self.pending) > 1 else self.pending[0]
        self.pending = []
        m = features.shape[1]
        if known + m != committed or len(sequence) <= committed:
            raise RuntimeError(
                f"draft out of step: it holds {known} positions + {m} new features, the target "
                f"ran {committed} of {len(sequence)} tokens"
            )
        # entry t = (f_t, x_{t+1}); the last one predicts the feature of position ``committed``
        inputs = torch.tensor([sequence[known + 1 : committed + 1]], device=self.device)
        features = features.to(self.dtype)
        if self.fused and known:  # the fast path (causal: the new positions continue the cache)
            out = self.draft.decode_step(
                inputs, features, 0, self.cache, compute_logits=False, tables=self.tables
            )
        else:  # the prompt (or a draft without the fast path): the model's own forward
            out = self.draft(inputs, features, step_ids=0, cache=self.cache, compute_logits=False)
        # every token after the first one the target has not run is the trie's forced run
        return self._step_run(sequence[committed + 1 :], out.features[:, -1:], 1, forced=True)

    @torch.no_grad()
    def propose(
        self, sequence: list[int], committed: int, state: ListState, chooser: Chooser, max_tokens: int
    ) -> Proposal:
        """Draft after ``sequence`` (whose first ``committed`` tokens the target has run; ``state`` is the list
        state after all of it) until ``depth`` choices, the end of the list, or ``max_tokens`` tokens.

        A drafted choice brings the forced run after it (the catalog's, no draft needed); the draft steps over
        those tokens (its feature chain needs them) only once another choice is to be drafted after them, and
        computes logits only there."""
        t0 = time.perf_counter()
        proposal = Proposal()
        feature, steps = self._catch_up(sequence, committed)
        state, unstepped = state.copy(), []
        while len(proposal.tokens) < max_tokens and not state.done:
            forced = state.forced()
            if forced is not None:
                token, q, is_choice = forced, None, False
            else:
                if proposal.choices == self.depth:
                    break
                feature, steps = self._step_run(unstepped, feature, steps)  # a drafted choice, its forced run
                unstepped = []
                allowed = state.allowed_tensor(self.device)
                token, q = chooser.choose(self.scores(feature, allowed), allowed)
                is_choice = True
            state.advance(token)
            proposal.tokens.append(token)
            proposal.choice.append(is_choice)
            proposal.q.append(q)
            unstepped.append(token)
        crop(self.cache, committed)  # drop every position drafted on the draft's own features
        proposal.draft_steps, proposal.forced_steps = self.forwards, self.forced_steps
        proposal.draft_seconds = time.perf_counter() - t0
        return proposal
