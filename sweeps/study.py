"""Optuna studies of a regularizer's strength: YAML definitions, storage, workers and the objective.

A study's budget is its number of trials (plus the unregularized baseline); every ``python -m bench sweep`` call
tops the study up to that budget, so a killed sweep is resumed by running the same command again. Workers on one
machine claim trials under a file lock (no trial is run twice or lost); a worker that dies mid-trial stops sending
heartbeats, its trial is failed after the grace period and re-enqueued with the same parameters.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError

DEFAULT_SEARCH_SPACE = {"gamma": {"low": 1e-5, "high": 1e-1, "log": True}}
RUN_PARAMETERS = ("lr", "weight_decay")  # searchable fields of RunConfig; the rest are regularizer settings
RUN_KEYS = ("backbone", "pretrained", "data_root", "lora", "epochs", "batch_size", "lr")
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class ParameterRange:
    """One searched parameter: a float in ``[low, high]``, sampled log-uniformly when ``log``."""

    low: float
    high: float
    log: bool = True


@dataclass(frozen=True)
class SweepConfig:
    """A study definition (``sweeps/NAME.yaml``). ``name`` defaults to the file's stem.

    ``run`` holds any further ``RunConfig`` field (schedule, lora_rank, method_options, ...). ``objective`` is
    ``Avg`` (the dataset's headline: FashionIQ average Avg, CIRR Avg) or ``subset.metric`` such as ``all.R@1``.
    ``trials`` counts regularized trials; the baseline (``baseline: true``) runs the same configuration without
    regularizer, same epochs and seeds, as one extra trial.
    """

    name: str
    method: str = "combiner"
    dataset: str = "synth-fiq"
    regularizer: str = "wrf"
    backbone: str | None = None
    pretrained: str | None = None
    data_root: str | None = None
    lora: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    run: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE))
    objective: str = "Avg"
    trials: int = 10
    seeds: tuple[int, ...] = (0,)
    enqueue: tuple[dict[str, Any], ...] | None = None
    baseline: bool = True
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 3
    sampler_seed: int = 0
    sampler_startup_trials: int = 4
    heartbeat_seconds: int = 60
    grace_seconds: int = 180
    max_retry: int = 2

    @property
    def ranges(self) -> dict[str, ParameterRange]:
        """The search space as ``ParameterRange`` objects (validated in ``load_sweep``)."""
        return {name: ParameterRange(**spec) for name, spec in self.search_space.items()}

    @property
    def enqueued(self) -> tuple[dict[str, Any], ...]:
        """Trials run first: the paper's γ = 1e-3 when γ is searched, unless the YAML lists its own."""
        if self.enqueue is not None:
            return self.enqueue
        return ({"gamma": 1e-3},) if "gamma" in self.search_space else ()

    def run_config(self, seed: int, reg: str, params: dict[str, float]):
        """The ``RunConfig`` of one seed of a trial: ``params`` split into run fields and regularizer settings."""
        from bench.config import resolve_config
        from bench.train import RunConfig

        values = {key: getattr(self, key) for key in ("method", "dataset", *RUN_KEYS)}
        values = {**{k: v for k, v in values.items() if v is not None}, **self.run}
        values.update({k: v for k, v in params.items() if k in RUN_PARAMETERS})
        settings = {k: v for k, v in params.items() if k not in RUN_PARAMETERS} if reg != "none" else {}
        values.update(seed=seed, reg=reg, reg_settings=settings)
        return resolve_config(RunConfig, values, {}, source=f"sweep {self.name}: run")

    def definition(self) -> dict[str, Any]:
        """What must not change between calls on one study (the trial budget and worker settings may)."""
        from bench.config import config_dict

        volatile = {"trials", "heartbeat_seconds", "grace_seconds", "max_retry"}
        return {k: v for k, v in config_dict(self).items() if k not in volatile}


def load_sweep(path: Path | str, trials: int | None = None) -> SweepConfig:
    """Read and validate a study YAML; every mistake is a one-line ``BenchError`` naming the file and key."""
    from bench.config import read_yaml, resolve_config
    from bench.data import get_dataset
    from bench.regularize import settings_class
    from methods import get_method_class

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: no such sweep file")
    values = read_yaml(path)
    values.setdefault("name", path.stem)
    sweep = resolve_config(SweepConfig, values, {"trials": trials}, source=str(path))
    get_method_class(sweep.method)
    layout = get_dataset(sweep.dataset).layout
    settings = settings_class(sweep.regularizer)
    if sweep.trials < 1:
        raise BenchError(f"{path}: trials must be at least 1, got {sweep.trials}")
    if not sweep.seeds:
        raise BenchError(f"{path}: seeds must list at least one seed")
    if sweep.pruner not in PRUNERS:
        raise BenchError(f"{path}: pruner must be one of {', '.join(PRUNERS)}, got {sweep.pruner!r}")
    for key in ("run", "search_space"):
        if not isinstance(getattr(sweep, key), dict):
            raise BenchError(f"{path}: {key} must be a mapping, got {getattr(sweep, key)!r}")
    reserved = sorted(set(sweep.run) & {"method", "dataset", "seed", "reg", "reg_settings"})
    if reserved:
        raise BenchError(f"{path}: run.{reserved[0]} is set by the sweep itself (use the top-level keys)")
    if sweep.heartbeat_seconds < 1 or sweep.grace_seconds <= sweep.heartbeat_seconds:
        raise BenchError(f"{path}: need heartbeat_seconds >= 1 and grace_seconds > heartbeat_seconds")
    if not sweep.search_space:
        raise BenchError(f"{path}: search_space is empty")
    searchable = [f.name for f in dataclasses.fields(settings) if f.type in ("float", float)] + list(RUN_PARAMETERS)
    for name, spec in sweep.search_space.items():
        where = f"{path}: search_space.{name}"
        if name not in searchable:
            raise BenchError(f"{where}: not a searchable parameter of {sweep.regularizer} ({', '.join(searchable)})")
        if not isinstance(spec, dict):
            raise BenchError(f"{where}: expected a mapping with low, high (and log)")
        bounds = resolve_config(ParameterRange, spec, {}, source=where)
        if not (math.isfinite(bounds.low) and math.isfinite(bounds.high)) or bounds.low >= bounds.high:
            raise BenchError(f"{where}: empty or inverted range [{bounds.low}, {bounds.high}] (need low < high)")
        if bounds.log and bounds.low <= 0:
            raise BenchError(f"{where}: a log range needs low > 0, got {bounds.low}")
    for enqueued in sweep.enqueued:
        if not isinstance(enqueued, dict):
            raise BenchError(f"{path}: enqueue must list mappings of parameter values, got {enqueued!r}")
        for name, value in enqueued.items():
            bounds = sweep.ranges.get(name)
            if bounds is None or not isinstance(value, int | float) or not bounds.low <= value <= bounds.high:
                raise BenchError(f"{path}: enqueue: {name}={value!r} is not inside the search space")
    objective_metric(sweep.objective, layout, source=str(path))
    for params in ({n: r.low for n, r in sweep.ranges.items()}, {n: r.high for n, r in sweep.ranges.items()}):
        sweep.run_config(sweep.seeds[0], sweep.regularizer, params).check()
    return sweep


def objective_metric(objective: str, layout: str, source: str) -> tuple[str, str]:
    """``(subset, metric)`` of an objective name for a dataset layout (``Avg`` is the layout's headline)."""
    from bench.report import CIRR_COLUMNS, FASHIONIQ_COLUMNS

    columns = FASHIONIQ_COLUMNS if layout == "fashioniq" else CIRR_COLUMNS
    if objective == "Avg":
        return columns[-1]
    subset, _, metric = objective.partition(".")
    if (subset, metric) not in columns:
        valid = ", ".join(f"{s}.{m}" for s, m in columns)
        raise BenchError(f"{source}: objective {objective!r} is not a {layout} metric (Avg or one of: {valid})")
    return subset, metric


def default_storage(sweep: SweepConfig, results_dir: Path | str) -> str:
    """The embedded storage: one SQLite file per study under ``results/sweeps/``."""
    folder = Path(results_dir).resolve() / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / sweep.name}.db"


