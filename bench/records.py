"""Result records: one versioned JSON per evaluated run under ``results/runs/`` (CLIP_benchmark style).

Tables and plots are rendered from these records alone (``python -m bench report``), never typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import write_json

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path("results")

# Fields every record has, with the JSON type each must have: the reader checks these before any table is built.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "run_id": str,
    "created": str,
    "git_commit": (str, type(None)),
    "packages": dict,
    "method": str,
    "backbone": dict,
    "regime": str,
    "regularizer": dict,
    "seed": int,
    "dataset": str,
    "layout": str,
    "split": str,
    "config": dict,
    "metrics": dict,
}
# The optional section linking a record to its Optuna trial (the leaderboard picks each study's best from these).
SWEEP_FIELDS: dict[str, type] = {
    "study": str,
    "trial": int,
    "role": str,
    "objective": str,
    "seeds": list,
    "params": dict,
}
TRACKED_PACKAGES = ("torch", "torchvision", "open_clip_torch", "transformers", "peft", "optuna", "numpy", "pillow")


def git_commit(repo: Path | None = None) -> str | None:
    """The checkout's HEAD commit, with ``-dirty`` appended when tracked files outside ``results/`` have changed;
    None outside git."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            # Records and rendered tables under results/ are outputs, not code: they never make a run "dirty".
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose behaviour a result depends on."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_run_id(*labels: Any) -> str:
    """A unique, sortable run id: UTC time, the labels (method, dataset, ...) and a short random suffix."""
    created = _now()
    suffix = hashlib.sha1(f"{created}{os.getpid()}{os.urandom(8).hex()}".encode()).hexdigest()[:6]
    stamp = created[:19].replace("-", "").replace(":", "")
    return "-".join([f"{stamp}Z", *(str(label) for label in labels if label is not None), suffix])


def new_record(run_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A record with the provenance fields filled in (schema version, run id, time, git commit, packages).

    ``fields`` supplies the rest of ``REQUIRED_FIELDS`` (method, backbone, dataset, metrics, ...) and any extra
    sections (``per_query`` hits, ``history``, ...). The record is validated before it is returned.
    """
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id or make_run_id(fields.get("method"), fields.get("dataset"), fields.get("split")),
        "created": _now(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        **fields,
    }
    validate_record(record, source="new record")
    return record


def validate_record(record: Any, source: str) -> None:
    """Raise a one-line ``BenchError`` naming ``source`` if ``record`` is not a valid record of this schema."""
    if not isinstance(record, dict):
        raise BenchError(f"{source}: a record must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchError(f"{source}: unknown schema_version {version!r} (this suite reads version {SCHEMA_VERSION})")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in record:
            raise BenchError(f"{source}: record has no {name!r} field")
        if not isinstance(record[name], kind) or (kind is int and isinstance(record[name], bool)):
            raise BenchError(f"{source}: field {name!r} has the wrong type ({type(record[name]).__name__})")
    for subset, metrics in record["metrics"].items():
        if not isinstance(metrics, dict) or not all(isinstance(v, int | float) for v in metrics.values()):
            raise BenchError(f"{source}: metrics[{subset!r}] must map metric names to numbers")
    if "sweep" in record:
        sweep = record["sweep"]
        if not isinstance(sweep, dict) or any(not isinstance(sweep.get(k), t) for k, t in SWEEP_FIELDS.items()):
            fields = ", ".join(f"{k} ({t.__name__})" for k, t in SWEEP_FIELDS.items())
            raise BenchError(f"{source}: the sweep section needs {fields}")


def write_record(record: dict[str, Any], results_dir: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """Validate and atomically write ``record`` to ``results_dir/runs/<run_id>.json``; returns the path."""
    validate_record(record, source=f"record {record.get('run_id', '?')}")
    return write_json(Path(results_dir) / "runs" / f"{record['run_id']}.json", record)


def load_records(results_dir: Path | str = DEFAULT_RESULTS_DIR) -> list[dict[str, Any]]:
    """Read and validate every record under ``results_dir/runs/``, sorted by run id."""
    records = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        validate_record(record, source=str(path))
        records.append(record)
    return records
