"""Writing a world to disk atomically, and the cache folder that generates one on first use.

A world is always built in a temporary folder beside its destination and renamed into place at the end; its
``manifest.json`` is written last, so a folder with a synth manifest is a complete world.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench.data.synth.config import DEFAULT_CONFIG, SynthConfig
from bench.data.synth.render import render_png
from bench.data.synth.world import GENERATOR_NAME, World, build_world
from bench.errors import BenchError
from bench.io import cache_root as default_cache_root


def generate(out_dir: Path | str, config: SynthConfig = DEFAULT_CONFIG) -> Path:
    """Write the synthetic world of ``config`` to ``out_dir`` and return it.

    ``out_dir`` gets ``fashioniq/`` and ``cirr/`` (the official layouts), ``corpus/`` (image-caption pairs for
    pre-training), ``metadata/`` (every image's scene, every query's edits) and ``manifest.json``. The world is built
    beside ``out_dir`` and renamed into place, so an interrupted run leaves no half-written dataset. An existing
    ``out_dir`` is replaced only if it is empty or a previous synthetic world; anything else is a ``BenchError``.
    The default world takes about 20 s in one process (rendering and PNG encoding are most of it).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BenchError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()) and read_synth_manifest(out_dir) is None:
            raise BenchError(
                f"{out_dir}: directory is not empty and holds no synthetic world (no manifest.json from "
                f"{GENERATOR_NAME}); refusing to overwrite it"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    built = _build_beside(out_dir, config)
    try:
        try:
            os.rename(built, out_dir)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise BenchError(f"{out_dir}: cannot move the generated world into place ({exc.strerror})") from None
            # A previous world is there: move it aside, move the new one in, then delete the old one.
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, trash / out_dir.name)
            os.rename(built, out_dir)
            shutil.rmtree(trash)
    finally:
        # Still there only if it could not be moved into place.
        shutil.rmtree(built, ignore_errors=True)
    return out_dir


def ensure_synth_world(cache_root: Path | str | None = None, config: SynthConfig = DEFAULT_CONFIG) -> Path:
    """The folder of the synthetic world of ``config``, ``<cache_root>/synth-<fingerprint>``, generated on first use.

    ``cache_root`` defaults to ``$CIR_BENCH_CACHE``, else ``~/.cache/cir-bench``. Processes racing to create the same
    world each build their own copy; the first rename wins and the others discard theirs.
    """
    if cache_root is None:
        cache_root = default_cache_root()
    cache_root = Path(cache_root).expanduser()
    world_dir = cache_root / f"synth-{config.fingerprint()}"
    if _is_world_of(world_dir, config):
        return world_dir
    # Worlds only ever appear there complete (by rename), so anything else is damage, not a build in progress.
    if world_dir.exists() and (not world_dir.is_dir() or any(world_dir.iterdir())):
        raise BenchError(
            f"{world_dir}: exists but is not the complete synthetic world {config.fingerprint()}; delete it"
        )
    cache_root.mkdir(parents=True, exist_ok=True)
    built = _build_beside(world_dir, config)
    try:
        os.rename(built, world_dir)
    except OSError as exc:
        shutil.rmtree(built, ignore_errors=True)
        # Losing a race to another process is fine: its copy is the same world.
        if not _is_world_of(world_dir, config):
            raise BenchError(f"{world_dir}: cannot create the synthetic world there ({exc.strerror})") from None
    return world_dir


def read_synth_manifest(root: Path | str) -> dict | None:
    """The manifest of the synthetic world at ``root``, or None if ``root`` holds none."""
    try:
        manifest = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME else None


def _is_world_of(root: Path, config: SynthConfig) -> bool:
    manifest = read_synth_manifest(root)
    return manifest is not None and manifest.get("fingerprint") == config.fingerprint()


def _build_beside(destination: Path, config: SynthConfig) -> Path:
    """Build the world in a new hidden folder next to ``destination`` (same file system, so renaming is atomic)."""
    built = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        # mkdtemp makes the folder private; the world is ordinary shared data.
        built.chmod(0o755)
        _write_world(built, build_world(config), config)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return built


def _write_world(root: Path, world: World, config: SynthConfig) -> None:
    for relative, text in world.files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for folder in sorted({str(Path(relative).parent) for relative in world.images}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for relative, scene in world.images.items():
        (root / relative).write_bytes(render_png(scene, config.image_size, config.supersample))
    # Last, so that a manifest marks a complete world.
    (root / "manifest.json").write_text(json.dumps(world.manifest, indent=2) + "\n", encoding="utf-8")