def open_storage(url: str, heartbeat_seconds: int | None = None, grace_seconds: int | None = None, max_retry=None):
    """An Optuna RDB storage for ``url`` (one-line error, password hidden, if it cannot be reached)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is reported below by RDBStorage itself
        shown = url
    # SQLite: wait for the other worker's write lock instead of failing at once.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    heartbeat = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_seconds is not None:
            heartbeat = dict(
                heartbeat_interval=heartbeat_seconds,
                grace_period=grace_seconds,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
        # Workers starting together race to create a new database's tables; the loser succeeds on a retry.
        for attempt in range(3):
            try:
                return RDBStorage(url, engine_kwargs=engine, **heartbeat)
            except Exception as exc:  # noqa: BLE001 - driver errors differ per database; all mean "unreachable"
                error = exc
                time.sleep(0.5 * (attempt + 1))
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    raise BenchError(f"--storage {shown}: cannot open the study storage ({reason})") from None


def open_study(sweep: SweepConfig, storage, worker: int = 0):
    """Create or load the study; the first call enqueues the baseline and the fixed trials (e.g. γ = 1e-3).

    The sampler's seed is ``sampler_seed`` plus the trials already stored plus ``worker``: a fresh single-worker
    study is reproducible, and neither a resumed call nor a second worker replays the same random draws.
    """
    import optuna

    existing = 0
    if sweep.name in optuna.get_all_study_names(storage):
        existing = len(optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False))

    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner_startup_trials, n_warmup_steps=sweep.pruner_warmup_epochs
        )
        if sweep.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            n_startup_trials=sweep.sampler_startup_trials, seed=sweep.sampler_seed + existing + worker
        ),
        pruner=pruner,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", sweep.definition())
        if sweep.baseline:
            study.enqueue_trial({}, user_attrs={"role": "baseline"})
        for params in sweep.enqueued:
            study.enqueue_trial(params, user_attrs={"role": "trial"})
    elif stored != sweep.definition():
        changed = sorted(k for k in set(stored) | set(sweep.definition()) if stored.get(k) != sweep.definition().get(k))
        raise BenchError(
            f"sweep {sweep.name}: the stored study was created from a different definition "
            f"(changed: {', '.join(changed)}); give the study a new name"
        )
    return study


def counts_toward_budget(trial) -> bool:
    """Finished, running or deterministically failed trials; stale failures are retried, so they do not count."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def trials_needed(sweep: SweepConfig, trials) -> bool:
    """Whether the study still lacks a regularized trial or its baseline (finished, running or failed for good)."""
    counted = [t for t in trials if counts_toward_budget(t)]
    baselines = sum(t.user_attrs.get("role") == "baseline" for t in counted)
    return len(counted) - baselines < sweep.trials or (sweep.baseline and baselines == 0)


