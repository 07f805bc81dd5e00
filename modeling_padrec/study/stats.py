"""Intervals for the study: a two-level bootstrap over seeds and users.

A cell's requests come from several seeds (independent trainings), each benched on the same users. One
bootstrap replicate draws seeds with replacement, then each drawn seed's users with replacement, and recomputes
the statistic over the pooled draws; the 95% interval is the 2.5th and 97.5th percentiles of the replicates. With
one seed this is the bootstrap over users alone (and says so: ``seeds`` is reported beside every interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

REPLICATES = 2000


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    seeds: int
    requests: int

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "seeds": self.seeds,
            "requests": self.requests,
        }

    def excludes(self, x: float) -> bool:
        return self.low > x or self.high < x

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _draw(per_seed: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One replicate: seeds with replacement, then each drawn seed's rows with replacement."""
    picks = rng.integers(0, len(per_seed), len(per_seed))
    return [per_seed[i][rng.integers(0, len(per_seed[i]), len(per_seed[i]))] for i in picks]


def geometric_mean(per_seed: list[np.ndarray], seed: int = 0) -> Estimate:
    """Geometric mean of per-request ratios (a speedup, or one method's latency over another's on the same
    request), with its interval."""
    logs = [np.log(np.asarray(x, dtype=float)) for x in per_seed if len(x)]
    return _estimate(logs, lambda parts: float(np.exp(np.mean(np.concatenate(parts)))), seed)


def ratio_of_sums(per_seed: list[np.ndarray], seed: int = 0) -> Estimate:
    """``sum(a) / sum(b)`` over requests whose rows are ``(a, b)`` (tokens per target forward, accepted per
    reached step), with its interval."""
    rows = [np.asarray(x, dtype=float).reshape(-1, 2) for x in per_seed if len(x)]

    def stat(parts):
        both = np.concatenate(parts)
        return float(both[:, 0].sum() / max(both[:, 1].sum(), 1e-12))

    return _estimate(rows, stat, seed)


def _estimate(per_seed: list[np.ndarray], stat, seed: int) -> Estimate:
    if not per_seed:
        raise ValueError("no requests to estimate from")
    rng = np.random.default_rng(seed)
    reps = np.array([stat(_draw(per_seed, rng)) for _ in range(REPLICATES)])
    low, high = np.percentile(reps, [2.5, 97.5])
    return Estimate(
        round(stat(per_seed), 4), round(float(low), 4), round(float(high), 4), len(per_seed),
        sum(len(x) for x in per_seed),
    )  # fmt: skip


@cache  # the report asks for the same few (p, df) hundreds of times
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (``0.5 < p < 1``) by bisection on its CDF, the density integrated numerically
    (numpy only: scipy is not a runtime dependency)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 20001)
        return 0.5 + float(np.trapezoid(np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df)), t))

    low, high = 0.0, 1000.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def squares(logs: list[float]) -> tuple[float, int]:
    """The seeds' spread about their mean: (sum of squared deviations, degrees of freedom)."""
    return float(np.sum((np.asarray(logs) - np.mean(logs)) ** 2)), len(logs) - 1


def new_seed_interval(logs: list[float], pooled: tuple[float, int], level: float = 0.95) -> dict | None:
    """Where one more seed's figure should fall (a prediction interval): on the log scale, the mean of the cell's
    seeds (each seed's log geometric mean) ± t · s · sqrt(1 + 1/k), with s² the between-seed variance ``pooled``
    over the study's cells (sum of squares, degrees of freedom). Pooling is what lets a cell of one or two seeds
    have an interval at all; that the seed-to-seed spread is alike across cells is an assumption, which the
    report's leave-one-seed-out check puts to the test."""
    ss, df = pooled
    if df < 1 or not logs:
        return None
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(ss / df * (1 + 1 / len(logs)))
    mean = float(np.mean(logs))
    return {
        "value": round(math.exp(mean), 4),
        "low": round(math.exp(mean - half), 4),
        "high": round(math.exp(mean + half), 4),
        "seeds": len(logs),
        "df": df,
    }
