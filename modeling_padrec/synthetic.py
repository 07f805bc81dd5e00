"""A small synthetic catalog with learnable sequential structure, for ``padrec demo`` and the tests.

Items are split into topic clusters; inside a cluster they form a chain, and a user mostly walks that chain
(next item), sometimes skips one, sometimes jumps to a random item of the cluster, and now and then switches
to another cluster (more popular clusters more often). A tiny sequence model learns the chains quickly, while
most-popular, which ignores the order, stays weak. Item ids are shuffled, so an item's id says nothing of
its cluster. The catalog is written in LC-Rec format (``synthetic.inter.json`` + ``synthetic.index.json``),
the index built by :func:`modeling_padrec.ids.build_ids`. Everything is deterministic under the seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .fileio import write_json_atomic
from .ids import build_ids

ITEMS_PER_CLUSTER = 20
MIN_LEN, MAX_LEN = 6, 20
P_NEXT, P_SKIP, P_RANDOM = 0.75, 0.10, 0.05  # the rest switches cluster
NAME = "synthetic"


def item_clusters(num_items: int, seed: int = 0) -> list[list[int]]:
    """The clusters as chains of item ids, in chain order (cluster 0 the most popular)."""
    if num_items < 4:
        raise DataError(f"a synthetic catalog needs at least 4 items, got {num_items}")
    rng = np.random.default_rng([seed, 0])
    n_clusters = max(2, num_items // ITEMS_PER_CLUSTER)
    return [chunk.tolist() for chunk in np.array_split(rng.permutation(num_items), n_clusters)]


def cluster_of(num_items: int, seed: int = 0) -> list[int]:
    """Cluster number of every item (the ground truth that semantic IDs should recover)."""
    out = [0] * num_items
    for c, chain in enumerate(item_clusters(num_items, seed)):
        for item in chain:
            out[item] = c
    return out


def _walk(
    rng: np.random.Generator, chains: list[list[int]], popularity: np.ndarray, length: int
) -> list[int]:
    """One user's sequence: a walk along the chains with skips, random hops and cluster switches."""
    c = int(rng.choice(len(chains), p=popularity))
    pos = int(rng.integers(len(chains[c])))
    seq = [int(chains[c][pos])]
    while len(seq) < length:
        r = rng.random()
        if r < P_NEXT:
            pos = (pos + 1) % len(chains[c])
        elif r < P_NEXT + P_SKIP:
            pos = (pos + 2) % len(chains[c])
        elif r < P_NEXT + P_SKIP + P_RANDOM:
            pos = int(rng.integers(len(chains[c])))
        else:
            c = int(rng.choice(len(chains), p=popularity))
            pos = int(rng.integers(len(chains[c])))
        seq.append(int(chains[c][pos]))
    return seq


def generate_sequences(num_users: int, num_items: int, seed: int = 0) -> dict[str, list[int]]:
    """``{"user": [item, ...]}`` for ``num_users`` users, sequences of length 6..20."""
    if num_users < 1:
        raise DataError(f"a synthetic catalog needs at least 1 user, got {num_users}")
    chains = item_clusters(num_items, seed)
    weights = 1.0 / np.arange(1, len(chains) + 1) ** 0.8
    popularity = weights / weights.sum()
    rng = np.random.default_rng([seed, 1])
    out = {}
    for u in range(num_users):
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        out[str(u)] = _walk(rng, chains, popularity, length)
    return out


def make_synthetic(
    out_dir: str | Path,
    *,
    num_users: int = 600,
    num_items: int = 300,
    seed: int = 0,
    levels: int = 3,
    codebook_size: int = 16,
) -> Path:
    """Write ``synthetic.inter.json`` and ``synthetic.index.json`` into ``out_dir``; return ``out_dir``.

    Both files are produced in a temporary folder inside ``out_dir`` and moved in with ``os.replace``,
    so a failure never leaves a half-written catalog behind.
    """
    out_dir = Path(out_dir)
    seqs = generate_sequences(num_users, num_items, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{NAME}-"))
    try:
        inter = write_json_atomic(tmp / f"{NAME}.inter.json", seqs)
        index = tmp / f"{NAME}.index.json"
        build_ids(
            inter,
            index,
            levels=levels,
            codebook_size=codebook_size,
            num_items=num_items,
            holdout=2,
            seed=seed,
        )
        os.replace(inter, out_dir / inter.name)
        os.replace(index, out_dir / index.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
