"""Semantic IDs for a catalog that has none: residual k-means over item embeddings.

Every item gets ``levels`` codes, one per level: level 0 clusters the item embeddings, level l clusters what
is left after subtracting the centroid chosen at level l-1 (residual quantisation, as in RQ-VAE / LC-Rec, but
with plain k-means). Items whose codes still collide get one more level, a disambiguation slot
(:meth:`ItemIndex.from_codes`), so no two items share a full code.

Embeddings come either from the user (``.safetensors`` or ``.npy``, one row per item) or from the interactions
themselves (:func:`cooccurrence_embeddings`: PPMI of item co-occurrence, factorised by a seeded randomised SVD).
Everything is deterministic under a seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .data import ItemIndex, item_cooccurrence
from .errors import DataError
from .fileio import write_json_atomic

COLD_ITEM_SCALE = 0.01  # norm of the random vectors given to items without co-occurrence


# --------------------------------------------------------------------------- embeddings


def _ppmi_matrix(sequences: list[list[int]], num_items: int, window: int) -> torch.Tensor:
    """Sparse (num_items × num_items) positive PMI of windowed item co-occurrence, float64."""
    counts = item_cooccurrence(sequences, window=window)
    if not counts:
        empty = torch.zeros(2, 0, dtype=torch.long)
        return torch.sparse_coo_tensor(
            empty, torch.zeros(0, dtype=torch.float64), (num_items,) * 2, check_invariants=True
        )
    pairs = np.array(list(counts.keys()), dtype=np.int64)
    vals = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    rows, cols = pairs[:, 0], pairs[:, 1]
    if pairs.min() < 0 or pairs.max() >= num_items:
        raise DataError(
            f"item ids must lie in 0..{num_items - 1}, found {int(pairs.min())}..{int(pairs.max())}"
        )
    marginal = np.bincount(rows, weights=vals, minlength=num_items)
    pmi = np.log(vals * vals.sum() / (marginal[rows] * marginal[cols]))
    keep = pmi > 0
    idx = torch.from_numpy(np.stack([rows[keep], cols[keep]]))
    shape = (num_items, num_items)
    return torch.sparse_coo_tensor(idx, torch.from_numpy(pmi[keep]), shape, check_invariants=True).coalesce()


def cooccurrence_embeddings(
    sequences: list[list[int]], num_items: int, dim: int = 32, window: int = 3, seed: int = 0
) -> torch.Tensor:
    """Collaborative item embeddings (num_items × dim, float32) from co-occurrence in ``sequences``.

    PPMI of items seen within ``window`` steps of each other, factorised by ``torch.svd_lowrank`` (seeded),
    rows scaled by sqrt of the singular values and L2-normalised. Items that co-occur with nothing get small
    seeded random vectors (norm ``COLD_ITEM_SCALE``) so that they still receive codes.
    """
    if num_items < 1 or dim < 1:
        raise ValueError(f"num_items and dim must be positive, got {num_items} and {dim}")
    ppmi = _ppmi_matrix(sequences, num_items, window)
    emb = torch.zeros(num_items, dim, dtype=torch.float64)
    q = min(dim, num_items)
    if ppmi._nnz() > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(ppmi, q=q, niter=4)
        emb[:, :q] = u * s.clamp_min(0).sqrt()
    norms = emb.norm(dim=1, keepdim=True)
    warm = norms.squeeze(1) > 1e-12
    emb[warm] = emb[warm] / norms[warm]
    cold = int((~warm).sum())
    if cold:
        gen = torch.Generator().manual_seed(seed + 1)
        noise = torch.randn(cold, dim, generator=gen, dtype=torch.float64)
        emb[~warm] = COLD_ITEM_SCALE * noise / noise.norm(dim=1, keepdim=True)
    return emb.float()


def load_embeddings(path: str | Path) -> torch.Tensor:
    """Read an item-embedding matrix (one row per item) from ``.safetensors`` or ``.npy``; never unpickles.

    A ``.safetensors`` file must hold a single tensor or one named ``embeddings``. The matrix must be 2-D,
    floating point and finite. Returns float32.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        emb = _load_npy(path)
    elif suffix == ".safetensors":
        emb = _load_safetensors(path)
    else:
        raise DataError(
            f"{path}: unsupported embedding format {suffix or '(none)'!r}: use .safetensors or .npy"
        )
    return _validate_embeddings(emb, path)


