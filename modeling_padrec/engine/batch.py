"""Many requests at once: the engine's rounds over a batch whose rows advance by different amounts.

Continuous batching: up to ``batch_size`` requests decode together. A request that joins is prefilled in a
forward of its own (with the other joiners), then its cache rows join the batch; a finished row leaves at the
end of its round and a waiting request takes its place. Every row keeps its own :class:`~.loop.Request` (list
state, sampler, output), and the walk over the target's logits is the one :meth:`Engine.generate` runs, so each
row's output is the one that request gets alone.

Rows advance by different amounts per round (prompt lengths, forced runs, accepted lengths all differ). The
caches never move positions to line rows up: a :class:`RaggedCache` appends each forward's positions for every
row and keeps a per-row mask of the slots that hold kept positions. That mask is the cache part of the next
forward's 4-D attention mask; slots of padding or rejected positions are holes, squeezed out when they pile up.
Position ids are per row (rotary embeddings are applied before caching), so a row's slots need not line up.

The draft proposes chains for all rows together (:class:`BatchDraft`): one draft forward per step for every
row that needs one, each row drafting only at its own choices. Draft trees decode one request at a time.

This file imports only torch, transformers, the standard library and its sibling files: it ships as Hub remote
code.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from .acceptance import GenerationSettings
from .loop import Engine, EngineOutput, Request, verify_nodes
from .proposers import DraftProposer, Proposal
from .scoring import crop

__all__ = ["BatchDecoder", "BatchDraft", "RaggedCache"]


def _causal_block(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``(rows, width, width)`` boolean mask among new positions: row b's first ``lengths[b]`` positions are
    causal among themselves; a padding position sees only itself (so no attention row is empty)."""
    ar = torch.arange(width, device=lengths.device)
    real = ar[None] < lengths[:, None]
    causal = (ar[None, :] <= ar[:, None])[None] & real[:, None, :]
    return torch.where(
        real[:, :, None], causal, torch.eye(width, dtype=torch.bool, device=lengths.device)[None]
    )


class RaggedCache:
    """A ``DynamicCache`` whose rows hold different numbers of positions.

    Every forward appends the same number of slots to every row; ``valid`` ``(rows, slots)`` says which slots
    of each row hold positions the row kept. :meth:`mask` turns it into the 4-D attention mask of the next
    forward, :meth:`extend` records which new slots were kept, :meth:`squeeze` moves each row's kept slots to
    the front (one gather) once holes pile up, and :meth:`select` / :meth:`concat` drop and add rows."""

    def __init__(self, cache: DynamicCache, rows: int, device):
        self.cache = cache
        self.valid = torch.zeros(rows, cache.get_seq_length(), dtype=torch.bool, device=device)

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def mask(self, new: torch.Tensor) -> torch.Tensor:
        """The ``(rows, 1, n, slots + n)`` boolean attention mask of a forward over ``n`` new positions per row,
        given their mask among themselves ``new`` ``(rows, n, n)``."""
        past = self.valid[:, None, :].expand(-1, new.shape[1], -1)
        return torch.cat([past, new], dim=-1)[:, None]

    def extend(self, kept: torch.Tensor) -> None:
        """After a forward appended ``n`` slots to every row: ``kept`` ``(rows, n)`` marks the real ones."""
        self.valid = torch.cat([self.valid, kept.to(self.valid.device)], dim=1)

    def truncate(self, length: int) -> None:
        """Drop every slot after the first ``length`` (all rows)."""
        crop(self.cache, length)
        self.valid = self.valid[:, :length]

    def squeeze(self, slack: int = 32) -> None:
        """Move every row's kept slots to the front once more than ``slack`` slots of the widest row are holes."""
        counts = self.valid.sum(dim=1)
        width = int(counts.max()) if self.rows else 0
        if self.length - width <= slack:
            return
        order = torch.sort((~self.valid).to(torch.int8), dim=1, stable=True).indices[:, :width]
        for layer in self.cache.layers:
            if not layer.is_initialized:
                continue
            index = order.to(layer.keys.device)[:, None, :, None]
            layer.keys = layer.keys.gather(2, index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1]))
            layer.values = layer.values.gather(
                2, index.expand(-1, layer.values.shape[1], -1, layer.values.shape[-1])
            )
        self.valid = torch.arange(width, device=self.valid.device)[None] < counts[:, None]

    def select(self, rows: list[int]) -> None:
        """Keep only these rows, in this order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.valid.device)
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys[index.to(layer.keys.device)]
                layer.values = layer.values[index.to(layer.values.device)]
        self.valid = self.valid[index]

    def concat(self, other: RaggedCache) -> None:
        """Append ``other``'s rows after these (the shorter side is padded with holes)."""
        if self.rows == 0:
            self.cache, self.valid = other.cache, other.valid
            return
        length = max(self.length, other.length)
        theirs_by_index = list(other.cache.layers)
        for index, mine in enumerate(self.cache.layers):
            theirs = theirs_by_index[index] if index < len(theirs_by_index) else None
            theirs_ready = theirs is not None and theirs.is_initialized and theirs.keys.numel() > 0
            if not mine.is_initialized:
                if not theirs_ready:
                    continue
                mine.lazy_initialization(theirs.keys, theirs.values)
                mine.keys = theirs.keys.new_zeros((self.rows, theirs.keys.shape[1], 0, theirs.keys.shape[-1]))
                mine.values = theirs.values.new_zeros(
                    (self.rows, theirs.values.shape[1], 0, theirs.values.shape[-1])
                )
            for name in ("keys", "values"):
                states = getattr(mine, name)
                if theirs_ready:
                    added = getattr(theirs, name)
                else:  # rows that have run nothing yet (a draft's new rows): holes only
                    added = states.new_zeros((other.rows, states.shape[1], 0, states.shape[-1]))
                setattr(mine, name, torch.cat([_pad(states, length), _pad(added, length)], dim=0))
        self.valid = torch.cat(
            [_pad_valid(self.valid, length), _pad_valid(other.valid.to(self.valid.device), length)], dim=0
        )


