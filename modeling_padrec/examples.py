"""Training and evaluation examples as token ids.

* :class:`SequenceExamples` — stage 1 for preset bases: each user's training sequence as one causal-LM text
  ``<s> item <|sep|> item ...`` (stands in for the LLM pretraining a Hub base already had).
* :class:`ListwiseExamples` — stage 2 (LoRA): prompt = last H history items + ``<|rec|>``, label = the next N
  items ``item <|sep|> ... item`` followed by ``</s>`` when the list is full. A list cut short by the end of the
  user's sequence gets no ``</s>``: the data does not say the list ends there, and the decoding constraint
  closes every list at exactly N items anyway.
* :class:`PeriodExamples` — stage 3 for time splits (optional): prompt = the user's training-period history,
  label = the items of the next period (the validation split), the form the test asks for.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from .data import RecDataset
from .tokenization import TokenMap

IGNORE = -100


class ItemEncoder:
    """Turns item ids into token ids for one (dataset, tokenizer) pair."""

    def __init__(self, token_map: TokenMap, dataset: RecDataset):
        self.tm = token_map
        self.item_tokens = token_map.item_ids(dataset.index).tolist()

    def items(self, items: list[int]) -> list[int]:
        """``item <sep> item <sep> ... item`` (no trailing separator)."""
        out: list[int] = []
        for k, item in enumerate(items):
            if k:
                out.append(self.tm.sep_id)
            out.extend(self.item_tokens[item])
        return out

    def prompt(self, history: list[int], history_len: int) -> list[int]:
        bos = [self.tm.bos_id] if self.tm.bos_id is not None else []
        return bos + self.items(history[-history_len:]) + [self.tm.rec_id]

    def target_list(self, items: list[int], list_len: int) -> list[int]:
        eos = [self.tm.eos_id] if len(items) >= list_len else []
        return self.items(items[:list_len]) + eos


class SequenceExamples(Dataset):
    """Stage-1 causal LM over users' training sequences (last ``max_items`` items of each)."""

    def __init__(self, dataset: RecDataset, encoder: ItemEncoder, max_items: int = 30):
        self.rows = [s[-max_items:] for s in dataset.train.values() if len(s) >= 2]
        self.enc = encoder
        self.lengths = [len(r) for r in self.rows]  # items: for length grouping

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids = self.enc.prompt(self.rows[i], len(self.rows[i]))[:-1]  # no <|rec|>: plain sequence
        return {"input_ids": ids, "labels": list(ids)}


class ListwiseExamples(Dataset):
    """Stage-2 list-wise examples: one per (user, cut point) in the training split."""

    def __init__(
        self,
        dataset: RecDataset,
        encoder: ItemEncoder,
        history_len: int = 20,
        list_len: int = 10,
        max_examples: int | None = None,
        seed: int = 0,
    ):
        cuts = [(u, i) for u, s in dataset.train.items() for i in range(1, len(s))]
        if max_examples is not None and len(cuts) > max_examples:
            cuts = random.Random(seed).sample(cuts, max_examples)
        self.cuts = cuts
        self.train = dataset.train
        self.enc, self.history_len, self.list_len = encoder, history_len, list_len
        self.lengths = [  # items in prompt + list, for length grouping
            min(cut, history_len) + min(list_len, len(self.train[u]) - cut) for u, cut in cuts
        ]

    def __len__(self):
        return len(self.cuts)

    def __getitem__(self, i):
        user, cut = self.cuts[i]
        seq = self.train[user]
        prompt = self.enc.prompt(seq[:cut], self.history_len)
        target = self.enc.target_list(seq[cut : cut + self.list_len], self.list_len)
        return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


class PeriodExamples(Dataset):
    """Stage-3 examples of a time split's own form: the training period's history → the validation period's
    items (the first N, in order), one per user with both. The test then asks train + valid → test."""

    def __init__(self, dataset: RecDataset, encoder: ItemEncoder, history_len: int = 20, list_len: int = 10):
        self.users = [u for u, s in dataset.train.items() if s and dataset.valid.get(u)]
        self.train, self.valid = dataset.train, dataset.valid
        self.enc, self.history_len, self.list_len = encoder, history_len, list_len
        self.lengths = [
            min(len(self.train[u]), history_len) + min(len(self.valid[u]), list_len) for u in self.users
        ]

    def __len__(self):
        return len(self.users)

    def __getitem__(self, i):
        user = self.users[i]
        prompt = self.enc.prompt(self.train[user], self.history_len)
        target = self.enc.target_list(self.valid[user], self.list_len)
        return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training (labels padded with -100)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[r, :n] = torch.tensor(b["input_ids"])
        labels[r, :n] = torch.tensor(b["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    return {"input_ids": ids, "attention_mask": mask}
