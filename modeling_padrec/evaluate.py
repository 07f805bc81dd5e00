"""Quality of generated lists: Recall@K, NDCG@K, validity, diversity, and the MostPop baseline."""

from __future__ import annotations

import math

from .data import RecDataset

KS = (5, 10)


def recall_ndcg(ranked: list[int | None], truth: set[int], k: int) -> tuple[float, float]:
    """Recall@k = hits in the top k / |truth|; NDCG@k with binary gains, ideal DCG over min(|truth|, k)."""
    top, seen, hits = ranked[:k], set(), []
    for i, item in enumerate(top):
        if item is not None and item in truth and item not in seen:  # a repeated item counts once
            hits.append(i)
        seen.add(item)
    recall = len(hits) / len(truth)
    dcg = sum(1.0 / math.log2(i + 2) for i in hits)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(truth), k)))
    return recall, dcg / idcg


def ranking_metrics(lists: dict[str, list[int | None]], truth: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for k in KS:
        pairs = [recall_ndcg(lists[u], set(truth[u]), k) for u in lists]
        out[f"recall@{k}"] = round(sum(p[0] for p in pairs) / len(pairs), 5)
        out[f"ndcg@{k}"] = round(sum(p[1] for p in pairs) / len(pairs), 5)
    return out


def mostpop_lists(dataset: RecDataset, users: list[str], k: int) -> dict[str, list[int]]:
    """The k most popular training items, the same list for everyone."""
    top = [i for i, _ in dataset.popularity.most_common(k)]
    return {u: top for u in users}


def evaluate_lists(
    lists: dict[str, list[int | None]], dataset: RecDataset, split: str, list_len: int
) -> dict[str, object]:
    """Every metric ``padrec evaluate`` prints, MostPop included."""
    truth = dataset.targets(split)
    total = sum(len(v) for v in lists.values())
    valid = sum(len({i for i in v if i is not None}) for v in lists.values())
    report: dict[str, object] = {"split": split, "users": len(lists), "list_len": list_len}
    report.update(ranking_metrics(lists, truth))
    report["valid_item_rate"] = round(valid / total, 5) if total else 0.0
    report["complete_list_rate"] = round(sum(len(v) == list_len for v in lists.values()) / len(lists), 5)
    report["distinct_items"] = len({i for v in lists.values() for i in v if i is not None})
    report["distinct_first_items"] = len({v[0] for v in lists.values() if v and v[0] is not None})
    report["mostpop"] = ranking_metrics(mostpop_lists(dataset, list(lists), list_len), truth)
    return report


def format_eval_table(report: dict) -> str:
    """The target's and MostPop's ranking metrics side by side, plus validity and diversity."""
    keys = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]
    return "\n".join(
        [
            f"{'':10}" + "".join(f"{k:>11}" for k in keys),
            f"{'target':10}" + "".join(f"{report[k]:>11.4f}" for k in keys),
            f"{'mostpop':10}" + "".join(f"{report['mostpop'][k]:>11.4f}" for k in keys),
            f"users {report['users']}, valid_item_rate {report['valid_item_rate']}, "
            f"distinct_items {report['distinct_items']}, distinct_first_items {report['distinct_first_items']}",
        ]
    )
