import numpy as np
import pytest

from bench.errors import BenchError
from bench.stats import headline_scores, paired_bootstrap


def hits(rng, n, p):
    return (rng.random(n) < p).astype(float) * 100


def test_identical_runs_give_an_interval_containing_zero():
    rng = np.random.default_rng(1)
    scores = {c: hits(rng, 400, 0.6) for c in ("dress", "shirt", "toptee")}
    interval = paired_bootstrap(scores, {c: v.copy() for c, v in scores.items()})
    assert interval.delta == 0 and interval.low <= 0 <= interval.high and not interval.excludes_zero()


def test_runs_that_differ_per_query_but_not_on_average_contain_zero():
    rng = np.random.default_rng(2)
    control = {"all": hits(rng, 1000, 0.5)}
    treatment = control["all"].copy()
    # 50 hits become misses and 50 misses become hits: different queries, the same recall.
    treatment[rng.choice(np.flatnonzero(treatment == 100), 50, replace=False)] = 0
    treatment[rng.choice(np.flatnonzero(control["all"] == 0), 50, replace=False)] = 100
    interval = paired_bootstrap({"all": treatment}, control)
    assert interval.delta == 0 and interval.low < 0 < interval.high


def test_a_planted_improvement_excludes_zero():
    rng = np.random.default_rng(3)
    control = {c: hits(rng, 400, 0.6) for c in ("dress", "shirt", "toptee")}
    treatment = {}
    for subset, values in control.items():
        improved = values.copy()
        misses = np.flatnonzero(values == 0)
        improved[misses[: len(misses) // 5]] = 100  # 20% of the misses become hits: ~+8 points
        treatment[subset] = improved
    interval = paired_bootstrap(treatment, control)
    assert interval.excludes_zero() and interval.low > 0
    assert interval.low < interval.delta < interval.high
    expected = np.mean([treatment[c].mean() - control[c].mean() for c in control])
    assert interval.delta == pytest.approx(expected)


def test_bootstrap_is_deterministic_per_seed():
    rng = np.random.default_rng(4)
    a, b = {"all": hits(rng, 300, 0.5)}, {"all": hits(rng, 300, 0.4)}
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)


def test_headline_scores_read_stored_hit_strings_and_average_seeds():
    records = [
        {"run_id": "a", "per_query": {"all": {"R@5": "1100", "Rsubset@1": "1000"}}},
        {"run_id": "b", "per_query": {"all": {"R@5": "1111", "Rsubset@1": "0000"}}},
    ]
    scores = headline_scores("cirr", records)
    assert scores["all"].tolist() == [75.0, 50.0, 25.0, 25.0]


def test_mismatched_queries_are_a_clear_error():
    with pytest.raises(BenchError, match="subsets differ"):
        paired_bootstrap({"dress": np.ones(3)}, {"shirt": np.ones(3)})
    with pytest.raises(BenchError, match="no per-query hits"):
        headline_scores("cirr", [{"run_id": "x"}])
