"""Recommend: prompts in, constrained greedy lists out, with latency and target-forward counts.

Two decoding paths, the same lists: padrec's engine (:mod:`modeling_padrec.engine`: jump-forward over the
tokens the catalog forces, optional PAD-Rec drafting at the choices) is the default; ``engine="generate"`` keeps
stock ``target.generate`` under :class:`CatalogListConstraint`, the reference and the compatibility path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import LogitsProcessorList

from .constraint import CatalogListConstraint, parse_list
from .data import RecDataset
from .engine import CatalogTrie, Engine, GenerationSettings
from .engine.tree import check_acceptance
from .errors import PadrecError
from .examples import ItemEncoder, left_pad
from .target import Target

ENGINES = ("engine", "generate")


class ForwardCounter:
    """Counts (and times) forward calls of a model: hooks on the underlying transformers model, PEFT or not."""

    def __init__(self, model: torch.nn.Module):
        self.module = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.sync = next(self.module.parameters()).is_cuda  # time kernels, not their launches
        self.count = 0
        self.seconds = 0.0
        self._handles: list = []
        self._start = 0.0

    def _pre(self, *_):
        self.count += 1
        if self.sync:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _post(self, *_):
        if self.sync:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> ForwardCounter:
        self.count, self.seconds = 0, 0.0
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class Recommendation:
    user: str
    prompt_ids: list[int]
    output_ids: list[int]
    items: list[int | None]
    latency_ms: float
    target_forwards: int
    forward_ms: float = 0.0  # time inside the target's forwards (run statistics, not in the JSON line)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("forward_ms")
        d.update(d.pop("extra"))
        return d


class Recommender:
    """Builds prompts for a dataset's users and decodes their lists with a target under the catalog constraint."""

    def __init__(
        self, target: Target, dataset: RecDataset, list_len: int | None = None, engine: str = "engine"
    ):
        if engine not in ENGINES:
            raise PadrecError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.target, self.dataset, self.engine_name = target, dataset, engine
        self.token_map = target.check_dataset(dataset)
        self.encoder = ItemEncoder(self.token_map, dataset)
        self.list_len = list_len or target.meta.list_len
        tm = self.token_map
        self.trie = CatalogTrie(tm.item_ids(dataset.index), tm.sep_id, tm.eos_id, self.list_len)
        self.constraint = CatalogListConstraint(
            None, tm.sep_id, tm.eos_id, tm.rec_id, self.list_len, trie=self.trie
        )
        self._engines: dict[tuple, Engine] = {}
        self.item_lookup = {tuple(t): i for i, t in enumerate(self.encoder.item_tokens)}
        self.device = next(target.model.parameters()).device

    @property
    def max_new_tokens(self) -> int:
        return self.list_len * (self.dataset.index.levels + 1)  # N items, N-1 separators, EOS

    def prompt(self, user: str, split: str) -> list[int]:
        return self.encoder.prompt(self.dataset.history(user, split), self.target.meta.history_len)

    def trim(self, generated: list[int]) -> list[int]:
        """Generated ids up to and including the first EOS (what follows is padding)."""
        eos = self.token_map.eos_id
        return generated[: generated.index(eos) + 1] if eos in generated else generated

    def items(self, output_ids: list[int]) -> list[int | None]:
        return parse_list(output_ids, self.item_lookup, self.token_map.sep_id, self.token_map.eos_id)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Constrained ``generate``; extra ``logits_processor`` entries run after the constraint."""
        processors = LogitsProcessorList([self.constraint, *kwargs.pop("logits_processor", [])])
        kwargs.setdefault("do_sample", False)
        with torch.inference_mode():
            return self.target.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=self.max_new_tokens,
                logits_processor=processors,
                pad_token_id=self.token_map.pad_id,
                eos_token_id=self.token_map.eos_id,
                **kwargs,
            )

    def engine(
        self,
        draft=None,
        depth: int | None = None,
        width: int | None = None,
        budget: int | None = None,
        acceptance=None,
    ) -> Engine:
        """padrec's engine for this target and catalog (greedy), with ``draft`` proposing ``depth`` choices per
        round (default: the draft's trained depth), as a chain or, with ``width``, a tree of at most ``budget``
        choice nodes, valued by the draft or by calibrated ``acceptance`` curves (one, or one per sibling order);
        built once per (draft, depth, width, budget, curves)."""
        curve = (
            None if acceptance is None else tuple(tuple(map(tuple, c)) for c in check_acceptance(acceptance))
        )
        key = (id(draft), depth, width, budget, curve)
        if key not in self._engines:
            settings = GenerationSettings(max_new_tokens=self.max_new_tokens)
            self._engines[key] = Engine(
                self.target.model, self.trie, draft, depth, settings, width, budget, acceptance
            )
        return self._engines[key]

    def recommend(
        self,
        user: str,
        split: str = "test",
        engine: Engine | None = None,
        generator: torch.Generator | None = None,
        settings: GenerationSettings | None = None,
        **generate_kwargs,
    ):
        """One user, batch size 1, timed; counts the target's forward passes. With ``engine`` (or when the
        recommender was made with ``engine="engine"`` and no ``generate`` arguments are given) decodes with
        padrec's engine (``settings``: other than the engine's own, e.g. sampling; ``generator`` seeds it), else
        with stock ``generate``."""
        if engine is None and self.engine_name == "engine" and not generate_kwargs:
            engine = self.engine()
        if engine is not None:
            return self._recommend_engine(user, split, engine, generator, settings)
        prompt = self.prompt(user, split)
        ids = torch.tensor([prompt])
        with ForwardCounter(self.target.model) as counter:
            t0 = time.perf_counter()
            out = self.generate(ids, torch.ones_like(ids), **generate_kwargs)
            if counter.sync:
                torch.cuda.synchronize()
            latency = (time.perf_counter() - t0) * 1000
        gen = self.trim(out[0, len(prompt) :].tolist())
        return Recommendation(
            user, prompt, gen, self.items(gen), round(latency, 3), counter.count, 1000 * counter.seconds
        )

    def _recommend_engine(self, user: str, split: str, engine: Engine, generator=None, settings=None):
        prompt = self.prompt(user, split)
        t0 = time.perf_counter()
        result = engine.generate(prompt, generator=generator, settings=settings)
        return self._from_engine(user, prompt, result, (time.perf_counter() - t0) * 1000, engine.depth)

    def _from_engine(
        self, user: str, prompt: list[int], result, latency_ms: float, depth: int
    ) -> Recommendation:
        gen = self.trim(result.output_ids)
        extra = {
            "forced_tokens": result.forced_tokens,
            "choices": result.choices,
            "draft_steps": result.draft_steps,
            "forced_draft_steps": result.forced_draft_steps,
            "draft_ms": round(1000 * result.draft_seconds, 3),
        }
        if depth:
            extra["rounds"] = [r.to_json() for r in result.rounds]
        return Recommendation(
            user, prompt, gen, self.items(gen), round(latency_ms, 3), result.target_forwards,
            1000 * result.forward_seconds, extra,
        )  # fmt: skip

    def recommend_many(
        self, users: list[str], split: str = "test", engine: Engine | None = None, batch_size: int = 16,
        progress=None,
    ):  # fmt: skip
        """Many users through the engine with continuous batching, ``batch_size`` rows at a time; yields
        ``(position in users, Recommendation)`` as users finish (not in order). Each list is the one
        :meth:`recommend` gives that user alone; ``latency_ms`` runs from the user's admission to its end."""
        engine = engine or self.engine()
        prompts = [self.prompt(u, split) for u in users]
        for i, result in engine.generate_batch(prompts, batch_size=batch_size, progress=progress):
            yield i, self._from_engine(users[i], prompts[i], result, 1000 * result.seconds, engine.depth)

    def recommend_batch(self, users: list[str], split: str = "test", batch_size: int = 32, progress=None):
        """Lists for many users (for evaluation; no per-user timing): with the engine in continuous batches of
        ``batch_size`` rows, with ``engine="generate"`` in left-padded batches of stock ``generate``."""
        out: dict[str, list[int | None]] = {}
        if self.engine_name == "engine":
            update = progress.update if progress is not None else None
            for i, r in self.recommend_many(users, split, batch_size=batch_size, progress=update):
                out[users[i]] = r.items
            return {u: out[u] for u in users}
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            batch = left_pad([self.prompt(u, split) for u in chunk], self.token_map.pad_id)
            seqs = self.generate(batch["input_ids"], batch["attention_mask"])
            width = batch["input_ids"].shape[1]
            for u, row in zip(chunk, seqs[:, width:].tolist(), strict=True):
                out[u] = self.items(self.trim(row))
            if progress is not None:
                progress.update(len(chunk))
        return out
