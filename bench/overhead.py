"""Step-time overhead of a regularizer: its training step against the plain step, measured side by side.

Both regularizers wrap the same model, optimizer and batches, in ONE process, alternating which goes first on
each batch after a warm-up, so load on the machine hits both alike. The ratio per batch is R's step time over
``none``'s; the median, min and max over batches are reported.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_STEPS = 20
DEFAULT_WARMUP = 3


def measure_overhead(config, steps: int = DEFAULT_STEPS, warmup: int = DEFAULT_WARMUP) -> dict[str, Any]:
    """Median / min / max of (step time under ``config.reg``) / (plain step time) over ``steps`` batches.

    ``config`` is a ``RunConfig``; only its training data, method and regularizer are used (no evaluation).
    """
    import torch

    from bench.regularize import create
    from bench.train import BatchClosure, build_optimizer, prepare_run

    run = prepare_run(config, evaluation=False)
    config, method = run.config, run.method
    baseline = create("none", method)
    optimizer, _ = build_optimizer(method, config.lr, config.weight_decay, method.recipe, 1, "constant")
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.startswith("cuda"))
    run.regularizer.scaler = baseline.scaler = scaler
    rng = random.Random(config.seed)
    order = list(range(len(run.triplets)))
    ratios, seconds = [], {"none": [], run.regularizer.name: []}
    phases: list[dict[str, float]] = []
    method.train()

    def timed_step(regularizer, group) -> float:
        closure = BatchClosure(
            method, optimizer, scaler, run.images, run.texts, run.triplets, group, scaler.is_enabled()
        )
        if run.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        regularizer.step(closure, optimizer)
        if run.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for step in range(warmup + steps):
        indices = rng.sample(order, min(config.batch_size, len(order)))
        group = [(indices, [rng.choice(run.triplets[i][1]) for i in indices])]
        pair = [("none", baseline), (run.regularizer.name, run.regularizer)]
        if step % 2:
            pair.reverse()
        times = {name: timed_step(regularizer, group) for name, regularizer in pair}
        if step >= warmup:
            for name, value in times.items():
                seconds[name].append(value)
            ratios.append(times[run.regularizer.name] / times["none"])
            phases.append(run.regularizer.last_seconds)
    from bench.train import median_phases

    return {
        "regularizer": run.regularizer.describe(),
        "method": config.method,
        "regime": "lora" if config.lora else "full",
        "device": run.device,
        "batch_size": config.batch_size,
        "steps": steps,
        "warmup": warmup,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "step_seconds_median": {name: statistics.median(values) for name, values in seconds.items()},
        "phases_median": median_phases(phases),
        "backbone": method.describe_backbone(),
        "config": dataclasses.asdict(config),
        "spec": run.spec,
    }


def write_overhead_record(result: dict[str, Any], results_dir: Path | str) -> Path:
    """Store an overhead measurement as a result record (no recall metrics; ``overhead`` holds the ratios)."""
    from bench.config import config_dict
    from bench.records import new_record, write_record
    from bench.train import RunConfig

    spec = result["spec"]
    config = RunConfig(**result["config"])
    record = new_record(
        method=result["method"],
        backbone=result["backbone"],
        regime=result["regime"],
        regularizer=result["regularizer"],
        seed=config.seed,
        dataset=spec.name,
        layout=spec.layout,
        split="train",
        config=config_dict(config),
        metrics={},
        kind="overhead",
        overhead={k: v for k, v in result.items() if k not in ("config", "spec", "backbone", "method", "regime")},
    )
    return write_record(record, results_dir)
