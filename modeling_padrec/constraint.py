"""Constrained list decoding: only catalog items, each at most once, exactly N of them, then EOS.

:class:`CatalogListConstraint` is a stock ``transformers`` ``LogitsProcessor``. It keeps no state between
calls: the list being generated is re-read from ``input_ids`` (everything after the last ``<|rec|>``), so the
same object works in plain greedy/sampled ``generate``, in assisted generation (where the target scores many
drafted prefixes in one pass) and inside a draft model.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
from transformers import LogitsProcessor

from .tokenization import TokenMap


class CatalogListConstraint(LogitsProcessor):
    """Mask every token that cannot continue a valid list of ``list_len`` distinct catalog items.

    Args:
        item_token_ids: (num_items, L) token ids of every catalog item.
        sep_id / eos_id / rec_id: separator, end of list, and the token that ends the prompt.
        list_len: items per list (N).
    """

    def __init__(self, item_token_ids, sep_id: int, eos_id: int, rec_id: int, list_len: int):
        items = [tuple(row) for row in torch.as_tensor(item_token_ids).tolist()]
        if list_len < 1:
            raise ValueError(f"list_len must be >= 1, got {list_len}")
        self.levels = len(items[0])
        self.sep_id, self.eos_id, self.rec_id, self.list_len = sep_id, eos_id, rec_id, list_len
        self.items = set(items)
        # prefix (tuple of token ids) → {next token: number of catalog items below it}
        self.children: dict[tuple, Counter] = defaultdict(Counter)
        for code in items:
            for k in range(self.levels):
                self.children[code[:k]][code[k]] += 1

    @classmethod
    def from_token_map(cls, token_map: TokenMap, index, list_len: int) -> CatalogListConstraint:
        return cls(token_map.item_ids(index), token_map.sep_id, token_map.eos_id, token_map.rec_id, list_len)

    def allowed(self, generated: list[int]) -> list[int]:
        """Token ids allowed after ``generated`` (the tokens after ``<|rec|>``)."""
        if self.eos_id in generated:
            return [self.eos_id]
        parts: list[list[int]] = [[]]
        for tok in generated:
            if tok == self.sep_id:
                parts.append([])
            else:
                parts[-1].append(tok)
        done, current = parts[:-1], parts[-1]
        if any(tuple(p) not in self.items for p in done) or len(current) > self.levels:
            return [self.eos_id]  # not a valid list (only happens on a rejected draft): anything goes
        if len(current) == self.levels:
            if tuple(current) not in self.items:
                return [self.eos_id]
            finished = len(done) + 1 >= min(self.list_len, len(self.items))  # catalog used up: stop early
            return [self.eos_id] if finished else [self.sep_id]
        used = Counter(p[:k] for p in map(tuple, done) for k in range(1, self.levels + 1))
        prefix = tuple(current)
        out = [t for t, n in self.children.get(prefix, {}).items() if n > used[prefix + (t,)]]
        return out or [self.eos_id]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            ids = input_ids[row]
            rec = (ids == self.rec_id).nonzero()
            start = int(rec[-1]) + 1 if len(rec) else ids.shape[0]
            allowed = torch.tensor(self.allowed(ids[start:].tolist()), device=scores.device)
            masked[row, allowed] = scores[row, allowed]
        return masked


def parse_list(
    generated: list[int], item_lookup: dict[tuple, int], sep_id: int, eos_id: int
) -> list[int | None]:
    """Split generated ids into items; an id tuple that is not a catalog item becomes ``None``."""
    items: list[int | None] = []
    current: list[int] = []
    for tok in [*generated, sep_id]:
        if tok in (sep_id, eos_id):
            if current:
                items.append(item_lookup.get(tuple(current)))
            current = []
            if tok == eos_id:
                break
        else:
            current.append(tok)
    return items
