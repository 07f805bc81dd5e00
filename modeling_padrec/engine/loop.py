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
from .tree import TreeProposer, ancestor_mask, token_depths
from .trie import CatalogTrie

__all__ = ["Engine", "EngineOutput", "GenerationSettings", "Request", "Round"]


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
    forced_draft_steps: int = 0  # of ``draft_steps``, those over forced tokens only
    draft_seconds: float = 0.0
    forward_seconds: float = 0.0
    seconds: float = 0.0
    # per round, with ``generate(..., trace=True)``: see :meth:`Engine.generate`
    trace: list[dict] | None = None


class Engine:
    """Catalog-constrained list decoding for one target, with jump-forward and optional PAD-Rec drafting.

    Args:
        model: the target causal LM (PEFT-wrapped, merged or plain ``transformers``).
        trie: the catalog (:class:`CatalogTrie`), built for the target's token ids and list length.
        draft: optional PAD-Rec draft; ``depth`` choices are proposed per round (default: its trained depth).
        settings: greedy (default) or sampling, and ``max_new_tokens``.
        width: draft a tree instead of a chain (:class:`~.tree.TreeProposer`): ``width`` children per expanded
            choice point, up to ``depth`` choices on a path and ``budget`` choice nodes per tree.
        acceptance: a calibrated acceptance curve, or one per sibling order, to value greedy tree nodes by
            (:class:`~.tree.TreeProposer`); implies a tree.

    ``engine.generate(prompt_ids)`` decodes one request (a list of token ids ending with the prompt-end token).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        trie: CatalogTrie,
        draft: torch.nn.Module | None = None,
        depth: int | None = None,
        settings: GenerationSettings | None = None,
        width: int | None = None,
        budget: int | None = None,
        acceptance=None,
    ):
        self.scorer = TargetScorer(model)
        self.trie = trie
        tree = width is not None or budget is not None or acceptance is not None
        if draft is None:
            if tree:
                raise ValueError("a draft tree needs a draft")
            self.proposer = NoProposer()
        elif not tree:
            self.proposer = DraftProposer(draft, depth)
        else:
            self.proposer = TreeProposer(draft, depth, 1 if width is None else width, budget, acceptance)
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

    @property
    def width(self) -> int | None:
        """Children per expanded choice point of a draft tree (None: a chain, or no draft)."""
        return getattr(self.proposer, "width", None)

    @property
    def budget(self) -> int | None:
        return getattr(self.proposer, "budget", None)

    def clock(self) -> float:
        """Seconds (perf_counter) once the device has finished its queued work (CUDA is synchronized first)."""
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _verify(self, cache, seq: list[int], committed: int, proposal: Proposal):
        """One target forward over every position not yet in the cache plus the proposal (a tree under its
        attention mask, each node at its own depth). Returns the hidden states, the logits of every position
        where a choice may follow (parents of drafted choices and the proposal's leaves), and the logits row of
        each such proposal node (-1: the last sequence position)."""
        scorer, device = self.scorer, self.scorer.device
        waiting, parents = len(seq) - committed, proposal.parents
        ids = torch.tensor([seq[committed:] + proposal.tokens], device=device)
        if proposal.is_chain:
            positions = torch.arange(committed, committed + ids.shape[1], device=device)[None]
            mask = None
        else:
            depth = torch.tensor(token_depths(parents))
            positions = torch.cat([torch.arange(committed, len(seq)), len(seq) + depth])[None].to(device)
            n = ids.shape[1]
            mask = torch.ones(n, committed + n, dtype=torch.bool).tril(committed)
            mask[waiting:, committed + waiting :] = ancestor_mask(parents)
            mask = mask[None, None].to(device)
        hidden = scorer.score(cache, ids, positions, mask)
        nodes = verify_nodes(proposal)
        rows = {node: r for r, node in enumerate(nodes)}
        logits = scorer.logits(hidden[0, [waiting + node for node in nodes]])
        return hidden, logits, rows

    def request(self, prompt_ids, generator=None, settings=None, trace: bool = False) -> Request:
        """A :class:`Request` for ``prompt_ids`` (ids or a ``(1, n)`` tensor) over this engine's catalog."""
        return Request(self.trie, prompt_ids, settings or self.settings, generator, trace)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids,
        generator: torch.Generator | None = None,
        settings: GenerationSettings | None = None,
        trace: bool = False,
    ) -> EngineOutput:
        """Decode one list after ``prompt_ids`` (ids or a ``(1, n)`` tensor); ``generator`` seeds sampling.

        ``trace=True`` records every drafted round in ``output.trace``: ``waiting`` (positions verified before
        the proposal), the proposal's ``parent``, ``choice``, and for trees ``score`` (each node's value: the
        draft's cumulative log-probability of its path, unless the tree ranks by an acceptance curve), ``level``,
        ``level_seconds``, ``tree_forwards`` and ``tree_nodes`` (draft forwards and nodes spent growing it); the
        accepted ``path`` (node indices), ``draft_steps`` (draft forwards, catch-up included), ``forced_steps`` (of
        those, the ones over forced tokens only), and
        ``draft_seconds`` / ``verify_seconds``."""
        t_start = self.clock()
        req = self.request(prompt_ids, generator, settings, trace)
        scorer, proposer, device = self.scorer, self.proposer, self.scorer.device
        cache = scorer.new_cache()
        proposer.reset()
        while not req.jump():
            proposal = (
                proposer.propose(req.seq, req.committed, req.state, req.chooser, req.room())
                if req.committed
                else Proposal()  # the prefill has no target features for a draft to read yet
            )
            waiting = req.waiting
            t0 = self.clock()
            hidden, logits, rows = self._verify(cache, req.seq, req.committed, proposal)
            verify_seconds = self.clock() - t0
            path = req.accept(proposal, logits, rows, device)
            kept = req.commit(proposal, path, verify_seconds)
            if proposal.is_chain:  # the kept positions are a prefix: a crop
                scorer.keep(cache, req.committed - kept, kept)
                proposer.feed(hidden[:, :kept])
            else:  # a root-to-node path of a tree: gather its positions
                index = torch.tensor(list(range(waiting)) + [waiting + n for n in path], device=device)
                scorer.keep(cache, req.committed - kept, index)
                proposer.feed(hidden[:, index])
        return req.finish(self.clock() - t_start)

    @torch.no_grad()
    def generate_batch(self, prompts, batch_size: int = 16, generators=None, settings=None, progress=None):
        """Decode many requests, ``batch_size`` at a time with continuous batching (:mod:`.batch`); yields
        ``(index, EngineOutput)`` as each request finishes (not in input order). Each output is the one
        :meth:`generate` gives that request alone. ``generators``: one per request (sampling), or None."""
        from .batch import BatchDecoder

        yield from BatchDecoder(self, batch_size).run(prompts, generators, settings, progress)