def _load_npy(path: Path) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(
                f"{path}: holds Python objects (pickled); only numeric arrays are accepted"
            ) from None
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a single array, got {type(arr).__name__}")
    if arr.dtype.kind != "f":
        raise DataError(f"{path}: embeddings must be floating point, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _load_safetensors(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None
    if "embeddings" in tensors:
        return tensors["embeddings"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    names = ", ".join(sorted(tensors)) or "none"
    raise DataError(f"{path}: expected one tensor or one named 'embeddings', found: {names}")


def _validate_embeddings(emb: torch.Tensor, path: Path) -> torch.Tensor:
    if emb.dim() != 2:
        raise DataError(f"{path}: embeddings must be 2-D (items × dim), got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise DataError(f"{path}: embeddings must be floating point, got dtype {emb.dtype}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise DataError(f"{path}: embeddings are empty (shape {tuple(emb.shape)})")
    emb = emb.float()
    bad = ~torch.isfinite(emb).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()
        raise DataError(
            f"{path}: embeddings hold NaN or infinite values in {len(rows)} rows (first: row {int(rows[0])})"
        )
    return emb


# --------------------------------------------------------------------------- k-means


def _sq_distances(x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n × k), clamped at 0."""
    return (x_sq[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]).clamp_min_(0)


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new center drawn with probability ∝ squared distance to the nearest one."""
    n = x.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    closest = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            nxt = int(torch.multinomial(closest / total, 1, generator=gen))
        else:  # fewer distinct points than k: any point will do
            nxt = int(torch.randint(n, (1,), generator=gen))
        chosen.append(nxt)
        closest = torch.minimum(closest, ((x - x[nxt]) ** 2).sum(1))
    return x[chosen].clone()


def _reseed_empty(x: torch.Tensor, centers: torch.Tensor, counts: torch.Tensor, dist: torch.Tensor) -> None:
    """Move each empty cluster's center onto one of the points farthest from their own center (in place)."""
    empty = (counts == 0).nonzero().flatten()
    if len(empty) == 0:
        return
    order = torch.argsort(dist, descending=True, stable=True)
    centers[empty] = x[order[: len(empty)]]


def kmeans(
    x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding. Returns (assignment (n,), centers (k × d))."""
    x_sq = (x * x).sum(1)
    centers = _kmeans_pp_init(x, k, gen)
    assign = _sq_distances(x, centers, x_sq).argmin(1)
    for _ in range(iters):
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)
        sums, counts = onehot.T @ x, torch.bincount(assign, minlength=k)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        dist = _sq_distances(x, centers, x_sq)
        if not filled.all():
            _reseed_empty(x, centers, counts, dist.gather(1, assign[:, None]).squeeze(1))
            dist = _sq_distances(x, centers, x_sq)
        new_assign = dist.argmin(1)
        if torch.equal(new_assign, assign) and filled.all():
            break
        assign = new_assign
    return assign, centers


def _distinct_codes(dist: torch.Tensor) -> torch.Tensor:
    """Give the m items of one group distinct codes where possible: greedy over (item, code) by distance.

    ``dist`` is (m × k). Items left over once every code is taken (m > k) keep their nearest code.
    """
    m, k = dist.shape
    out = dist.argmin(1)
    items_left, codes_free = set(range(m)), set(range(k))
    for flat in torch.argsort(dist.flatten(), stable=True).tolist():
        i, c = divmod(flat, k)
        if i in items_left and c in codes_free:
            out[i] = c
            items_left.discard(i)
            codes_free.discard(c)
            if not items_left or not codes_free:
                break
    return out


def _spread_last_level(prefix: torch.Tensor, residual: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Last-level codes such that items sharing all earlier codes get distinct codes where they can.

    A cheap, deterministic stand-in for LC-Rec's uniform semantic mapping: each item still takes a nearby
    centroid, but two items with one prefix do not take the same one while another is free.
    """
    dist = _sq_distances(residual, centers, (residual * residual).sum(1))
    assign = dist.argmin(1)
    _, group, counts = torch.unique(prefix, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    for g in (counts > 1).nonzero().flatten().tolist():
        members = order[starts[g] : starts[g] + counts[g]]
        if len(set(assign[members].tolist())) < len(members):
            assign[members] = _distinct_codes(dist[members])
    return assign


def residual_kmeans(
    embeddings: torch.Tensor,
    levels: int = 3,
    codebook_size: int = 256,
    seed: int = 0,
    iters: int = 30,
    *,
    spread_last: bool = False,
) -> torch.Tensor:
    """Codes (n × levels, int64) by residual k-means: level l clusters the residual left by levels < l.

    Uses k = min(codebook_size, n) per level. With ``spread_last`` (and levels >= 2) the last level assigns
    items that share all earlier codes to distinct nearby centroids where possible, which removes most
    collisions. Exactly reproducible for the same seed and input.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D tensor, got shape {tuple(embeddings.shape)}")
    if levels < 1 or codebook_size < 1:
        raise ValueError(f"levels and codebook_size must be positive, got {levels} and {codebook_size}")
    gen = torch.Generator().manual_seed(seed)
    residual = embeddings.detach().to(torch.float64).clone()
    k = min(codebook_size, residual.shape[0])
    codes = []
    for level in range(levels):
        assign, centers = kmeans(residual, k, gen, iters=iters)
        if spread_last and level == levels - 1 and level > 0:
            assign = _spread_last_level(torch.stack(codes, dim=1), residual, centers)
        codes.append(assign)
        residual = residual - centers[assign]
    return torch.stack(codes, dim=1)


def build_item_index(
    embeddings: torch.Tensor, levels: int, codebook_size: int, seed: int, collision_slot: bool = True
) -> ItemIndex:
    """Residual k-means codes for every embedding row (last level spread), as an :class:`ItemIndex`.

    Colliding items get a disambiguation slot; with ``collision_slot=False`` a collision is an error.
    """
    codes = residual_kmeans(
        embeddings, levels=levels, codebook_size=codebook_size, seed=seed, spread_last=True
    )
    index = ItemIndex.from_codes([tuple(row) for row in codes.tolist()])
    if index.collisions and not collision_slot:
        raise DataError(
            f"{index.collided_items} items share {index.collisions} codes with levels={levels}, "
            f"codebook_size={codebook_size} and no disambiguation slot: allow the slot or use more "
            "levels or codes"
        )
    return index


# --------------------------------------------------------------------------- files


def read_interactions(path: str | Path) -> dict[str, list[int]]:
    """Read a ``{"user": [item id, ...]}`` JSON file; ids must be non-negative integers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object mapping user id to a list of item ids")
    for user, seq in raw.items():
        if not isinstance(seq, list):
            raise DataError(f"{path}: user {user!r}: expected a list of item ids, got {type(seq).__name__}")
        for item in seq:
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise DataError(f"{path}: user {user!r}: item {item!r} is not a non-negative integer id")
    if not any(raw.values()):
        raise DataError(f"{path}: no interactions (no user has any item)")
    return raw


def _resolve_num_items(
    max_id: int, num_items: int | None, emb: torch.Tensor | None, inter_path: Path, emb_path
) -> int:
    """Catalog size: the embeddings' rows if given, else ``num_items``, else max id + 1; all must agree."""
    if emb is not None:
        rows = emb.shape[0]
        if num_items is not None and num_items != rows:
            raise DataError(f"{emb_path}: has {rows} rows but num_items={num_items} was asked for")
        num_items = rows
        if max_id >= rows:
            raise DataError(
                f"{emb_path}: has {rows} rows (items 0..{rows - 1}) but {inter_path} uses item {max_id}"
            )
    elif num_items is None:
        num_items = max_id + 1
    elif max_id >= num_items:
        raise DataError(
            f"{inter_path}: uses item {max_id}, outside 0..{num_items - 1} (num_items={num_items})"
        )
    return num_items


def _check_params(levels: int, codebook_size: int, dim: int, holdout: int) -> None:
    if levels < 1 or levels > 25:
        raise DataError(f"levels must be in 1..25, got {levels}")
    if codebook_size < 1:
        raise DataError(f"codebook_size must be positive, got {codebook_size}")
    if dim < 1:
        raise DataError(f"dim must be positive, got {dim}")
    if holdout < 0:
        raise DataError(f"holdout must be >= 0, got {holdout}")


def build_ids(
    inter_path: str | Path,
    out_path: str | Path,
    *,
    levels: int = 3,
    codebook_size: int = 256,
    embeddings_path: str | Path | None = None,
    num_items: int | None = None,
    dim: int = 32,
    holdout: int = 2,
    seed: int = 0,
) -> dict:
    """Build semantic IDs for the items of ``inter_path`` and write an LC-Rec ``index.json`` to ``out_path``.

    Embeddings are read from ``embeddings_path`` or computed from co-occurrence in the interactions, leaving
    out each user's last ``holdout`` items (the leave-one-out valid/test targets; use 0 for a pre-split
    ``train.json``). The file is written atomically. Returns a summary of the index.
    """
    start = time.perf_counter()
    inter_path, out_path = Path(inter_path), Path(out_path)
    _check_params(levels, codebook_size, dim, holdout)
    seqs = read_interactions(inter_path)
    max_id = max(i for s in seqs.values() for i in s)
    emb = load_embeddings(embeddings_path) if embeddings_path is not None else None
    n = _resolve_num_items(max_id, num_items, emb, inter_path, embeddings_path)
    if emb is None:
        train = [s[: len(s) - holdout] if holdout else s for s in seqs.values()]
        emb = cooccurrence_embeddings(train, n, dim=dim, seed=seed)
    index = build_item_index(emb, levels, codebook_size, seed)
    write_json_atomic(out_path, index.to_json())
    usage = [len({c[lv] for c in index.codes}) for lv in range(index.code_levels)]
    return {
        "items": len(index),
        "levels": index.levels,
        "code_levels": index.code_levels,
        "disambiguation_slot": index.has_disambiguation,
        "codebook_sizes": index.codebook_sizes,
        "collisions": index.collisions,
        "collided_items": index.collided_items,
        "codebook_usage": usage,
        "embeddings": str(embeddings_path) if embeddings_path is not None else "cooccurrence",
        "seconds": round(time.perf_counter() - start, 3),
        "out": str(out_path),
    }