class _ClaimLock:
    """An exclusive file lock that the objective releases once its trial is claimed (RUNNING in the storage)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a")  # noqa: SIM115 - held for the worker's lifetime
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self.handle, fcntl.LOCK_UN)


class SweepObjective:
    """``objective(trial)``: train every seed of the trial's configuration, report per-epoch val, return the mean."""

    def __init__(self, sweep: SweepConfig, results_dir: Path, on_claim=None) -> None:
        from bench.data import get_dataset

        self.sweep, self.results_dir, self.on_claim = sweep, results_dir, on_claim
        self.metric = objective_metric(sweep.objective, get_dataset(sweep.dataset).layout, source=sweep.name)

    def value(self, metrics: dict[str, dict[str, float]]) -> float:
        """The objective's value in a record's (or an epoch's) val metrics."""
        subset, metric = self.metric
        return metrics[subset][metric]

    def __call__(self, trial) -> float:
        import optuna

        from bench.train import train
        from methods import get_method_class

        if self.on_claim is not None:
            self.on_claim()
        role = trial.user_attrs.get("role", "trial")
        trial.set_user_attr("role", role)
        params = {}
        if role == "trial":
            params = {
                name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in self.sweep.ranges.items()
            }
        # A retried trial inherits its original's user attributes: the original number stays its identity, so
        # seeds finished before a worker died are reused rather than trained twice.
        identity = trial.user_attrs.get("origin", trial.number)
        trial.set_user_attr("origin", identity)
        reg = self.sweep.regularizer if role == "trial" else "none"
        run_ids, values = [], []
        for index, seed in enumerate(self.sweep.seeds):
            config = self.sweep.run_config(seed, reg, params)
            # Only a retried trial can have finished seeds: a fresh one skips reading every record.
            record = self._finished_record(identity, seed) if identity != trial.number else None
            if record is None:
                # Seeds run one after another: seed i's epochs are reported as steps after seed i-1's.
                offset = index * (config.epochs or get_method_class(config.method).recipe.epochs)

                def report(epoch: int, metrics: dict[str, Any], offset: int = offset) -> str | None:
                    trial.report(self.value(metrics), step=offset + epoch)
                    prunable = role == "trial" and trial.should_prune()
                    return f"pruned by the {self.sweep.pruner} pruner at epoch {epoch}" if prunable else None

                fields = {"study": self.sweep.name, "trial": identity, "role": role, "params": params}
                fields.update(objective=self.sweep.objective, seeds=list(self.sweep.seeds))
                try:
                    path = train(config, self.results_dir, on_epoch=report, record_fields={"sweep": fields})
                except BenchError as exc:
                    trial.set_user_attr("error", str(exc))
                    raise
                record = _read(path)
            run_ids.append(record["run_id"])
            values.append(self.value(record["metrics"]))
            trial.set_user_attr("run_ids", run_ids)
            if "stopped" in record:
                raise optuna.TrialPruned(f"{record['stopped']['reason']} of seed {seed}")
        return statistics.fmean(values)

    def _finished_record(self, identity: int, seed: int) -> dict[str, Any] | None:
        from bench.records import load_records

        for record in load_records(self.results_dir):
            sweep = record.get("sweep") or {}
            if sweep.get("study") == self.sweep.name and sweep.get("trial") == identity and record["seed"] == seed:
                return record
        return None