def _pad(states: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - states.shape[-2]
    return states if extra == 0 else torch.nn.functional.pad(states, (0, 0, 0, extra))


def _pad_valid(valid: torch.Tensor, length: int) -> torch.Tensor:
    extra = length - valid.shape[1]
    return valid if extra == 0 else torch.nn.functional.pad(valid, (0, extra), value=False)


class _Row:
    """One request in the batch: its :class:`Request`, input index, start time, and the target features the
    draft has not read yet."""

    __slots__ = ("index", "request", "started", "pending", "draft_known")

    def __init__(self, index: int, request: Request, started: float):
        self.index, self.request, self.started = index, request, started
        self.pending: list[torch.Tensor] = []
        self.draft_known = 0  # positions in the draft's cache with true target features


class _Drafting:
    """One row's chain while the batch drafts: its list state, the draft's last feature and logits, the tokens
    still to step over, and the proposal so far."""

    __slots__ = ("row", "state", "feature", "logits", "steps", "position", "queue", "unstepped", "proposal",
                 "room", "stepping", "forced", "run_feature")  # fmt: skip

    def __init__(self, row: _Row, feature: torch.Tensor, logits: torch.Tensor):
        req = row.request
        self.row, self.state = row, req.state.copy()
        self.feature, self.logits = feature, logits
        self.run_feature = feature  # the feature the run being stepped over started from
        self.steps, self.position = 1, req.committed
        self.queue = req.seq[req.committed + 1 :]  # decided tokens the target has not run (bonus, forced run)
        self.forced = len(self.queue)  # steps over forced tokens only: every one after the first unrun token
        self.unstepped: list[int] = []
        self.proposal, self.room, self.stepping = Proposal(), req.room(), True


class BatchDraft:
    """A PAD-Rec draft proposing chains for every row of a batch (the batched form of
    :class:`~.proposers.DraftProposer`, with the same rule: a choice brings the catalog's forced run after it,
    and the draft steps over those tokens only once another choice is drafted after them).

    Each row's draft cache holds the positions whose inputs carry the target's true features. Every draft step is
    one forward for all rows (a row with nothing to step over fills a hole); a joining row's prompt is read in a
    forward of its own (:meth:`prefill`), so the batch's rounds never pad to prompt length."""

    def __init__(self, proposer: DraftProposer):
        self.draft, self.depth, self.rows = proposer.draft, proposer.depth, proposer.rows
        self.device, self.dtype, self.fused = proposer.device, proposer.dtype, proposer.fused
        self.block = proposer.block
        self.cache = RaggedCache(DynamicCache(), 0, self.device)
        self.pad_id = int(self.draft.config.rec_token_ids[0])
        self.tables = None

    def _forward(self, cache: RaggedCache, ids, features, steps, positions, lengths: list[int]):
        """One draft forward of ``ids`` ``(rows, n)`` over ``cache`` (features only: the head runs where a row
        needs it); row b's first ``lengths[b]`` are real."""
        lengths_t = torch.tensor(lengths, device=self.device)
        mask = cache.mask(_causal_block(lengths_t, ids.shape[1]))
        ids, positions = ids.to(self.device), positions.to(self.device)
        if self.fused:
            out = self.draft.decode_step(ids, features, steps, cache.cache, compute_logits=False,
                                         position_ids=positions, attention_mask=mask, tables=self.tables)  # fmt: skip
        else:
            out = self.draft(ids, features, step_ids=steps, position_ids=positions, attention_mask=mask,
                             cache=cache.cache, compute_logits=False)  # fmt: skip
        cache.extend(torch.arange(ids.shape[1], device=self.device)[None] < lengths_t[:, None])
        return out

    def _read(self, rows: list[_Row], cache: RaggedCache, hold_last: bool):
        """One forward (draft step 0) over every row's pending target features into ``cache``, leaving the last
        one pending with ``hold_last``. Returns each row's feature after its last read position (None if it read
        nothing)."""
        # the fast path's tables, checked against the weights once per round rather than once per step
        self.tables = self.draft.decode_tables(self.device) if self.fused else None
        inputs, feats = [], []
        for row in rows:
            req = row.request
            pending = torch.cat(row.pending, dim=1)[0] if row.pending else None
            m = 0 if pending is None else pending.shape[0]
            if row.draft_known + m != req.committed or len(req.seq) <= req.committed:
                raise RuntimeError(
                    f"draft out of step: it holds {row.draft_known} positions + {m} new features, the target "
                    f"ran {req.committed} of {len(req.seq)} tokens"
                )
            take = m - 1 if hold_last and m else m
            feats.append(pending[:take] if take else torch.zeros(0, self.draft.config.hidden_size))
            # entry t = (f_t, x_{t+1}); the last one of a row predicts the feature of the position after it
            inputs.append(req.seq[row.draft_known + 1 : row.draft_known + take + 1])
            row.pending = [pending[None, take:]] if take < m else []
        lengths = [len(x) for x in inputs]
        width = max(lengths)
        if width == 0:
            return [None] * len(rows)
        ids = torch.tensor([x + [self.pad_id] * (width - len(x)) for x in inputs])
        positions = torch.tensor([list(range(r.draft_known, r.draft_known + width)) for r in rows])
        features = torch.nn.utils.rnn.pad_sequence(
            [f.to(device=self.device, dtype=self.dtype) for f in feats], batch_first=True
        )
        out = self._forward(cache, ids, features, 0, positions, lengths)
        for row, m in zip(rows, lengths, strict=True):
            row.draft_known += m
        return [out.features[b, m - 1] if m else None for b, m in enumerate(lengths)]

    reads_features = True  # the batch hands it each row's kept target features (``_Row.pending``)

    def select(self, rows: list[int]) -> None:
        """Keep only these rows of the draft's cache, in this order."""
        self.cache.select(rows)

    def prefill(self, rows: list[_Row]) -> None:
        """Read the prompts of rows joining the batch (all but their last position, which the next round's
        :meth:`propose` reads) in a forward of their own; their cache rows then join the batch's."""
        fresh = RaggedCache(DynamicCache(), len(rows), self.device)
        self._read(rows, fresh, hold_last=True)
        self.cache.concat(fresh)

    def _advance(self, d: _Drafting) -> bool:
        """Run one row's chain on the host as far as it goes without the draft; True when a token waits to be
        stepped over, False when the row's proposal is complete."""
        state, proposal = d.state, d.proposal
        while not d.queue:
            if len(proposal.tokens) >= d.room or state.done:
                return False
            forced = state.forced()
            if forced is not None:
                token, q, is_choice = forced, None, False
            else:
                if proposal.choices == self.depth:
                    return False
                if d.unstepped:
                    d.queue, d.unstepped = d.unstepped, []
                    d.forced += len(d.queue) - 1  # a drafted choice, then its forced run
                    d.run_feature = d.feature
                    break
                allowed = state.allowed_tensor(self.device)
                token, q = d.row.request.chooser.choose(d.logits[self.rows[allowed]].float(), allowed)
                is_choice = True
            state.advance(token)
            proposal.tokens.append(token)
            proposal.choice.append(is_choice)
            proposal.q.append(q)
            d.unstepped.append(token)
        return True

    @torch.no_grad()
    def propose(self, rows: list[_Row]) -> list[Proposal]:
        """One chain per row (rows in cache order), up to ``depth`` choices each."""
        t0 = time.perf_counter()
        features = self._read(rows, self.cache, hold_last=False)
        last = torch.stack(features)
        logits = self.draft.head_logits(last)
        drafting = [_Drafting(row, last[b], logits[b]) for b, row in enumerate(rows)]
        start = self.cache.length
        while True:
            for d in drafting:
                d.stepping = d.stepping and self._advance(d)
            if not any(d.stepping for d in drafting):
                break
            ids = torch.tensor([[d.queue[0] if d.stepping else self.pad_id] for d in drafting])
            steps = torch.tensor([[d.steps] for d in drafting], device=self.device)
            positions = torch.tensor([[d.position] for d in drafting])
            # a block draft (``forced_inputs="block"``) reads a whole run on the feature it started from
            features = torch.stack([d.run_feature if self.block else d.feature for d in drafting])[:, None]
            lengths = [int(d.stepping) for d in drafting]
            out = self._forward(self.cache, ids, features, steps, positions, lengths)
            # the head only for rows whose queue this step empties: only they can reach a choice next
            heads = [b for b, d in enumerate(drafting) if d.stepping and len(d.queue) == 1]
            logits = {}
            if heads:
                logits = dict(zip(heads, self.draft.head_logits(out.features[heads, 0]), strict=True))
            for b, d in enumerate(drafting):
                if d.stepping:
                    d.queue = d.queue[1:]
                    d.feature = out.features[b, 0]
                    d.logits = logits.get(b)
                    d.steps += 1
                    d.position += 1
        self.cache.truncate(start)  # drop every position drafted on the draft's own features
        self.cache.squeeze()
        seconds = time.perf_counter() - t0
        for d in drafting:
            d.proposal.draft_steps, d.proposal.draft_seconds = d.steps, seconds
            d.proposal.forced_steps = d.forced
        return [d.proposal for d in drafting]


class BatchDecoder:
    """Continuous batching over an :class:`Engine` (its target, catalog, draft chain and settings).

    Args:
        engine: the engine whose target (and draft, drafting chains) decodes the batch.
        batch_size: rows decoded together.
        draft: a batch proposer used instead of the engine's draft: ``prefill(rows)`` when rows join,
            ``propose(rows)`` returning one :class:`~.proposers.Proposal` per row, ``select(rows)`` when rows
            leave, and ``reads_features`` (True to be handed each row's kept target features in ``row.pending``).
            None: the engine's draft chain (:class:`BatchDraft`), or no draft.
    """

    def __init__(self, engine: Engine, batch_size: int, draft=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if engine.width is not None:
            raise ValueError(
                "draft trees decode one request at a time (Engine.generate); batches draft chains: build the "
                "engine without width and budget"
            )
        self.engine, self.scorer, self.batch_size = engine, engine.scorer, batch_size
        self.device = self.scorer.device
        proposer = engine.proposer
        if draft is None and isinstance(proposer, DraftProposer):
            draft = BatchDraft(proposer)
        self.draft = draft
        self.pad_id = engine.trie.eos_id
        self.draft_seconds = 0.0  # spent in the draft's prefill and proposals, over every run of this decoder

    def _verify(self, rows: list[_Row], cache: RaggedCache, proposals: list[Proposal]) -> None:
        """One target forward over every row's waiting tokens + proposal, the walk of each row, and the keep."""
        t0 = self.engine.clock()
        new = [r.request.seq[r.request.committed :] + p.tokens for r, p in zip(rows, proposals, strict=True)]
        width = max(len(t) for t in new)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        for b, (row, tokens) in enumerate(zip(rows, new, strict=True)):
            ids[b, : len(tokens)] = torch.tensor(tokens)
            positions[b] = torch.arange(row.request.committed, row.request.committed + width)
        lengths = torch.tensor([len(t) for t in new], device=self.device)
        mask = cache.mask(_causal_block(lengths, width))
        hidden = self.scorer.score(cache.cache, ids.to(self.device), positions.to(self.device), mask)
        nodes = [verify_nodes(p) for p in proposals]
        flat_rows = [b for b, ns in enumerate(nodes) for _ in ns]
        flat_cols = [r.request.waiting + n for r, ns in zip(rows, nodes, strict=True) for n in ns]
        logits = self.scorer.logits(hidden[flat_rows, flat_cols])
        seconds = self.engine.clock() - t0
        kept, start = [], 0
        for b, (row, proposal, ns) in enumerate(zip(rows, proposals, nodes, strict=True)):
            block = logits[start : start + len(ns)]
            start += len(ns)
            path = row.request.accept(proposal, block, {n: i for i, n in enumerate(ns)}, self.device)
            kept.append(row.request.commit(proposal, path, seconds))
            if self.draft is not None and self.draft.reads_features:
                row.pending.append(hidden[b : b + 1, : kept[-1]])
        kept_t = torch.tensor(kept, device=self.device)
        cache.extend(torch.arange(width, device=self.device)[None] < kept_t[:, None])
        cache.squeeze()

    def _finish(self, row: _Row) -> tuple[int, EngineOutput]:
        return row.index, row.request.finish(self.engine.clock() - row.started)

    @torch.no_grad()
    def run(
        self,
        prompts,
        generators=None,
        settings: GenerationSettings | None = None,
        progress=None,
    ):
        """Decode every prompt; yields ``(index, EngineOutput)`` as requests finish. ``progress``: called with the
        number of requests finished after each round (a tqdm bar's ``update``, say)."""
        prompts = list(prompts)
        if generators is not None and len(generators) != len(prompts):
            raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
        waiting = list(reversed(range(len(prompts))))  # popped from the end: input order
        active: list[_Row] = []
        cache = RaggedCache(self.scorer.new_cache(), 0, self.device)
        while waiting or active:
            done: list[_Row] = []
            if waiting and len(active) < self.batch_size:
                joined = []
                while waiting and len(active) + len(joined) < self.batch_size:
                    i = waiting.pop()
                    gen = generators[i] if generators is not None else None
                    row = _Row(i, self.engine.request(prompts[i], gen, settings), self.engine.clock())
                    (done if row.request.jump() else joined).append(row)
                if joined:  # prefill: the joiners' prompts in a forward of their own, then their rows join
                    fresh = RaggedCache(self.scorer.new_cache(), len(joined), self.device)
                    self._verify(joined, fresh, [Proposal() for _ in joined])
                    cache.concat(fresh)
                    active += joined
                    if self.draft is not None:
                        t0 = self.engine.clock()
                        self.draft.prefill(joined)
                        self.draft_seconds += self.engine.clock() - t0
            active = self._leave(cache, active, [r.request.jump() for r in active], done)
            if active:
                if self.draft is None:
                    proposals = [Proposal() for _ in active]
                else:
                    t0 = self.engine.clock()
                    proposals = self.draft.propose(active)
                    self.draft_seconds += self.engine.clock() - t0
                self._verify(active, cache, proposals)
                active = self._leave(cache, active, [r.request.finished for r in active], done)
            for row in done:
                yield self._finish(row)
            if progress is not None and done:
                progress(len(done))

    def _leave(
        self, cache: RaggedCache, active: list[_Row], finished: list[bool], done: list[_Row]
    ) -> list[_Row]:
        """Move the rows of finished requests (``finished[b]``) from the batch to ``done`` and out of the caches;
        returns the rows that stay."""
        keep = [b for b, f in enumerate(finished) if not f]
        if len(keep) == len(active):
            return active
        done += [r for r, f in zip(active, finished, strict=True) if f]
        cache.select(keep)
        if self.draft is not None:
            self.draft.select(keep)
        return [active[b] for b in keep]
