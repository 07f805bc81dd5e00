"""Dataset loading: the three shared datasets, collisions, splits, MostPop anchors and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from bad_data import BAD_DATASETS

from modeling_padrec.data import ItemIndex, RecDataset, disambiguate, load_dataset, read_index
from modeling_padrec.errors import DataError
from modeling_padrec.evaluate import mostpop_lists, ranking_metrics


@pytest.fixture(scope="module")
def instruments(shared_data):
    return load_dataset(shared_data / "Instruments")


@pytest.fixture(scope="module")
def beauty(shared_data):
    return load_dataset(shared_data / "Beauty")


@pytest.fixture(scope="module")
def timesplit(shared_data):
    return load_dataset(shared_data / "beauty-timesplit")


def _raw(path):
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- the shared datasets


def test_instruments_summary(instruments):
    s = instruments.summary()
    assert (s["name"], s["format"]) == ("Instruments", "lcrec")
    assert s["users"] == 24772 and s["items"] == 9922 and s["interactions"] == 206153
    assert s["code_levels"] == 4 and s["levels"] == 5 and s["disambiguation_slot"] is True
    assert s["collisions"] == 23
    assert s["codebook_sizes"][:4] == [256, 256, 256, 256]


def test_beauty_summary(beauty):
    s = beauty.summary()
    assert s["users"] == 22363 and s["items"] == 12101 and s["interactions"] == 198502
    assert s["format"] == "lcrec" and s["levels"] == 5 and s["collisions"] > 0


def test_timesplit_summary(timesplit):
    s = timesplit.summary()
    assert s["format"] == "presplit" and s["name"] == "beauty"
    assert s["users"] == 19383 and s["items"] == 12035 and s["interactions"] == 138870
    assert s["splits"]["test_users"] == 3553


@pytest.mark.parametrize("name", ["Instruments", "Beauty", "beauty-timesplit"])
def test_full_codes_are_unique_and_file_codes_kept(shared_data, name):
    """Collided items are told apart by the extra slot, never merged; the file's own codes are untouched."""
    ds = load_dataset(shared_data / name)
    raw = _raw(next((shared_data / name).glob("*.index.json")))
    assert len(ds.index) == len(raw)
    assert len(set(ds.index.codes)) == len(ds.index)
    assert all(ds.index.tokens(i)[:4] == raw[str(i)] for i in range(len(ds.index)))
    groups = Counter(tuple(t) for t in raw.values())
    shared = {c: n for c, n in groups.items() if n > 1}
    assert ds.index.collisions == len(shared) > 0
    assert ds.index.collided_items == sum(shared.values())
    # the slot numbers the items of a group 0..n-1; the largest group fixes the slot's codebook size
    assert ds.index.codebook_sizes[4] == max(shared.values())
    for i, code in enumerate(ds.index.codes):
        assert code[4] < groups[tuple(raw[str(i)])]


def test_disambiguation_slot_on_a_small_index():
    index = ItemIndex.from_codes([(1, 2), (0, 0), (1, 2), (3, 3), (1, 2)])
    assert index.codes == [(1, 2, 0), (0, 0, 0), (1, 2, 1), (3, 3, 0), (1, 2, 2)]
    assert (index.collisions, index.collided_items, index.code_levels, index.levels) == (1, 3, 2, 3)
    assert index.codebook_sizes == [4, 4, 3]
    assert disambiguate([(0,), (0,), (1,), (0,)]) == [0, 1, 0, 2]
    clean = ItemIndex.from_codes([(0, 1), (1, 0)])
    assert clean.levels == 2 and not clean.has_disambiguation and clean.collisions == 0


def test_index_round_trips_through_to_json(tmp_path):
    index = ItemIndex.from_codes([(1, 2), (0, 0), (1, 2)])
    (tmp_path / "x.index.json").write_text(json.dumps(index.to_json()))
    again = read_index(tmp_path / "x.index.json")
    assert again.codes == index.codes and again.collisions == 0  # the slot makes the written codes unique


def test_leave_one_out_split(shared_data, instruments):
    seqs = _raw(shared_data / "Instruments" / "Instruments.inter.json")
    assert instruments.users == list(seqs)
    for user, seq in seqs.items():
        assert instruments.train[user] + instruments.valid[user] + instruments.test[user] == seq
        assert instruments.valid[user] == [seq[-2]] and instruments.test[user] == [seq[-1]]
        assert instruments.history(user, "test") == seq[:-1]
        assert instruments.history(user, "valid") == seq[:-2]
    assert instruments.eval_users("test") == list(seqs)  # 5-core: everyone has history and a target


def test_presplit_history_and_ground_truth(shared_data, timesplit):
    folder = shared_data / "beauty-timesplit"
    train, valid, test = (_raw(folder / f"{s}.json") for s in ("train", "valid", "test"))
    users = timesplit.eval_users("test")
    assert len(users) == 3553
    assert max(len(timesplit.test[u]) for u in users) == 38
    for user in users:
        assert timesplit.history(user, "test") == train.get(user, []) + valid.get(user, [])
        assert timesplit.targets("test")[user] == test[user]  # the whole future list is the ground truth
    multi = [u for u in users if valid.get(u) and len(test[u]) > 1]
    assert multi, "expected users with both valid items and several test items"
    u = multi[0]
    assert timesplit.history(u, "test")[-len(valid[u]) :] == valid[u]


def test_split_errors(instruments):
    with pytest.raises(DataError, match="unknown split"):
        instruments.history(instruments.users[0], "holdout")
    with pytest.raises(DataError, match="no held-out targets"):
        instruments.targets("train")


@pytest.mark.parametrize(("name", "recall10"), [("Instruments", 0.0468), ("Beauty", 0.0114)])
def test_mostpop_anchor(shared_data, name, recall10):
    ds = load_dataset(shared_data / name)
    users = ds.eval_users("test")
    metrics = ranking_metrics(mostpop_lists(ds, users, 10), ds.targets("test"))
    assert metrics["recall@10"] == pytest.approx(recall10, abs=5e-4)
    assert metrics["recall@5"] <= metrics["recall@10"] and metrics["ndcg@10"] <= metrics["recall@10"]


def test_popularity_counts_training_items_only():
    index = ItemIndex.from_codes([(0,), (1,), (2,)])
    ds = RecDataset("x", None, "lcrec", index, {"u": [0, 0, 1]}, {"u": [2]}, {"u": [2]})
    assert ds.popularity == Counter({0: 2, 1: 1})
    assert mostpop_lists(ds, ["u"], 2) == {"u": [0, 1]}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_input_raises_data_error_naming_the_file(tmp_path, case):
    path, named = BAD_DATASETS[case](tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(named) in str(err.value)
    assert "\n" not in str(err.value)


def test_load_dataset_rejects_a_file(tmp_path):
    f = tmp_path / "X.inter.json"
    f.write_text("{}")
    with pytest.raises(DataError, match="expected a dataset folder"):
        load_dataset(f)
