"""Datasets: items with semantic-ID codes, user histories and splits.

Two on-disk formats are read into one :class:`RecDataset`:

* LC-Rec: ``X.inter.json`` (``{"user": [item, ...]}`` in chronological order) and ``X.index.json``
  (``{"item": ["<a_12>", "<b_7>", ...]}``). Split leave-one-out: the last item is the test target,
  the second-to-last the validation target, the rest is training.
* pre-split: ``train.json``, ``valid.json``, ``test.json`` (``{"user": [item, ...]}``) and ``X.index.json``.
  A user's history for the test split is train + valid; the test list is the whole ground truth.

Items whose codes collide (two items, one code) are never merged: every item gets one more code level,
a disambiguation slot numbering the items that share a code (0 for an item with a unique code).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

CODE_RE = re.compile(r"^<([a-z])_(\d+)>$")
LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "valid", "test")


def code_token(level: int, code: int) -> str:
    """The token string of ``code`` at code level ``level`` (0 → ``<a_code>``)."""
    return f"<{LEVEL_LETTERS[level]}_{code}>"


def disambiguate(codes: list[tuple[int, ...]]) -> list[int]:
    """Disambiguation index per item: items sharing a code are numbered 0, 1, ... in item order."""
    seen: Counter = Counter()
    out = []
    for code in codes:
        out.append(seen[code])
        seen[code] += 1
    return out


@dataclass
class ItemIndex:
    """Items → code tuples. ``codes[i]`` is item i's full code, disambiguation slot included if any."""

    codes: list[tuple[int, ...]]
    code_levels: int  # levels in the file
    collisions: int  # code groups shared by more than one item
    collided_items: int  # items in those groups

    @property
    def levels(self) -> int:
        """Tokens per item (L): the file's levels plus the disambiguation slot when there are collisions."""
        return len(self.codes[0]) if self.codes else 0

    @property
    def has_disambiguation(self) -> bool:
        return self.levels > self.code_levels

    @property
    def codebook_sizes(self) -> list[int]:
        """Codes per level (largest code + 1), the disambiguation slot last."""
        return [max(c[lv] for c in self.codes) + 1 for lv in range(self.levels)]

    def __len__(self) -> int:
        return len(self.codes)

    def tokens(self, item: int) -> list[str]:
        return [code_token(lv, c) for lv, c in enumerate(self.codes[item])]

    @classmethod
    def from_codes(cls, raw: list[tuple[int, ...]]) -> ItemIndex:
        counts = Counter(raw)
        groups = [c for c, n in counts.items() if n > 1]
        levels = len(raw[0]) if raw else 0
        codes = list(raw)
        if groups:
            codes = [c + (d,) for c, d in zip(raw, disambiguate(raw), strict=True)]
        return cls(codes, levels, len(groups), sum(counts[c] for c in groups))

    def to_json(self) -> dict[str, list[str]]:
        """LC-Rec ``index.json`` content (full codes, disambiguation slot included)."""
        return {str(i): self.tokens(i) for i in range(len(self))}


@dataclass
class RecDataset:
    """Users' item sequences split into train / valid / test, plus the item index."""

    name: str
    path: Path
    format: str  # "lcrec" or "presplit"
    index: ItemIndex
    train: dict[str, list[int]]
    valid: dict[str, list[int]]
    test: dict[str, list[int]]
    popularity: Counter = field(default_factory=Counter, repr=False)

    def __post_init__(self):
        if not self.popularity:
            self.popularity = Counter(i for seq in self.train.values() for i in seq)

    @property
    def users(self) -> list[str]:
        return list(self.train)

    @property
    def num_items(self) -> int:
        return len(self.index)

    def history(self, user: str, split: str) -> list[int]:
        """Everything the user did before the split's targets."""
        if split == "train":
            return []
        if split == "valid":
            return list(self.train[user])
        if split == "test":
            return list(self.train[user]) + list(self.valid.get(user, []))
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")

    def targets(self, split: str) -> dict[str, list[int]]:
        if split not in ("valid", "test"):
            raise DataError(f"split {split!r} has no held-out targets: use 'valid' or 'test'")
        return getattr(self, split)

    def eval_users(self, split: str) -> list[str]:
        """Users with a non-empty target list and a non-empty history for ``split``, in file order."""
        t = self.targets(split)
        return [u for u in self.users if t.get(u) and self.history(u, split)]

    def num_interactions(self) -> int:
        return sum(len(s) for d in (self.train, self.valid, self.test) for s in d.values())

    def summary(self) -> dict:
        hist = [len(s) for s in self.train.values()]
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "users": len(self.train),
            "items": self.num_items,
            "interactions": self.num_interactions(),
            "levels": self.index.levels,
            "code_levels": self.index.code_levels,
            "disambiguation_slot": self.index.has_disambiguation,
            "codebook_sizes": self.index.codebook_sizes,
            "collisions": self.index.collisions,
            "collided_items": self.index.collided_items,
            "splits": {
                "train_interactions": sum(hist),
                "valid_users": sum(1 for u in self.users if self.valid.get(u)),
                "test_users": sum(1 for u in self.users if self.test.get(u)),
                "test_targets": sum(len(v) for v in self.test.values()),
            },
            "train_length": {"min": min(hist), "max": max(hist), "mean": round(sum(hist) / len(hist), 3)}
            if hist
            else None,
        }


