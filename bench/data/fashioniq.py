"""FashionIQ in its official layout: per-category caption triplets, image-split galleries and an images folder.

Layout under the data root::

    captions/cap.<category>.<split>.json      [{"candidate": ASIN, "target": ASIN, "captions": [c1, c2]}, ...]
    image_splits/split.<category>.<split>.json [ASIN, ...]   (the gallery of that category and split)
    images/<ASIN>.png or images/<ASIN>.jpg

Test records have no ``target``. Images are only located here, never opened.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from bench.data.base import (
    CIRSplit,
    Query,
    describe_value,
    pick_text,
    read_annotation_json,
    require_data_root,
    require_field,
    require_image_name,
    require_records,
)
from bench.errors import BenchError

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
FASHIONIQ_LAYOUT = (
    "captions/cap.<category>.<split>.json, image_splits/split.<category>.<split>.json and images/<ASIN>.png|.jpg"
)
# Both conventions exist among FashionIQ downloads; when both files exist the first listed wins.
IMAGE_SUFFIXES = (".png", ".jpg")
CAPTION_PUNCTUATION = ".?, "


def fashioniq_text_forms(captions: Sequence[str]) -> tuple[str, str, str, str]:
    """The four texts of a FashionIQ caption pair (CLIP4Cir's composition), the evaluation text first.

    Each caption is stripped of ``".?, "`` at both ends; ``C`` below is the stripped caption ``capitalize()``-d
    (which also lowercases the rest of it): ``"C1 and c2"`` (evaluation), ``"C2 and c1"``, ``"C1"``, ``"C2"``.
    Training draws one of the four uniformly (see ``CIRSplit.query_text``).
    """
    if len(captions) != 2:
        raise BenchError(f"FashionIQ text needs exactly 2 captions, got {len(captions)}")
    first, second = (caption.strip(CAPTION_PUNCTUATION) for caption in captions)
    return (
        f"{first.capitalize()} and {second}",
        f"{second.capitalize()} and {first}",
        first.capitalize(),
        second.capitalize(),
    )


def fashioniq_text(captions: Sequence[str], rng: random.Random | None = None) -> str:
    """The evaluation text of a caption pair, or with ``rng`` a training text drawn uniformly from the four forms."""
    return pick_text(fashioniq_text_forms(captions), rng)


def fashioniq_annotation_paths(root: Path, split: str, category: str) -> tuple[Path, Path]:
    """The caption file and the image-split (gallery) file of ``category``/``split`` under ``root``."""
    return (
        root / "captions" / f"cap.{category}.{split}.json",
        root / "image_splits" / f"split.{category}.{split}.json",
    )


def require_fashioniq_root(root: Path | str) -> Path:
    """``root`` as a Path, after checking it has FashionIQ's ``captions/`` and ``image_splits/`` folders."""
    return require_data_root(root, "FashionIQ", ("captions", "image_splits"), FASHIONIQ_LAYOUT)


def load_fashioniq(root: Path | str, split: str, category: str) -> CIRSplit:
    """Load FashionIQ ``category`` (dress, shirt, toptee) of ``split`` (train, val, test) from ``root``.

    The gallery is the category's image-split list in file order; the reference stays in it. Query targets are None
    on the test split. Every gallery, reference and target name gets a path: ``images/<name>.png`` if present, else
    ``images/<name>.jpg`` if present, else the (missing) ``.png`` path so a later load names the missing file.
    """
    if split not in FASHIONIQ_SPLITS:
        raise BenchError(f"unknown FashionIQ split {split!r} (valid: {', '.join(FASHIONIQ_SPLITS)})")
    if category not in FASHIONIQ_CATEGORIES:
        raise BenchError(f"unknown FashionIQ category {category!r} (valid: {', '.join(FASHIONIQ_CATEGORIES)})")
    root = require_fashioniq_root(root)
    captions_path, gallery_path = fashioniq_annotation_paths(root, split, category)
    queries = _read_queries(captions_path, category, target_required=split != "test")
    gallery = _read_gallery(gallery_path)

    image_dir = root / "images"
    found = _list_images(image_dir)
    names = dict.fromkeys(gallery)
    for query in queries:
        names[query.reference] = None
        if query.target is not None:
            names[query.target] = None
    image_paths = {name: found.get(name) or image_dir / f"{name}{IMAGE_SUFFIXES[0]}" for name in names}
    return CIRSplit(
        dataset="fashioniq",
        split=split,
        subset=category,
        queries=queries,
        gallery_names=gallery,
        image_paths=image_paths,
        text_forms=fashioniq_text_forms,
    )


def _read_queries(path: Path, category: str, target_required: bool) -> tuple[Query, ...]:
    queries = []
    for index, record in enumerate(require_records(path, read_annotation_json(path))):
        where = f"{path}: record {index}"
        reference = require_image_name(require_field(record, "candidate", where), "candidate", where)
        if target_required:
            target = require_image_name(require_field(record, "target", where), "target", where)
        else:
            target = record.get("target")
            if target is not None:
                target = require_image_name(target, "target", where)
        captions = require_field(record, "captions", where)
        if not (isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)):
            raise BenchError(f"{where}: 'captions' must be a list of 2 strings, got {describe_value(captions)}")
        queries.append(Query(reference=reference, captions=tuple(captions), target=target, category=category))
    return tuple(queries)


def _read_gallery(path: Path) -> tuple[str, ...]:
    names = read_annotation_json(path)
    if not isinstance(names, list):
        raise BenchError(f"{path}: expected a JSON list of image names, got {type(names).__name__}")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise BenchError(f"{path}: entry {index} is not an image name, got {describe_value(name)}")
        # A duplicate would occupy two gallery slots and make recall depend on which slot is kept.
        if name in seen:
            raise BenchError(f"{path}: image {name!r} appears twice (entries {seen[name]} and {index})")
        seen[name] = index
    return tuple(names)


def _list_images(image_dir: Path) -> dict[str, Path]:
    """Image name -> file for the images folder, listed once (stat-ing tens of thousands of names is slow)."""
    by_suffix: dict[str, dict[str, Path]] = {suffix: {} for suffix in IMAGE_SUFFIXES}
    try:
        with os.scandir(image_dir) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in by_suffix and entry.is_file():
                    by_suffix[suffix.lower()][stem] = Path(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        # Annotations can be inspected without images; `bench data check` reports the missing folder.
        return {}
    found: dict[str, Path] = {}
    for suffix in reversed(IMAGE_SUFFIXES):
        found.update(by_suffix[suffix])
    return found
