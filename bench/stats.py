"""Paired bootstrap over queries: how sure is a leaderboard Δ between two configurations evaluated on one split.

A configuration's headline metric is a mean, over subsets (FashionIQ categories, or CIRR's one set), of a
per-query score; both configurations score the same queries, so resampling the queries (within each subset)
and recomputing the difference of the headlines gives the sampling distribution of Δ (Efron & Tibshirani 1993;
Koehn 2004 for the paired use in evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.errors import BenchError

# The per-query hits each layout's headline averages: FashionIQ Avg = (R@10 + R@50) / 2 per category, then the
# mean over categories; CIRR Avg = (R@5 + Rsubset@1) / 2.
HEADLINE_HITS = {"fashioniq": ("R@10", "R@50"), "cirr": ("R@5", "Rsubset@1")}


@dataclass(frozen=True)
class Interval:
    """A difference in percentage points and its bootstrap confidence interval."""

    delta: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0."""
        return self.low > 0 or self.high < 0


def headline_scores(layout: str, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-subset, per-query headline scores in % (mean over ``records``, i.e. over seeds) from stored hits."""
    names = HEADLINE_HITS[layout]
    scores: dict[str, np.ndarray] = {}
    for record in records:
        per_query = record.get("per_query")
        if not per_query:
            raise BenchError(f"record {record['run_id']}: no per-query hits, so no bootstrap interval")
        for subset, hits in per_query.items():
            if any(name not in hits for name in names):
                raise BenchError(f"record {record['run_id']}: per-query hits of {subset} lack {' or '.join(names)}")
            vectors = [np.frombuffer(hits[name].encode(), dtype=np.uint8) - ord("0") for name in names]
            score = 100.0 * np.mean(vectors, axis=0)
            if subset in scores and scores[subset].shape != score.shape:
                raise BenchError(f"record {record['run_id']}: {subset} has a different number of queries")
            scores[subset] = scores.get(subset, 0.0) + score / len(records)
    return scores


def paired_bootstrap(
    treatment: Mapping[str, np.ndarray],
    control: Mapping[str, np.ndarray],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Δ = headline(treatment) − headline(control) and its percentile bootstrap interval.

    ``treatment`` and ``control`` map each subset to per-query scores of the same queries in the same order; the
    headline is the mean over subsets of the per-subset mean. Queries are resampled with replacement within each
    subset, the same indices for both (paired). Deterministic for a given ``seed``.
    """
    if set(treatment) != set(control):
        raise BenchError(f"bootstrap: subsets differ ({sorted(treatment)} vs {sorted(control)})")
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    delta = 0.0
    for subset in sorted(treatment):
        difference = np.asarray(treatment[subset], dtype=np.float64) - np.asarray(control[subset], dtype=np.float64)
        if difference.ndim != 1 or difference.size == 0:
            raise BenchError(f"bootstrap: {subset} needs the same non-empty list of queries in both configurations")
        delta += difference.mean() / len(treatment)
        # Chunks bound the index matrix at ~16M entries however many queries a split has.
        chunk = max(1, 16_000_000 // difference.size)
        for start in range(0, resamples, chunk):
            stop = min(resamples, start + chunk)
            index = rng.integers(0, difference.size, size=(stop - start, difference.size))
            totals[start:stop] += difference[index].mean(axis=1) / len(treatment)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(totals, [tail, 100 - tail])
    return Interval(float(delta), float(low), float(high))
