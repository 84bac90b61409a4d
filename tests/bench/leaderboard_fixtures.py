"""Deterministic records of every kind the leaderboard reads, for the golden-file and plot tests.

Metrics are computed from generated per-query hits (as a real run computes them), so the bootstrap Δ and the
table agree.
"""

import numpy as np

from bench.evaluate import aggregate
from bench.records import new_record
from tests.bench.test_records import make_record

FIQ_CATEGORIES = ("dress", "shirt", "toptee")
TINY_CLIP = {"family": "clip", "arch": "cirbench-tiny-clip", "pretrained": "synth"}
BASE_CONFIG = {"epochs": 2, "lr": 0.0005, "batch_size": 128, "seed": 0, "reg": "none", "reg_settings": {}}


def _hit_string(rng, n, p):
    return "".join("1" if x else "0" for x in rng.random(n) < p)


def _recall(string):
    return 100.0 * string.count("1") / len(string)


def fashioniq_hits(seed, quality, queries=120):
    """Per-category R@10 / R@50 hit strings; a higher ``quality`` means more hits."""
    rng = np.random.default_rng(seed)
    per_query = {}
    for category in FIQ_CATEGORIES:
        r10 = _hit_string(rng, queries, quality)
        extra = _hit_string(rng, queries, 0.5)
        r50 = "".join("1" if a == "1" or b == "1" else "0" for a, b in zip(r10, extra, strict=True))
        per_query[category] = {"R@10": r10, "R@50": r50}
    return per_query


def cirr_hits(seed, quality, queries=200):
    rng = np.random.default_rng(seed)
    per_query = {}
    for k, p in (("R@1", quality * 0.5), ("R@5", quality), ("R@10", quality + 0.1), ("R@50", quality + 0.3)):
        per_query[k] = _hit_string(rng, queries, min(p, 1.0))
    for k, p in (("Rsubset@1", quality + 0.2), ("Rsubset@2", quality + 0.3), ("Rsubset@3", quality + 0.4)):
        per_query[k] = _hit_string(rng, queries, min(p, 1.0))
    return {"all": per_query}


def _metrics(layout, per_query):
    per_subset = {subset: {k: _recall(v) for k, v in hits.items()} for subset, hits in per_query.items()}
    return aggregate(layout, per_subset)


def history(layout, metrics, gap):
    """Two epochs; the train subset is ``gap`` points above val at the selected epoch (2)."""
    key = "average" if layout == "fashioniq" else "all"

    def shifted(delta):
        return {s: {m: v + delta if (s, m) == (key, "Avg") else v for m, v in ms.items()} for s, ms in metrics.items()}

    return [
        {"epoch": 0, "val": shifted(-20.0), "train": shifted(-19.0)},
        {"epoch": 1, "val": shifted(-5.0), "train": shifted(-4.0), "train_time_s": 1.0},
        {"epoch": 2, "val": metrics, "train": shifted(gap), "train_time_s": 1.0},
    ]


def trained_record(run_id, *, method, layout, dataset, seed, quality, regularizer, gap, step, regime="full", **extra):
    per_query = fashioniq_hits(seed, quality) if layout == "fashioniq" else cirr_hits(seed, quality)
    metrics = _metrics(layout, per_query)
    reg_settings = {k: v for k, v in regularizer.items() if k != "name"}
    config = {**BASE_CONFIG, "seed": seed, "reg": regularizer["name"], "reg_settings": reg_settings}
    config.update(extra.pop("config", {}))
    return new_record(
        run_id=run_id,
        method=method,
        backbone=TINY_CLIP,
        regime=regime,
        regularizer=regularizer,
        seed=seed,
        dataset=dataset,
        layout=layout,
        split="val",
        config=config,
        metrics=metrics,
        per_query=per_query,
        history=history(layout, metrics, gap),
        selected_epoch=2,
        timing={"step_seconds": {"step": step}, "train_seconds": 2.0},
        **extra,
    )


