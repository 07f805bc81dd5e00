"""Constrained list decoding: only catalog items, each at most once, exactly N of them, then EOS.

:class:`CatalogListConstraint` is a stock ``transformers`` ``LogitsProcessor`` over the compiled
:class:`~modeling_padrec.engine.trie.CatalogTrie`, the same trie padrec's engine walks, so stock ``generate`` and
the engine cannot disagree about what is valid. It keeps no state between calls: the list being generated is
re-read from ``input_ids`` (everything after the last ``<|rec|>``), so the same object works in plain
greedy/sampled ``generate``, in assisted generation (where the target scores many drafted prefixes in one pass)
and inside a draft model.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from .engine.trie import CatalogTrie
from .tokenization import TokenMap


class CatalogListConstraint(LogitsProcessor):
    """Mask every token that cannot continue a valid list of ``list_len`` distinct catalog items.

    Args:
        item_token_ids: (num_items, L) token ids of every catalog item.
        sep_id / eos_id / rec_id: separator, end of list, and the token that ends the prompt.
        list_len: items per list (N).
        trie: an already compiled trie of the same catalog (then ``item_token_ids`` may be None).
    """

    def __init__(self, item_token_ids, sep_id: int, eos_id: int, rec_id: int, list_len: int, trie=None):
        if list_len < 1:
            raise ValueError(f"list_len must be >= 1, got {list_len}")
        self.trie = trie if trie is not None else CatalogTrie(item_token_ids, sep_id, eos_id, list_len)
        if (self.trie.sep_id, self.trie.eos_id, self.trie.list_len) != (sep_id, eos_id, list_len):
            raise ValueError("the trie was compiled for another separator, EOS or list length")
        self.levels = self.trie.levels
        self.sep_id, self.eos_id, self.rec_id, self.list_len = sep_id, eos_id, rec_id, list_len

    @classmethod
    def from_token_map(cls, token_map: TokenMap, index, list_len: int) -> CatalogListConstraint:
        return cls(token_map.item_ids(index), token_map.sep_id, token_map.eos_id, token_map.rec_id, list_len)

    def allowed(self, generated: list[int]) -> list[int]:
        """Token ids allowed after ``generated`` (the tokens after ``<|rec|>``), sorted."""
        return self.trie.walk(generated).allowed()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            ids = input_ids[row]
            rec = (ids == self.rec_id).nonzero()
            start = int(rec[-1]) + 1 if len(rec) else ids.shape[0]
            allowed = self.trie.walk(ids[start:].tolist()).allowed_tensor(scores.device)
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