def _read(path: Path) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())


def run_worker(
    sweep: SweepConfig, storage_url: str, results_dir: Path | str, threads: int | None = None, worker: int = 0
) -> int:
    """Run trials until the study holds its budget and no trial is still running elsewhere; returns trials run."""
    import optuna

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    results_dir = Path(results_dir)
    storage = open_storage(storage_url, sweep.heartbeat_seconds, sweep.grace_seconds, sweep.max_retry)
    study = open_study(sweep, storage, worker)
    lock = _ClaimLock(results_dir / "sweeps" / f"{sweep.name}.lock")
    objective = SweepObjective(sweep, results_dir, on_claim=lock.release)
    ran = 0
    while True:
        lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            _ensure_baseline(sweep, study, trials)
            if trials_needed(sweep, trials):
                # The objective releases the lock once optimize() has claimed the trial (fail_stale + ask).
                study.optimize(objective, n_trials=1, catch=(BenchError,))
                ran += 1
                continue
            running = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        finally:
            lock.release()
        if not running:
            return ran
        # Wait for the other workers' trials: if one dies, its trial is failed and re-enqueued for us to run.
        time.sleep(max(1, min(sweep.heartbeat_seconds, 10)))


def _ensure_baseline(sweep: SweepConfig, study, trials) -> None:
    """Re-enqueue the baseline if its trial crashed (a bug, not a recorded error): every sweep keeps its baseline."""
    from optuna.trial import TrialState

    if not sweep.baseline:
        return
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    baselines = [t for t in trials if t.user_attrs.get("role") == "baseline"]
    if not any(t.state in alive or "error" in t.user_attrs for t in baselines):
        study.enqueue_trial({}, user_attrs={"role": "baseline"})


