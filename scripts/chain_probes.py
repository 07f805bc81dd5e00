"""Two ways to make a PAD-Rec draft's chain cheaper without retraining it, measured by `padrec bench`.

    OMP_NUM_THREADS=1 python scripts/chain_probes.py --target runs/ref/Instruments/target \
        --data ../shared/data/Instruments --draft runs/study/Instruments/ref/draft-pad-rec-seed2-steps1500-depth12 \
        --users 100 --engine-depth 10 --stop 0.5,0.1 --out runs/probes/Instruments

Beside the engine's own chain (``pad-rec``) the bench runs, on the same requests and interleaved with it:

- ``block:NAME`` reads the catalog's forced run after a drafted choice in one draft forward, every token of the
  run with the feature the draft predicted after the choice, instead of stepping over the tokens one by one (the
  draft was trained on its own feature chain; this asks how much it needs it);
- ``stop<P>:NAME`` ends a round's chain once the draft's cumulative probability of its drafted choices falls
  below ``P`` (EAGLE-2's dynamic depth for a chain), up to ``--engine-depth`` choices.

Both stay lossless (the target verifies every proposal; the bench checks every list against ``ar``'s). They are
probes, not engine features: the report says whether either is worth one.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch

from modeling_padrec.bench import BenchConfig, Method, bench_run, write_report
from modeling_padrec.engine.proposers import DraftProposer


def block_reads(draft: torch.nn.Module, depth: int) -> DraftProposer:
    """The engine's chain reading each run of decided tokens in one forward, on the feature the run started from:
    the engine's own path for drafts trained with ``forced_inputs="block"``, here for a draft trained without."""
    proposer = DraftProposer(draft, depth)
    proposer.block = True
    return proposer


class ConfidenceStopProposer(DraftProposer):
    """The engine's chain, ending a round once the draft's cumulative probability of its choices is below
    ``threshold`` (greedy only: the probability of the draft's top allowed token)."""

    def __init__(self, draft: torch.nn.Module, depth: int, threshold: float):
        super().__init__(draft, depth)
        self.max_depth, self.log_threshold = self.depth, math.log(threshold)

    def scores(self, feature: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        scores = super().scores(feature, allowed)
        self.log_prob += float(torch.log_softmax(scores, dim=-1).max())
        self.drafted += 1
        if self.log_prob < self.log_threshold:  # this choice is the round's last
            self.depth = self.drafted
        return scores

    def propose(self, *args, **kwargs):
        self.depth, self.log_prob, self.drafted = self.max_depth, 0.0, 0
        try:
            return super().propose(*args, **kwargs)
        finally:
            self.depth = self.max_depth


def probes(stops: list[float]):
    """The bench's ``extra_methods``: each probe for every engine chain the bench runs."""

    def add(rec, methods: list[Method]) -> list[Method]:
        extra = []
        for m in [m for m in methods if m.kind == "engine" and m.draft is not None]:
            depth = m.engine.depth
            variants = [("block", block_reads(m.draft, depth))]
            variants += [(f"stop{p:g}", ConfidenceStopProposer(m.draft, depth, p)) for p in stops]
            for label, proposer in variants:
                engine = copy.copy(m.engine)  # the recommender's engines are shared: a copy of its own
                engine.proposer = proposer
                extra.append(
                    replace(m, name=f"{label}:{m.name}", engine=engine, info={**m.info, "probe": label})
                )
        return extra

    return add


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--engine-depth", type=int, default=10)
    p.add_argument("--method", default="pad-rec", help="the engine chain to probe, as the bench names it")
    p.add_argument("--stop", default="0.5,0.1", help="cumulative-probability thresholds, comma-separated")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        stops = [float(x) for x in args.stop.split(",") if x]
    except ValueError:
        print(f"--stop: expected numbers separated by commas, got {args.stop!r}", file=sys.stderr)
        return 2
    if any(not 0 < s < 1 for s in stops):
        print(f"--stop: thresholds lie strictly between 0 and 1, got {args.stop!r}", file=sys.stderr)
        return 2
    cfg = BenchConfig(target=args.target, data=args.data, drafts=[args.draft], users=args.users,
                      engine_depth=args.engine_depth, only=[args.method])  # fmt: skip
    run = bench_run(cfg, extra_methods=probes(stops))
    path = write_report(run.report, run.runs, Path(args.out))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
