"""How far a dataset's test period lies from what a target learns from (for time splits).

    python scripts/split_shift.py ../shared/data/beauty-timesplit

prints, over the test users: the share of test interactions on items that never occur in the training split (and
in training + validation), and MostPop's R@10 / N@10 with popularity counted on the training split, the
validation split, and both.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from modeling_padrec.data import load_dataset
from modeling_padrec.evaluate import ranking_metrics


def main(path: str) -> int:
    d = load_dataset(path)
    users, truth = d.eval_users("test"), d.targets("test")
    train = Counter(i for s in d.train.values() for i in s)
    valid = Counter(i for s in d.valid.values() for i in s)
    total = sum(len(truth[u]) for u in users)

    def unseen(seen) -> float:
        return round(sum(1 for u in users for i in truth[u] if i not in seen) / total, 4)

    def mostpop(counter: Counter) -> dict:
        top = [i for i, _ in counter.most_common(10)]
        m = ranking_metrics({u: top for u in users}, truth)
        return {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"]}

    print(json.dumps({
        "test_users": len(users),
        "test_interactions_on_items_unseen_in_train": unseen(set(train)),
        "test_interactions_on_items_unseen_in_train_and_valid": unseen(set(train) | set(valid)),
        "mostpop_from_train": mostpop(train),
        "mostpop_from_valid": mostpop(valid),
        "mostpop_from_train_and_valid": mostpop(train + valid),
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