def verify_nodes(proposal: Proposal) -> list[int]:
    """The proposal nodes whose next-token logits a verification needs, in order: -1 (the last sequence position),
    every drafted choice's parent and every leaf."""
    parents = proposal.parents
    has_child = set(parents)
    return sorted({p for p, c in zip(parents, proposal.choice, strict=True) if c}
                  | {i for i in range(len(parents)) if i not in has_child} | {-1})  # fmt: skip


class Request:
    """One list being decoded: its sequence, list state, sampler, output, and how much the target has run.

    The loop around it (:meth:`Engine.generate` for one request, :mod:`.batch` for many) calls :meth:`jump`
    (the forced run; True once the request is finished), verifies a proposal, :meth:`accept` (the walk) and
    :meth:`commit`; both loops share every decision made here."""

    def __init__(self, trie: CatalogTrie, prompt_ids, settings: GenerationSettings, generator, trace: bool):
        prompt = (
            prompt_ids[0].tolist()
            if torch.is_tensor(prompt_ids) and prompt_ids.dim() == 2
            else list(prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)
        )
        if not prompt:
            raise ValueError("the prompt must hold at least one token (the prompt-end token)")
        self.prompt, self.seq, self.state = prompt, list(prompt), trie.start()
        self.chooser = Chooser(settings, generator)
        self.limit = settings.max_new_tokens if settings.max_new_tokens is not None else float("inf")
        self.out = EngineOutput([], trace=[] if trace else None)
        self.committed = 0  # tokens of ``seq`` whose keys and values the target's cache holds
        self._round: tuple | None = None

    @property
    def written(self) -> int:
        return len(self.seq) - len(self.prompt)

    @property
    def waiting(self) -> int:
        """Decided tokens the target has not run yet."""
        return len(self.seq) - self.committed

    @property
    def finished(self) -> bool:
        return self.state.done or self.written >= self.limit

    def room(self) -> int:
        """How many more tokens the list may take."""
        return int(min(self.limit - self.written, 1 << 30))

    def jump(self) -> bool:
        """Append the forced run from here; True when the request is finished."""
        if not self.finished:
            run = self.state.forced_run(limit=None if self.limit == float("inf") else self.room())
            self.seq += run
            self.out.forced_tokens += len(run)
        return self.finished

    def accept(self, proposal: Proposal, logits: torch.Tensor, rows: dict[int, int], device) -> list[int]:
        """Walk ``proposal`` from its root over the target's ``logits`` (row ``rows[node]`` follows ``node``):
        forced tokens are kept as they are; at a choice the target's token (greedy) or the speculative-sampling
        outcome decides which child (if any) is kept. Returns the kept path (node indices); the token written
        after it, if any, waits for :meth:`commit`."""
        children: dict[int, list[int]] = {}
        for i, p in enumerate(proposal.parents):
            children.setdefault(p, []).append(i)
        state, out = self.state, self.out
        node, path, correction, rejected = -1, [], None, False
        while not state.done and self.written + len(path) < self.limit:
            kids = children.get(node, ())
            if state.forced() is not None:
                if not kids:
                    break  # the next round's forced run takes it
                node = kids[0]
            else:
                allowed = state.allowed_tensor(device)
                out.choices += 1
                drafted = [proposal.tokens[k] for k in kids]
                q = proposal.q[kids[0]] if kids else None
                index, token = self.chooser.accept_among(drafted, q, logits[rows[node]][allowed], allowed)
                if index is None:
                    correction, rejected = token, bool(kids)
                    break
                node = kids[index]
            state.advance(proposal.tokens[node])
            path.append(node)
        self._round = (correction, rejected)
        return path

    def commit(self, proposal: Proposal, path: list[int], verify_seconds: float) -> int:
        """Record the verified round (after :meth:`accept`): the kept path joins the sequence, the target's
        token after it is written, and the target's cache now holds the waiting tokens and the path. Returns how
        many positions of the forward were kept (waiting + path)."""
        (correction, rejected), self._round = self._round, None
        out, waiting = self.out, self.waiting
        out.target_forwards += 1
        out.forward_seconds += verify_seconds
        out.draft_steps += proposal.draft_steps
        out.forced_draft_steps += proposal.forced_steps
        out.draft_seconds += proposal.draft_seconds
        if out.trace is not None and proposal.tokens:
            out.trace.append({
                "waiting": waiting, "tokens": proposal.tokens, "parent": proposal.parents, "choice": proposal.choice,
                "score": proposal.score, "level": proposal.level, "level_seconds": proposal.level_seconds,
                "path": path, "draft_seconds": proposal.draft_seconds, "verify_seconds": verify_seconds,
                "draft_steps": proposal.draft_steps, "forced_steps": proposal.forced_steps,
                "tree_forwards": proposal.tree_forwards, "tree_nodes": proposal.tree_nodes,
            })  # fmt: skip
        if proposal.tokens:
            offsets = [i for i, n in enumerate(path) if proposal.choice[n]] + (
                [len(path)] if rejected else []
            )
            out.rounds.append(Round(self.written, len(proposal.tokens), len(path), offsets))
        self.seq += [proposal.tokens[n] for n in path]
        out.forced_tokens += sum(1 for n in path if not proposal.choice[n])
        self.committed += waiting + len(path)
        if correction is not None:
            self.state.advance(correction)
            self.seq.append(correction)
        return waiting + len(path)

    def finish(self, seconds: float) -> EngineOutput:
        """The request's output (tokens cut at ``max_new_tokens``) and its cost."""
        generated = self.seq[len(self.prompt) :]
        if self.written > self.limit:
            generated = generated[: int(self.limit)]
        self.out.output_ids = generated
        self.out.seconds = seconds
        return self.out