def leaderboard_records():
    """Runs with and without WRF over two seeds, an overhead record, a sweep, a CIRR pair, a zero-shot row and a
    landscape: every section and column of the leaderboard."""
    wrf = {"name": "wrf", "gamma": 0.001, "restore": "before_step", "warmup_steps": 0}
    fiq = dict(method="combiner", layout="fashioniq", dataset="synth-fiq")
    records = [
        trained_record("r01-none-s0", **fiq, seed=0, quality=0.40, regularizer={"name": "none"}, gap=6.0, step=0.02),
        trained_record("r02-none-s1", **fiq, seed=1, quality=0.42, regularizer={"name": "none"}, gap=7.0, step=0.02),
        trained_record("r03-wrf-s0", **fiq, seed=0, quality=0.55, regularizer=wrf, gap=3.0, step=0.04),
        trained_record("r04-wrf-s1", **fiq, seed=1, quality=0.53, regularizer=wrf, gap=4.0, step=0.04),
        new_record(
            run_id="r05-overhead",
            kind="overhead",
            method="combiner",
            backbone=TINY_CLIP,
            regime="full",
            regularizer=wrf,
            seed=0,
            dataset="synth-fiq",
            layout="fashioniq",
            split="train",
            config={},
            metrics={},
            overhead={"ratio_median": 1.9, "ratio_min": 1.8, "ratio_max": 2.1},
        ),
    ]

    def sweep_record(run_id, trial, role, gamma, quality, seed=0):
        regularizer = {"name": "none"} if gamma is None else {**wrf, "gamma": gamma}
        params = {} if gamma is None else {"gamma": gamma}
        sweep = {"study": "demo-study", "objective": "Avg", "seeds": [0], "trial": trial, "role": role}
        return trained_record(
            run_id,
            **fiq,
            seed=seed,
            quality=quality,
            regularizer=regularizer,
            gap=2.0,
            step=0.03,
            config={"epochs": 3},
            sweep={**sweep, "params": params},
        )

    records += [
        sweep_record("r10-sweep", 0, "baseline", None, 0.45),
        sweep_record("r11-sweep", 1, "trial", 1e-3, 0.5),
        sweep_record("r12-sweep", 2, "trial", 0.05, 0.6),
        # A trial whose worker died before seed 0 finished (a record for another seed only): not a result yet.
        sweep_record("r19-sweep-partial", 3, "trial", 0.02, 0.9, seed=5),
    ]
    # A pruned trial: a better value than any complete trial at its stopping epoch, yet never the best.
    pruned = sweep_record("r18-sweep-pruned", 4, "trial", 0.09, 0.95)
    pruned["stopped"] = {"epoch": 1, "reason": "pruned by the median pruner at epoch 1"}
    records.append(pruned)
    cirr = dict(method="blip2", layout="cirr", dataset="synth-cirr", regime="lora")
    rwp = {"name": "rwp", "gamma": 0.01, "mix": 0.5}
    records += [
        trained_record("r20-cirr-none", **cirr, seed=0, quality=0.5, regularizer={"name": "none"}, gap=1.0, step=0.1),
        trained_record("r21-cirr-rwp", **cirr, seed=0, quality=0.55, regularizer=rwp, gap=0.5, step=0.12),
        make_record(run_id="r30-zero-shot", backbone=TINY_CLIP, config={"baselines": ["sum"]}),
    ]
    records[2]["landscape"] = {
        "line": {"alphas": [-1.0, 0.0, 1.0], "loss": [2.0, 1.0, 2.5]},
        "surface": {"alphas": [-1.0, 0.0, 1.0], "betas": [-1.0, 0.0, 1.0], "loss": [[3, 2, 3], [2, 1, 2], [3, 2, 3]]},
        "sharpness": {"gammas": [1e-4, 1e-3, 1e-2], "loss_increase": [0.001, 0.01, 0.2]},
        "center_loss": 1.0,
    }
    return records
