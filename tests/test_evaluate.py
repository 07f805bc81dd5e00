"""Recall/NDCG on hand-worked lists, multi-item ground truth, and the report of ``padrec evaluate``."""

from __future__ import annotations

import math

import pytest

from modeling_padrec.data import ItemIndex, RecDataset, load_dataset
from modeling_padrec.evaluate import evaluate_lists, mostpop_lists, ranking_metrics, recall_ndcg

LOG2_3 = math.log2(3)  # discount of rank 2


def test_single_target_by_hand():
    ranked = [3, 7, 1, 9, 4]
    assert recall_ndcg(ranked, {7}, 5) == pytest.approx((1.0, 1 / LOG2_3))  # 0.63093
    assert recall_ndcg(ranked, {7}, 1) == (0.0, 0.0)
    assert recall_ndcg(ranked, {3}, 5) == pytest.approx((1.0, 1.0))
    assert recall_ndcg(ranked, {4}, 5) == pytest.approx((1.0, 1 / math.log2(6)))  # rank 5: 0.38685
    assert recall_ndcg(ranked, {8}, 5) == (0.0, 0.0)


def test_multi_item_truth_by_hand():
    ranked = [3, 7, 1, 9, 4]
    # hits at ranks 2 and 5; ideal: ranks 1 and 2
    recall, ndcg = recall_ndcg(ranked, {7, 4}, 5)
    assert recall == 1.0
    assert ndcg == pytest.approx((1 / LOG2_3 + 1 / math.log2(6)) / (1 + 1 / LOG2_3))  # 0.624051
    assert ndcg == pytest.approx(0.624051, abs=1e-6)
    # more truth than k: recall is capped by k / |truth|, ideal DCG counts only k positions
    assert recall_ndcg([1, 2, 3, 4, 5], {1, 2, 3, 4, 5, 6}, 5) == pytest.approx((5 / 6, 1.0))
    assert recall_ndcg([9, 2], {1, 2, 3}, 2) == pytest.approx((1 / 3, (1 / LOG2_3) / (1 + 1 / LOG2_3)))
    # None (not a catalog item) is a miss, never a hit
    assert recall_ndcg([None, 7], {7}, 2) == pytest.approx((1.0, 1 / LOG2_3))
    assert recall_ndcg([None, None], {7}, 2) == (0.0, 0.0)


def test_a_repeated_item_counts_once():
    recall, ndcg = recall_ndcg([7, 7], {7}, 2)
    assert recall == 1.0 and ndcg == 1.0


def test_ranking_metrics_average_over_users():
    lists = {"a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "b": [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]}
    truth = {"a": [1, 30], "b": [17], "c": [99]}  # c has no list: not counted
    m = ranking_metrics(lists, truth)
    assert m["recall@5"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["ndcg@5"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 0.0) / 2, abs=1e-5)
    assert m["ndcg@10"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 1 / math.log2(8)) / 2, abs=1e-5)
    assert set(m) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


def test_ranking_over_time_split_truth(shared_data):
    """On the time split a user's truth is the whole future list: recall is |hits| / |truth|."""
    ds = load_dataset(shared_data / "beauty-timesplit")
    users = ds.eval_users("test")
    lists = mostpop_lists(ds, users, 10)
    m = ranking_metrics(lists, ds.targets("test"))
    top = lists[users[0]]
    by_hand = [len(set(top[:k]) & set(ds.test[u])) / len(set(ds.test[u])) for k in (5, 10) for u in users]
    n = len(users)
    assert m["recall@5"] == pytest.approx(sum(by_hand[:n]) / n, abs=1e-5)
    assert m["recall@10"] == pytest.approx(sum(by_hand[n:]) / n, abs=1e-5)
    many = [u for u in users if len(set(ds.test[u]) & set(top)) >= 2]
    assert many, "expected a user with two MostPop hits in the future list"
    u = many[0]
    assert recall_ndcg(top, set(ds.test[u]), 10)[0] == pytest.approx(
        len(set(ds.test[u]) & set(top)) / len(set(ds.test[u]))
    )


@pytest.fixture
def small_dataset():
    index = ItemIndex.from_codes([(i,) for i in range(6)])
    train = {"u1": [0, 0, 0, 1, 1, 2], "u2": [5, 4], "u3": [3]}
    valid = {"u1": [3], "u2": [1], "u3": [2]}
    test = {"u1": [4], "u2": [0], "u3": [5]}
    return RecDataset("small", None, "lcrec", index, train, valid, test)


def test_evaluate_lists_with_duplicates_and_none(small_dataset):
    lists = {"u1": [4, 2, 2], "u2": [None, 0, 3], "u3": [1, 2]}
    report = evaluate_lists(lists, small_dataset, "test", list_len=3)
    # valid = distinct catalog items per list: 2 + 2 + 2 of 3 + 3 + 2 entries
    assert report["valid_item_rate"] == pytest.approx(6 / 8, abs=1e-5)
    assert report["complete_list_rate"] == pytest.approx(2 / 3, abs=1e-5)
    assert report["distinct_items"] == 5  # {4, 2, 0, 3, 1}
    assert report["distinct_first_items"] == 2  # None is not an item
    assert report["users"] == 3 and report["list_len"] == 3 and report["split"] == "test"
    assert report["mostpop"] == ranking_metrics({u: [0, 1, 2] for u in lists}, small_dataset.test)
    assert report["recall@5"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-5)


def test_evaluate_lists_perfect_lists(small_dataset):
    lists = {"u1": [4, 0, 1], "u2": [1, 2, 3], "u3": [0, 1, 2]}
    report = evaluate_lists(lists, small_dataset, "valid", list_len=3)
    assert report["valid_item_rate"] == 1.0 and report["complete_list_rate"] == 1.0
    assert report["recall@10"] == pytest.approx((0 + 1 + 1) / 3, abs=1e-5)
    assert report["ndcg@5"] == pytest.approx((0 + 1 + 1 / math.log2(4)) / 3, abs=1e-5)


def test_mostpop_uses_training_popularity(small_dataset):
    assert mostpop_lists(small_dataset, ["u1", "u2"], 3) == {"u1": [0, 1, 2], "u2": [0, 1, 2]}
