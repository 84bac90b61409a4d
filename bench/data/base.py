"""The dataset-independent view of a CIR split: query triplets plus a gallery of named images."""

from __future__ import annotations

import json
import random
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError


@dataclass(frozen=True)
class Query:
    """One CIR query: a reference image, its modification caption(s) and the target (None on test splits).

    ``captions`` holds the raw annotation captions (FashionIQ: two, CIRR: one); the text a model sees is built
    from them by the split's ``query_text``. ``pairid`` and ``members`` are CIRR's (``members``: the six
    ``img_set.members``, the reference among them); ``category`` is FashionIQ's.
    """

    reference: str
    captions: tuple[str, ...]
    target: str | None
    pairid: int | None = None
    members: tuple[str, ...] | None = None
    category: str | None = None


def pick_text(forms: Sequence[str], rng: random.Random | None = None) -> str:
    """The evaluation text ``forms[0]``, or with ``rng`` one form drawn uniformly by a single ``rng.random()``."""
    return forms[0] if rng is None else forms[int(rng.random() * len(forms))]


@dataclass(frozen=True)
class CIRSplit:
    """A loaded split: queries, gallery names, where each image lives, and how query text is composed.

    ``text_forms(captions)`` lists every text a query can be shown, the deterministic evaluation text first;
    training draws one uniformly (FashionIQ's four caption compositions; CIRR's single caption).
    """

    dataset: str
    split: str
    subset: str | None
    queries: tuple[Query, ...]
    gallery_names: tuple[str, ...]
    image_paths: dict[str, Path]
    text_forms: Callable[[Sequence[str]], tuple[str, ...]]

    @property
    def name(self) -> str:
        """A short label such as ``fashioniq/dress/val`` or ``cirr/val``."""
        parts = [self.dataset, self.subset, self.split]
        return "/".join(p for p in parts if p)

    def query_text(self, query: Query, rng: random.Random | None = None) -> str:
        """The text of ``query``: deterministic evaluation text, or a random training composition given ``rng``."""
        return pick_text(self.text_forms(query.captions), rng)

    def training_texts(self, query: Query) -> tuple[str, ...]:
        """Every text ``query`` can be shown in training (what a frozen text tower's feature cache must cover)."""
        return self.text_forms(query.captions)

    def image_path(self, name: str) -> Path:
        """The file of image ``name``."""
        try:
            return self.image_paths[name]
        except KeyError:
            raise BenchError(f"{self.name}: image {name!r} is not in this split's image list") from None

    def load_image(self, name: str):
        """Open image ``name`` as an RGB PIL image, with a one-line error if it is missing or does not decode."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(name)
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise BenchError(f"{path}: image file is missing (image {name!r} of {self.name})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise BenchError(f"{path}: image does not decode ({exc.__class__.__name__})") from None


# Shared by the FashionIQ and CIRR loaders, so both report bad annotation files in the same words.


def read_annotation_json(path: Path) -> object:
    """Parse the annotation file ``path``; a missing, unreadable or malformed file is a one-line ``BenchError``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{path}: annotation file is missing") from None
    except OSError as exc:
        raise BenchError(f"{path}: annotation file cannot be read ({exc.strerror})") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path}: annotation file is not UTF-8 JSON") from None


def require_data_root(root: Path | str, dataset: str, folders: Sequence[str], layout: str) -> Path:
    """``root`` as a Path, after checking it is a folder holding ``folders``; ``layout`` describes what is expected."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"{root}: {dataset} data root is not a folder (expected {layout})")
    for folder in folders:
        if not (root / folder).is_dir():
            raise BenchError(f"{root}: not a {dataset} data root, it has no {folder}/ folder (expected {layout})")
    return root


def describe_value(value: object) -> str:
    """A short one-line rendering of a bad annotation value for error messages."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def require_field(record: dict, field: str, where: str) -> object:
    """``record[field]``; its absence is a ``BenchError`` starting with ``where`` (file and record)."""
    if field not in record:
        raise BenchError(f"{where} has no {field!r}")
    return record[field]


def require_image_name(value: object, field: str, where: str) -> str:
    """``value`` if it is a usable image name (a non-empty string), else a ``BenchError`` naming ``field``."""
    if not isinstance(value, str) or not value:
        raise BenchError(f"{where}: {field!r} must be an image name (a non-empty string), got {describe_value(value)}")
    return value


def require_records(path: Path, data: object) -> list[dict]:
    """The records of caption file ``path``: ``data`` must be a JSON list of objects."""
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise BenchError(f"{path}: record {index} is not a JSON object (got {describe_value(record)})")
    return data