def _worker_process(sweep: SweepConfig, storage_url: str, results_dir: str, threads: int, worker: int) -> None:
    import sys

    try:
        run_worker(sweep, storage_url, results_dir, threads, worker)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run_sweep(sweep: SweepConfig, results_dir: Path | str = "results", storage: str | None = None, workers: int = 1):
    """Open (or create) the study, then run ``workers`` local worker processes until it holds its budget.

    Returns the study. With ``workers > 1`` each process gets an equal share of the CPU threads.
    """
    import multiprocessing

    if workers < 1:
        raise BenchError(f"--workers: must be at least 1, got {workers}")
    url = storage or default_storage(sweep, results_dir)
    rdb = open_storage(url)  # an unreachable storage fails here, before anything is written
    # Created and seeded under the claim lock, before any worker starts: concurrent sweeps on this machine never
    # enqueue the baseline twice.
    lock = _ClaimLock(Path(results_dir) / "sweeps" / f"{sweep.name}.lock")
    lock.acquire()
    try:
        study = open_study(sweep, rdb)
    finally:
        lock.release()
    if workers == 1:
        run_worker(sweep, url, results_dir)
        return study
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_process, args=(sweep, url, str(results_dir), threads, worker))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise BenchError(f"sweep {sweep.name}: {len(failed)} of {workers} workers failed (exit {failed[0]})")
    return study


def sweep_summary(study) -> dict[str, Any]:
    """The baseline, the best regularized trial and the state counts of a study (for the CLI and the report)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    baseline = next((t for t in complete if t.user_attrs.get("role") == "baseline"), None)
    regularized = [t for t in complete if t.user_attrs.get("role") == "trial"]
    best = max(regularized, key=lambda t: t.value, default=None)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {"baseline": baseline, "best": best, "states": states}


def load_stored_study(name: str, results_dir: Path | str = "results", storage: str | None = None):
    """Load study ``name`` from ``storage`` (default: its SQLite file under ``results/sweeps/``)."""
    import difflib

    import optuna

    if storage is None:
        path = Path(results_dir) / "sweeps" / f"{name}.db"
        if not path.is_file():
            raise BenchError(f"sweep-report: no study storage {path} (run `python -m bench sweep` first or --storage)")
        storage = f"sqlite:///{path.resolve()}"
    rdb = open_storage(storage)
    names = optuna.get_all_study_names(rdb)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (it has: {', '.join(names) or 'none'})"
        raise BenchError(f"sweep-report: no study {name!r} in the storage{hint}")
    return optuna.load_study(study_name=name, storage=rdb)


def export_study(name: str, results_dir: Path | str = "results", storage: str | None = None) -> list[Path]:
    """Write ``results/sweeps/NAME.csv`` (one row per trial) and ``results/plots/sweep-NAME.png`` (searched
    parameter against the objective, every trial state, the baseline as a line); returns both paths."""
    import csv
    import io

    from bench.io import write_text
    from bench.plots import plot_sensitivity

    study = load_stored_study(name, results_dir, storage)
    trials = study.get_trials(deepcopy=False)
    parameters = sorted({p for t in trials for p in t.params})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "role", "value", *parameters, "retry_of", "run_ids", "duration_s", "error"])
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
        writer.writerow(
            [
                t.number,
                t.state.name.lower(),
                t.user_attrs.get("role", "trial"),
                "" if t.value is None else f"{t.value:.4f}",
                *(t.params.get(p, "") for p in parameters),
                t.system_attrs.get("failed_trial", ""),
                " ".join(t.user_attrs.get("run_ids", [])),
                duration if duration == "" else f"{duration:.1f}",
                t.user_attrs.get("error", ""),
            ]
        )
    csv_path = write_text(Path(results_dir) / "sweeps" / f"{name}.csv", out.getvalue())
    summary = sweep_summary(study)
    parameter = parameters[0] if parameters else "gamma"
    points = [
        {parameter: t.params[parameter], "value": _last_value(t), "state": t.state.name.lower()}
        for t in trials
        if parameter in t.params and _last_value(t) is not None
    ]
    baseline = summary["baseline"].value if summary["baseline"] else None
    plot = plot_sensitivity(
        points,
        parameter,
        study.user_attrs.get("definition", {}).get("objective", "objective"),
        baseline,
        Path(results_dir) / "plots" / f"sweep-{name}.png",
        title=f"sweep {name} (pruned: last reported value)",
    )
    return [csv_path, plot]


def _last_value(trial) -> float | None:
    """A finished trial's value, or a pruned trial's last reported intermediate value."""
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
