"""Atomic file writes: results and checkpoints are never left half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def cache_root() -> Path:
    """The suite's cache folder (synthetic worlds, feature caches, pre-trained weights).

    ``$CIR_BENCH_CACHE`` when set, else ``~/.cache/cir-bench``.
    """
    return Path(os.environ.get("CIR_BENCH_CACHE") or Path.home() / ".cache" / "cir-bench")


def atomic_write(path: Path | str, write: Callable[[IO], Any], mode: str = "w") -> Path:
    """Write ``path`` through ``write(file)`` into a temp file in the same folder, then rename it into place.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(path: Path | str, text: str) -> Path:
    """Atomically write ``text``."""
    return atomic_write(path, lambda f: f.write(text))
