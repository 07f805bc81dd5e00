"""Synthetic catalog: deterministic, LC-Rec format, learnable order, codes that follow the clusters."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict

import pytest

from modeling_padrec.data import load_dataset
from modeling_padrec.synthetic import cluster_of, generate_sequences, item_clusters, make_synthetic


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), seed=0)


def test_files_and_format(catalog):
    assert sorted(p.name for p in catalog.iterdir()) == ["synthetic.index.json", "synthetic.inter.json"]
    ds = load_dataset(catalog)
    assert ds.name == "synthetic" and ds.format == "lcrec"
    assert len(ds.users) == 600 and ds.num_items == 300
    inter = json.loads((catalog / "synthetic.inter.json").read_text())
    assert all(6 <= len(s) <= 20 for s in inter.values())
    assert all(isinstance(i, int) and 0 <= i < 300 for s in inter.values() for i in s)
    assert ds.index.levels >= 3 and max(ds.index.codebook_sizes[:3]) <= 16
    assert len(set(ds.index.codes)) == 300


def test_deterministic_under_seed(catalog, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=0)
    other = make_synthetic(tmp_path / "other", seed=1)
    for name in ("synthetic.inter.json", "synthetic.index.json"):
        assert (again / name).read_bytes() == (catalog / name).read_bytes()
    assert (other / "synthetic.inter.json").read_bytes() != (catalog / "synthetic.inter.json").read_bytes()


def test_parameters_are_honoured(tmp_path):
    out = make_synthetic(tmp_path, num_users=50, num_items=80, seed=2, levels=2, codebook_size=8)
    ds = load_dataset(out)
    assert len(ds.users) == 50 and ds.num_items == 80
    index = json.loads((out / "synthetic.index.json").read_text())
    assert all(t[0].startswith("<a_") and t[1].startswith("<b_") for t in index.values())
    assert all(len(t) == 2 for t in index.values()) or all(len(t) == 3 for t in index.values())
    assert max(ds.index.codebook_sizes[:2]) <= 8
    assert generate_sequences(50, 80, seed=2) == json.loads((out / "synthetic.inter.json").read_text())
    assert sorted(i for chain in item_clusters(80, seed=2) for i in chain) == list(range(80))


def test_order_is_learnable(catalog):
    """A first-order next-item count model beats most-popular by a wide margin (Recall@10 on test)."""
    ds = load_dataset(catalog)
    nxt: dict[int, Counter] = defaultdict(Counter)
    for seq in ds.train.values():
        for a, b in itertools.pairwise(seq):
            nxt[a][b] += 1
    top_pop = {i for i, _ in ds.popularity.most_common(10)}
    hit_seq = hit_pop = 0
    for u in ds.users:
        last, target = ds.history(u, "test")[-1], ds.test[u][0]
        hit_seq += target in {i for i, _ in nxt[last].most_common(10)}
        hit_pop += target in top_pop
    assert hit_seq / len(ds.users) > 0.5
    assert hit_seq > 3 * hit_pop


def test_first_level_codes_follow_clusters(catalog):
    ds = load_dataset(catalog)
    clusters = cluster_of(300, seed=0)
    first = [c[0] for c in ds.index.codes]
    same, diff = [], []
    for i, j in itertools.combinations(range(300), 2):
        (same if clusters[i] == clusters[j] else diff).append(first[i] == first[j])
    p_same, p_diff = sum(same) / len(same), sum(diff) / len(diff)
    assert p_same > 0.5
    assert p_same > 10 * p_diff