# --------------------------------------------------------------------------- reading files


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None


def read_index(path: Path) -> ItemIndex:
    """Read an LC-Rec ``index.json``; item ids must be 0..n-1, codes of one length, levels a, b, c, ..."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping item id to a list of code tokens")
    if not raw:
        raise DataError(f"{path}: the index is empty (no items)")
    n = len(raw)
    codes: list[tuple[int, ...] | None] = [None] * n
    width = None
    for key, toks in raw.items():
        try:
            item = int(key)
        except ValueError:
            raise DataError(f"{path}: item id {key!r} is not an integer") from None
        if not 0 <= item < n:
            raise DataError(
                f"{path}: item id {item} is outside 0..{n - 1} (ids must index the items directly)"
            )
        if not isinstance(toks, list) or not toks:
            raise DataError(f"{path}: item {item} has no code tokens")
        if width is None:
            width = len(toks)
        elif len(toks) != width:
            raise DataError(
                f"{path}: codes of unequal length: item {item} has {len(toks)} code tokens, "
                f"earlier items have {width}"
            )
        code = []
        for lv, tok in enumerate(toks):
            m = CODE_RE.match(tok) if isinstance(tok, str) else None
            if not m or m.group(1) != LEVEL_LETTERS[lv]:
                raise DataError(
                    f"{path}: item {item}, level {lv}: bad code token {tok!r} (expected <{LEVEL_LETTERS[lv]}_N>)"
                )
            code.append(int(m.group(2)))
        codes[item] = tuple(code)
    return ItemIndex.from_codes(codes)  # type: ignore[arg-type]


def _read_sequences(path: Path, n_items: int, index_path: Path) -> dict[str, list[int]]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping user id to a list of item ids")
    out = {}
    for user, seq in raw.items():
        if not isinstance(seq, list):
            raise DataError(f"{path}: user {user!r}: expected a list of item ids, got {type(seq).__name__}")
        for item in seq:
            if not isinstance(item, int) or isinstance(item, bool):
                raise DataError(f"{path}: user {user!r}: item {item!r} is not an integer id")
            if not 0 <= item < n_items:
                raise DataError(
                    f"{path}: user {user!r} has item {item}, which is not in {index_path.name} "
                    f"(it holds items 0..{n_items - 1})"
                )
        out[str(user)] = seq
    return out


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise DataError(f"{folder}: no {what} ({pattern}) in this folder")
    if len(found) > 1:
        raise DataError(f"{folder}: more than one {what}: {', '.join(p.name for p in found)}")
    return found[0]


def load_dataset(path: str | Path) -> RecDataset:
    """Load a dataset folder in either format (detected from the files present)."""
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"{folder}: no such file or directory")
    if not folder.is_dir():
        raise DataError(
            f"{folder}: expected a dataset folder (X.inter.json + X.index.json, or train/valid/test.json)"
        )
    index_path = _find_one(folder, "*.index.json", "item index")
    index = read_index(index_path)
    if (folder / "train.json").exists():
        splits = {}
        for s in SPLITS:
            splits[s] = _read_sequences(folder / f"{s}.json", len(index), index_path)
        users = list(dict.fromkeys([*splits["train"], *splits["valid"], *splits["test"]]))
        train = {u: splits["train"].get(u, []) for u in users}
        valid = {u: splits["valid"].get(u, []) for u in users}
        test = {u: splits["test"].get(u, []) for u in users}
        fmt = "presplit"
        name = index_path.name.removesuffix(".index.json")
        if not any(train.values()):
            raise DataError(f"{folder / 'train.json'}: the dataset is empty (no training interactions)")
    else:
        inter_path = _find_one(folder, "*.inter.json", "interaction file")
        seqs = _read_sequences(inter_path, len(index), index_path)
        if not seqs or not any(seqs.values()):
            raise DataError(f"{inter_path}: the dataset is empty (no users with interactions)")
        train, valid, test = {}, {}, {}
        for u, s in seqs.items():
            train[u] = s[:-2]
            valid[u] = s[-2:-1] if len(s) >= 2 else []
            test[u] = s[-1:]
        fmt = "lcrec"
        name = inter_path.name.removesuffix(".inter.json")
    return RecDataset(name=name, path=folder, format=fmt, index=index, train=train, valid=valid, test=test)


def item_cooccurrence(sequences, window: int = 3):
    """(i, j) → count of i and j within ``window`` steps of each other in a sequence (both directions)."""
    counts: defaultdict = defaultdict(float)
    for seq in sequences:
        for a in range(len(seq)):
            for b in range(a + 1, min(len(seq), a + window + 1)):
                if seq[a] != seq[b]:
                    w = 1.0 / (b - a)
                    counts[(seq[a], seq[b])] += w
                    counts[(seq[b], seq[a])] += w
    return counts
