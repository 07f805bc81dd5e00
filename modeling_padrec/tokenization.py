"""Semantic-ID tokens: a fast tokenizer for preset bases, added tokens for Hub bases, and the token map.

A recommendation list is one token sequence ``item <|sep|> item ... item </s>``; each item is L code tokens
(``<a_12><b_7><c_200><d_31><e_0>``). The prompt is the user's history in the same form, closed by ``<|rec|>``.
Every token's *slot* is a pure function of its id: code level 0..L-1, ``L`` for the separator and ``L+1``
for anything else. The draft needs it; :class:`TokenMap` computes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .data import LEVEL_LETTERS, ItemIndex, code_token
from .errors import TargetError

SEP_TOKEN = "<|sep|>"
REC_TOKEN = "<|rec|>"
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<s>", "</s>"


def rec_tokens(index: ItemIndex) -> list[str]:
    """All tokens padrec adds to a vocabulary: separator, prompt end, then every code of every level."""
    codes = [code_token(lv, c) for lv, size in enumerate(index.codebook_sizes) for c in range(size)]
    return [SEP_TOKEN, REC_TOKEN, *codes]


def build_tokenizer(index: ItemIndex) -> PreTrainedTokenizerFast:
    """A standalone fast tokenizer (word-level) for a preset base: specials + padrec tokens, nothing else."""
    specials = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + rec_tokens(index))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in rec_tokens(index)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
    )


def add_rec_tokens(tokenizer, index: ItemIndex) -> list[int]:
    """Add padrec's tokens to a Hub tokenizer (if missing); return the ids of all of them."""
    toks = rec_tokens(index)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in toks])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer.convert_tokens_to_ids(toks)


@dataclass
class TokenMap:
    """Where padrec's tokens sit in a tokenizer's vocabulary, and the slot of every id."""

    levels: int  # L, tokens per item
    level_token_ids: list[list[int]]  # level → code → token id
    sep_id: int
    rec_id: int
    eos_id: int
    bos_id: int | None
    pad_id: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer, index: ItemIndex, vocab_size: int | None = None) -> TokenMap:
        vocab = tokenizer.get_vocab()
        missing = [t for t in rec_tokens(index) if t not in vocab]
        if missing:
            raise TargetError(
                f"the tokenizer lacks {len(missing)} of the dataset's semantic-ID tokens (first: {missing[0]}); "
                "was the target trained on another catalog?"
            )
        level_ids = [
            [vocab[code_token(lv, c)] for c in range(size)] for lv, size in enumerate(index.codebook_sizes)
        ]
        eos = tokenizer.eos_token_id
        return cls(
            levels=index.levels,
            level_token_ids=level_ids,
            sep_id=vocab[SEP_TOKEN],
            rec_id=vocab[REC_TOKEN],
            eos_id=eos,
            bos_id=tokenizer.bos_token_id,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            vocab_size=vocab_size or len(tokenizer),
        )

    # -- items ↔ ids
    def item_ids(self, index: ItemIndex) -> torch.LongTensor:
        """(num_items, L) token ids of every item's code."""
        return torch.tensor(
            [[self.level_token_ids[lv][c] for lv, c in enumerate(code)] for code in index.codes],
            dtype=torch.long,
        )

    # -- slots
    @property
    def num_slots(self) -> int:
        return self.levels + 2

    def slot_table(self) -> torch.LongTensor:
        """(vocab_size,) slot of every token id: code level, L for the separator, L+1 for anything else."""
        table = torch.full((self.vocab_size,), self.levels + 1, dtype=torch.long)
        for lv, ids in enumerate(self.level_token_ids):
            table[torch.tensor(ids)] = lv
        table[self.sep_id] = self.levels
        return table

    def rec_vocab(self) -> list[int]:
        """Token ids a recommendation list can contain (codes, separator, EOS): the draft's head vocabulary."""
        ids = {i for level in self.level_token_ids for i in level} | {self.sep_id, self.eos_id}
        return sorted(ids)

    def fingerprint(self) -> str:
        """Hash of the token layout; a draft trained for another tokenizer fails this check."""
        payload = json.dumps(
            [self.levels, self.level_token_ids, self.sep_id, self.rec_id, self.eos_id], separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def level_letter(self, level: int) -> str:
        return LEVEL_LETTERS[level]

    def slot_names(self) -> list[str]:
        """Names of the slots of :meth:`slot_table`: the code levels' letters, ``sep``, ``other``."""
        return [self.level_letter(lv) for lv in range(self.levels)] + ["sep", "other"]
