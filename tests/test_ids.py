"""Semantic-ID builder: residual k-means, co-occurrence embeddings, embedding files, build_ids."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modeling_padrec.data import load_dataset, read_index
from modeling_padrec.errors import DataError
from modeling_padrec.ids import (
    build_ids,
    build_item_index,
    cooccurrence_embeddings,
    load_embeddings,
    residual_kmeans,
)


def blobs(n_per: int = 40, centers: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Well-separated Gaussian blobs and each row's blob."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 10
    rows = [means[c] + 0.1 * torch.randn(dim, generator=g) for c in range(centers) for _ in range(n_per)]
    return torch.stack(rows), [c for c in range(centers) for _ in range(n_per)]


def write_inter(folder, name: str = "toy", users: int = 60, items: int = 30, seed: int = 0):
    """A small LC-Rec interaction file where every user walks a few consecutive items."""
    rng = np.random.default_rng(seed)
    seqs = {}
    for u in range(users):
        start = int(rng.integers(items))
        seqs[str(u)] = [(start + k) % items for k in range(int(rng.integers(4, 9)))]
    seqs["0"] = list(range(items))  # every id occurs, so max id + 1 == items
    path = folder / f"{name}.inter.json"
    path.write_text(json.dumps(seqs))
    return path


# --------------------------------------------------------------------------- residual k-means


def test_residual_kmeans_reproducible_in_range_and_seed_dependent():
    x, _ = blobs()
    a = residual_kmeans(x, levels=3, codebook_size=16, seed=3)
    b = residual_kmeans(x, levels=3, codebook_size=16, seed=3)
    c = residual_kmeans(x, levels=3, codebook_size=16, seed=4)
    assert a.dtype == torch.long and a.shape == (240, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 16


def test_residual_kmeans_finds_clusters_at_level_zero():
    x, truth = blobs(centers=6)
    codes = residual_kmeans(x, levels=2, codebook_size=6, seed=0)[:, 0].tolist()
    mapping = {}
    for code, t in zip(codes, truth, strict=True):
        mapping.setdefault(t, set()).add(code)
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 6


def test_fewer_items_than_codes_uses_k_equal_n():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    codes = residual_kmeans(x, levels=2, codebook_size=256)
    assert int(codes.max()) < 5
    assert len(set(map(tuple, codes.tolist()))) == 5


def test_identical_rows_collide_without_spreading_and_spread_apart_with_it():
    x = torch.ones(6, 4)
    plain = residual_kmeans(x, levels=2, codebook_size=8)
    assert len(set(map(tuple, plain.tolist()))) == 1
    spread = residual_kmeans(x, levels=2, codebook_size=8, spread_last=True)
    assert len(set(map(tuple, spread.tolist()))) == 6


def test_collisions_get_a_disambiguation_slot():
    x, _ = blobs(n_per=5, centers=2)  # 10 items, only 2 × 2 codes
    index = build_item_index(x, levels=2, codebook_size=2, seed=0)
    assert index.collisions > 0 and index.has_disambiguation
    assert index.levels == 3 and index.code_levels == 2
    assert len(set(index.codes)) == len(index) == 10
    with pytest.raises(DataError, match="collision|share"):
        build_item_index(x, levels=2, codebook_size=2, seed=0, collision_slot=False)


def test_no_slot_when_codes_are_distinct():
    x, _ = blobs()
    index = build_item_index(x, levels=3, codebook_size=16, seed=0, collision_slot=False)
    assert not index.has_disambiguation and len(set(index.codes)) == len(index)


# --------------------------------------------------------------------------- embeddings


def test_cooccurrence_embeddings_shape_norms_and_determinism():
    seqs = [[0, 1, 2, 3], [1, 2, 3, 4], [5, 6, 7], [6, 7, 5]]
    a = cooccurrence_embeddings(seqs, num_items=10, dim=4, seed=1)
    assert a.shape == (10, 4) and a.dtype == torch.float32
    assert torch.equal(a, cooccurrence_embeddings(seqs, num_items=10, dim=4, seed=1))
    norms = a.norm(dim=1)
    assert torch.allclose(norms[:8], torch.ones(8), atol=1e-5)
    assert bool((norms[8:] < 0.1).all()) and bool((norms[8:] > 0).all())  # cold items: small, not zero
    assert not torch.equal(a[8], a[9])


def test_cooccurrence_embeddings_rejects_out_of_range_ids():
    with pytest.raises(DataError, match="0..2"):
        cooccurrence_embeddings([[0, 5]], num_items=3)


def test_load_npy_and_safetensors(tmp_path):
    x, _ = blobs()
    np.save(tmp_path / "e.npy", x.numpy().astype(np.float64))
    assert torch.equal(load_embeddings(tmp_path / "e.npy"), x)
    save_file({"embeddings": x, "other": torch.zeros(2)}, str(tmp_path / "named.safetensors"))
    assert torch.equal(load_embeddings(tmp_path / "named.safetensors"), x)
    save_file({"whatever": x.half()}, str(tmp_path / "single.safetensors"))
    assert load_embeddings(tmp_path / "single.safetensors").dtype == torch.float32
    save_file({"a": x, "b": x.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(DataError, match="two.safetensors.*'embeddings'"):
        load_embeddings(tmp_path / "two.safetensors")


def test_object_npy_is_rejected_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(DataError, match="evil.npy.*objects"):
        load_embeddings(path)


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32), "NaN"),
        (np.ones((3, 2), dtype=np.int64), "floating point"),
        (np.ones(4, dtype=np.float32), "2-D"),
        (np.ones((0, 4), dtype=np.float32), "empty"),
    ],
)
def test_bad_embedding_arrays(tmp_path, array, problem):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=f"bad.npy.*{problem}"):
        load_embeddings(path)


def test_bad_embedding_files(tmp_path):
    with pytest.raises(DataError, match="missing.npy.*not found"):
        load_embeddings(tmp_path / "missing.npy")
    (tmp_path / "e.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="e.txt.*unsupported"):
        load_embeddings(tmp_path / "e.txt")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="junk.npy"):
        load_embeddings(tmp_path / "junk.npy")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="junk.safetensors"):
        load_embeddings(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- build_ids


def test_build_ids_output_loads_with_load_dataset(tmp_path):
    inter = write_inter(tmp_path)
    out = tmp_path / "toy.index.json"
    summary = build_ids(inter, out, levels=3, codebook_size=8, dim=8)
    assert summary["items"] == 30 and summary["code_levels"] == 3 and summary["out"] == str(out)
    assert summary["collisions"] == 0 and summary["collided_items"] == 0
    assert len(summary["codebook_usage"]) == 3 and all(1 <= u <= 8 for u in summary["codebook_usage"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.index.json", "toy.inter.json"]  # no temp left
    raw = json.loads(out.read_text())
    assert raw["0"][0].startswith("<a_") and raw["0"][1].startswith("<b_")
    ds = load_dataset(tmp_path)
    assert ds.num_items == 30 and ds.format == "lcrec"
    assert len(set(ds.index.codes)) == 30
    assert read_index(out).codes == ds.index.codes


def test_build_ids_is_reproducible(tmp_path):
    inter = write_inter(tmp_path)
    build_ids(inter, tmp_path / "a.json", codebook_size=8, dim=8, seed=5)
    build_ids(inter, tmp_path / "b.json", codebook_size=8, dim=8, seed=5)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_build_ids_holds_out_last_items(tmp_path):
    seqs = {"u1": [0, 1, 2, 3], "u2": [1, 2, 3, 0], "u3": [2, 3, 0, 1, 4, 5]}
    inter = tmp_path / "h.inter.json"
    inter.write_text(json.dumps(seqs))
    emb_train = cooccurrence_embeddings([s[:-2] for s in seqs.values()], 6, dim=4)
    assert float(emb_train[4].norm()) < 0.1 and float(emb_train[5].norm()) < 0.1  # 4, 5 only held out
    summary = build_ids(inter, tmp_path / "h.index.json", codebook_size=4, dim=4, holdout=2)
    assert summary["items"] == 6


def test_build_ids_with_user_embeddings(tmp_path):
    inter = write_inter(tmp_path, items=30)
    x, _ = blobs(n_per=8, centers=5)  # 40 rows: the catalog may be larger than what users touched
    np.save(tmp_path / "emb.npy", x.numpy())
    out = tmp_path / "toy.index.json"
    summary = build_ids(inter, out, levels=2, codebook_size=16, embeddings_path=tmp_path / "emb.npy")
    assert summary["items"] == 40 and summary["embeddings"].endswith("emb.npy")
    assert len(read_index(out)) == 40
    with pytest.raises(DataError, match="emb.npy.*40 rows.*num_items=30"):
        build_ids(inter, out, embeddings_path=tmp_path / "emb.npy", num_items=30)


def test_build_ids_rejects_too_few_embedding_rows(tmp_path):
    inter = write_inter(tmp_path, items=30)
    np.save(tmp_path / "small.npy", np.ones((10, 4), dtype=np.float32))
    with pytest.raises(DataError, match="small.npy.*10 rows.*item 29"):
        build_ids(inter, tmp_path / "x.index.json", embeddings_path=tmp_path / "small.npy")
    assert not (tmp_path / "x.index.json").exists()


def test_build_ids_rejects_nan_embeddings(tmp_path):
    inter = write_inter(tmp_path, items=30)
    x = np.ones((30, 4), dtype=np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="nan.npy.*NaN"):
        build_ids(inter, tmp_path / "x.index.json", embeddings_path=tmp_path / "nan.npy")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object"),
        ('{"u": [1, "2"]}', "not a non-negative integer"),
        ('{"u": [1, true]}', "not a non-negative integer"),
        ('{"u": [1, -3]}', "not a non-negative integer"),
        ('{"u": 5}', "expected a list"),
        ("{}", "no interactions"),
        ('{"u": []}', "no interactions"),
    ],
)
def test_build_ids_bad_interaction_files(tmp_path, content, problem):
    inter = tmp_path / "bad.inter.json"
    inter.write_text(content)
    with pytest.raises(DataError, match=f"bad.inter.json.*{problem}"):
        build_ids(inter, tmp_path / "bad.index.json")


def test_build_ids_missing_file_and_bad_parameters(tmp_path):
    with pytest.raises(DataError, match="nowhere.inter.json.*not found"):
        build_ids(tmp_path / "nowhere.inter.json", tmp_path / "x.json")
    inter = write_inter(tmp_path)
    with pytest.raises(DataError, match="levels"):
        build_ids(inter, tmp_path / "x.json", levels=0)
    with pytest.raises(DataError, match="num_items=10"):
        build_ids(inter, tmp_path / "x.json", num_items=10)
