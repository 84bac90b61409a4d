"""CIRR in its official layout: caption pairs with six-image sets, and name -> relative-path image splits.

Layout under the data root::

    captions/cap.rc2.<split>.json      [{"pairid", "reference", "target_hard", "caption", "img_set": {"members"}}, ...]
    image_splits/split.rc2.<split>.json {name: "./<split folder>/.../<name>.png", ...}   (the gallery, in key order)
    img_raw/<split folder>/...          the images, at the split file's relative paths

test1 records have no ``target_hard``. Images are only located here, never opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.data.base import (
    CIRSplit,
    Query,
    describe_value,
    read_annotation_json,
    require_data_root,
    require_field,
    require_image_name,
    require_records,
)
from bench.errors import BenchError

CIRR_SPLITS = ("train", "val", "test1")
CIRR_LAYOUT = "captions/cap.rc2.<split>.json, image_splits/split.rc2.<split>.json and img_raw/"
MEMBERS_PER_SET = 6


def cirr_text_forms(captions: Sequence[str]) -> tuple[str]:
    """The one text of a CIRR query: its caption, stripped (CIRR composes nothing at training time either)."""
    if len(captions) != 1:
        raise BenchError(f"CIRR text needs exactly 1 caption, got {len(captions)}")
    return (captions[0].strip(),)


def cirr_annotation_paths(root: Path, split: str) -> tuple[Path, Path]:
    """The caption file and the image-split (gallery) file of ``split`` under ``root``."""
    return root / "captions" / f"cap.rc2.{split}.json", root / "image_splits" / f"split.rc2.{split}.json"


def require_cirr_root(root: Path | str) -> Path:
    """``root`` as a Path, after checking it has CIRR's ``captions/`` and ``image_splits/`` folders."""
    return require_data_root(root, "CIRR", ("captions", "image_splits"), CIRR_LAYOUT)


def load_cirr(root: Path | str, split: str) -> CIRSplit:
    """Load CIRR ``split`` (train, val, test1) from ``root``.

    The gallery is every key of the split file, in file order; images live at ``img_raw/<relative path>``. Query
    targets are None on test1. Each query's six ``img_set.members`` are kept (the reference among them). Raises a
    ``BenchError`` for a repeated pairid, a reference missing from its members, or a name the split file lacks.
    """
    if split not in CIRR_SPLITS:
        raise BenchError(f"unknown CIRR split {split!r} (valid: {', '.join(CIRR_SPLITS)})")
    root = require_cirr_root(root)
    captions_path, gallery_path = cirr_annotation_paths(root, split)
    records = require_records(captions_path, read_annotation_json(captions_path))
    image_paths = _read_image_paths(gallery_path, root / "img_raw")

    queries = []
    first_record_of_pairid: dict[int, int] = {}
    for index, record in enumerate(records):
        where = f"{captions_path}: record {index}"
        pairid = require_field(record, "pairid", where)
        # bool is an int subclass, but a true/false pairid is a broken record, not pair 0 or 1.
        if not isinstance(pairid, int) or isinstance(pairid, bool):
            raise BenchError(f"{where}: 'pairid' must be an integer, got {describe_value(pairid)}")
        if pairid in first_record_of_pairid:
            raise BenchError(
                f"{captions_path}: pairid {pairid} appears twice (records {first_record_of_pairid[pairid]} and {index})"
            )
        first_record_of_pairid[pairid] = index
        where = f"{captions_path}: record {index} (pairid {pairid})"

        reference = require_image_name(require_field(record, "reference", where), "reference", where)
        if split == "test1":
            target = None
        else:
            target = require_image_name(require_field(record, "target_hard", where), "target_hard", where)
        caption = require_field(record, "caption", where)
        if not isinstance(caption, str):
            raise BenchError(f"{where}: 'caption' must be a string, got {describe_value(caption)}")
        members = _read_members(require_field(record, "img_set", where), where)
        if reference not in members:
            raise BenchError(f"{where}: reference {reference!r} is not among img_set.members")
        if target is not None and target not in image_paths:
            raise BenchError(f"{where}: target_hard image {target!r} is not in {gallery_path.name}")
        for member in members:  # the reference is one of them
            if member not in image_paths:
                raise BenchError(f"{where}: img_set.members image {member!r} is not in {gallery_path.name}")
        queries.append(Query(reference=reference, captions=(caption,), target=target, pairid=pairid, members=members))
    return CIRSplit(
        dataset="cirr",
        split=split,
        subset=None,
        queries=tuple(queries),
        gallery_names=tuple(image_paths),
        image_paths=image_paths,
        text_forms=cirr_text_forms,
    )


def _read_members(img_set: object, where: str) -> tuple[str, ...]:
    if not isinstance(img_set, dict):
        raise BenchError(f"{where}: 'img_set' must be an object, got {describe_value(img_set)}")
    members = require_field(img_set, "members", f"{where}: 'img_set'")
    if not (
        isinstance(members, list)
        and len(members) == MEMBERS_PER_SET
        and all(isinstance(name, str) and name for name in members)
    ):
        raise BenchError(
            f"{where}: 'img_set.members' must be a list of {MEMBERS_PER_SET} image names, got {describe_value(members)}"
        )
    return tuple(members)


def _read_image_paths(path: Path, image_root: Path) -> dict[str, Path]:
    relative_paths = read_annotation_json(path)
    if not isinstance(relative_paths, dict):
        raise BenchError(
            f"{path}: expected a JSON object of image name -> relative path, got {type(relative_paths).__name__}"
        )
    for name, relative in relative_paths.items():
        if not name or not isinstance(relative, str) or not relative:
            raise BenchError(f"{path}: image {name!r} needs a non-empty relative path, got {describe_value(relative)}")
    return {name: image_root / relative for name, relative in relative_paths.items()}
