"""``bench data check``: load every split of a real dataset root and verify that each image it names exists and decodes.

A split whose caption file is absent is reported as skipped (CIRR's train captions are often missing); the first
real problem (bad annotation, missing or undecodable image) is a one-line ``BenchError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from PIL import Image

from bench.data.base import CIRSplit
from bench.data.cirr import CIRR_SPLITS, cirr_annotation_paths, load_cirr, require_cirr_root
from bench.data.fashioniq import (
    FASHIONIQ_CATEGORIES,
    FASHIONIQ_SPLITS,
    fashioniq_annotation_paths,
    load_fashioniq,
    require_fashioniq_root,
)
from bench.errors import BenchError

CHECKED_DATASETS = ("fashioniq", "cirr")
# The folder each layout keeps its images in, and how its files are named there.
IMAGE_FOLDERS = {
    "fashioniq": ("images", "images/<ASIN>.png or .jpg"),
    "cirr": ("img_raw", "img_raw/<paths of image_splits/split.rc2.<split>.json>"),
}


def check_dataset(dataset: str, root: Path | str) -> list[dict]:
    """Check the ``dataset`` ("fashioniq" or "cirr") root ``root``; one result row per split (and category).

    A checked row is ``{"dataset", "split", "category", "queries", "gallery", "images_checked"}`` (``category`` None
    for CIRR; ``images_checked`` counts the distinct images the split names: gallery, references, targets, members);
    a split without a caption file gives ``{"dataset", "split", "category", "skipped": reason}``. Raises
    ``BenchError`` on the first problem, or when no split has a caption file at all.
    """
    if dataset not in CHECKED_DATASETS:
        raise BenchError(
            f"--dataset: unknown dataset {dataset!r} for data check (valid: {', '.join(CHECKED_DATASETS)})"
        )
    # One (split, category, caption file, loader) per part of the dataset, in report order.
    if dataset == "fashioniq":
        root = require_fashioniq_root(root)
        parts = [
            (
                split,
                category,
                fashioniq_annotation_paths(root, split, category)[0],
                partial(load_fashioniq, root, split, category),
            )
            for category in FASHIONIQ_CATEGORIES
            for split in FASHIONIQ_SPLITS
        ]
    else:
        root = require_cirr_root(root)
        parts = [
            (split, None, cirr_annotation_paths(root, split)[0], partial(load_cirr, root, split))
            for split in CIRR_SPLITS
        ]
    if not any(captions_path.exists() for _, _, captions_path, _ in parts):
        raise BenchError(f"{root}: no {dataset} caption files found under {root / 'captions'}")
    image_folder, image_naming = IMAGE_FOLDERS[dataset]
    if not (root / image_folder).is_dir():
        raise BenchError(f"{root}: the image folder {image_folder}/ is missing (expected {image_naming})")

    rows = []
    # FashionIQ splits of one category share images; each file is verified once per check.
    verified: set[Path] = set()
    for split, category, captions_path, load in parts:
        if not captions_path.exists():
            reason = f"{captions_path.relative_to(root)} is missing"
            rows.append({"dataset": dataset, "split": split, "category": category, "skipped": reason})
            continue
        cir_split = load()
        names = _referenced_images(cir_split)
        for name in names:
            path = cir_split.image_paths[name]
            if path not in verified:
                _verify_image(path, name, cir_split.name)
                verified.add(path)
        rows.append(
            {
                "dataset": dataset,
                "split": split,
                "category": category,
                "queries": len(cir_split.queries),
                "gallery": len(cir_split.gallery_names),
                "images_checked": len(names),
            }
        )
    return rows


def format_check_report(rows: Iterable[dict]) -> str:
    """The rows of :func:`check_dataset` as an aligned text table, one line per split (skipped ones say why)."""
    header = ("dataset", "category", "split", "queries", "gallery", "images checked", "status")
    lines = [header]
    for row in rows:
        skipped = "skipped" in row
        counts = ("", "", "") if skipped else (str(row["queries"]), str(row["gallery"]), str(row["images_checked"]))
        status = f"skipped: {row['skipped']}" if skipped else "ok"
        lines.append((row["dataset"], row["category"] or "-", row["split"], *counts, status))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    numeric = {3, 4, 5}
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def _referenced_images(cir_split: CIRSplit) -> tuple[str, ...]:
    """Every image the split names, once each, gallery first."""
    names = dict.fromkeys(cir_split.gallery_names)
    for query in cir_split.queries:
        names[query.reference] = None
        if query.target is not None:
            names[query.target] = None
        for member in query.members or ():
            names[member] = None
    return tuple(names)


def _verify_image(path: Path, name: str, split_name: str) -> None:
    # verify() checks the file's structure (PNG chunk CRCs included) without decoding all pixels, which keeps a
    # check of tens of thousands of images fast; damaged pixel data past the header can still slip through.
    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        raise BenchError(f"{path}: image file is missing (image {name!r} of {split_name})") from None
    except PermissionError:
        raise BenchError(
            f"{path}: image file cannot be read, permission denied (image {name!r} of {split_name})"
        ) from None
    except (
        Exception
    ) as exc:  # PIL signals a damaged file with many exception types (OSError, SyntaxError, struct.error...)
        raise BenchError(
            f"{path}: image does not decode (image {name!r} of {split_name}: {type(exc).__name__})"
        ) from None
