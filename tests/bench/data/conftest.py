"""Data roots for the loader and check tests.

The ``*_root`` session fixtures link the REAL annotation folders (never copied into the repo) and add placeholder
images for the val splits; the ``tiny_*_root`` fixtures write a small, valid, writable root per test for the
bad-input tests to damage.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from PIL import Image

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def placeholder_png() -> bytes:
    """An 8x8 grey PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def link_images(paths: Iterable[Path], data: bytes) -> None:
    """Give every path the same image bytes: written once, hard-linked after (tens of thousands take well under 1 s).

    The paths share one file, so these images are read-only for tests: damaging one would damage all.
    """
    source = None
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            path.write_bytes(data)
            source = path
        else:
            os.link(source, path)


def write_images(paths: Iterable[Path], data: bytes) -> None:
    """Write ``data`` to every path as a file of its own, so a test may damage one image."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as JSON at ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def load_json(path: Path) -> object:
    """Parse the JSON file ``path``."""
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def fashioniq_root(real_annotations: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FashionIQ root: the real ``captions/`` and ``image_splits/`` (symlinked), PNGs for the val split only."""
    real = real_annotations / "fashioniq"
    root = tmp_path_factory.mktemp("fashioniq")
    for folder in ("captions", "image_splits"):
        (root / folder).symlink_to(real / folder, target_is_directory=True)
    names: set[str] = set()
    for category in FASHIONIQ_CATEGORIES:
        names.update(load_json(real / "image_splits" / f"split.{category}.val.json"))
        for record in load_json(real / "captions" / f"cap.{category}.val.json"):
            names.update((record["candidate"], record["target"]))
    link_images((root / "images" / f"{name}.png" for name in sorted(names)), placeholder_png())
    return root


@pytest.fixture(scope="session")
def cirr_root(real_annotations: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIRR root: the real ``captions/`` and ``image_splits/`` (symlinked), PNGs for the val split only."""
    real = real_annotations / "cirr"
    root = tmp_path_factory.mktemp("cirr")
    for folder in ("captions", "image_splits"):
        (root / folder).symlink_to(real / folder, target_is_directory=True)
    relative_paths = load_json(real / "image_splits" / "split.rc2.val.json")
    link_images((root / "img_raw" / relative for relative in relative_paths.values()), placeholder_png())
    return root


@pytest.fixture(scope="session")
def fashioniq_val_root(fashioniq_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``fashioniq_root`` but with only the val annotation files, so every split it has is fully imaged."""
    root = tmp_path_factory.mktemp("fashioniq_val")
    for category in FASHIONIQ_CATEGORIES:
        for folder, name in (("captions", f"cap.{category}.val.json"), ("image_splits", f"split.{category}.val.json")):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / name).symlink_to(fashioniq_root / folder / name)
    (root / "images").symlink_to(fashioniq_root / "images", target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def cirr_val_root(cirr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``cirr_root`` but with only the val annotation files, so every split it has is fully imaged."""
    root = tmp_path_factory.mktemp("cirr_val")
    for folder, name in (("captions", "cap.rc2.val.json"), ("image_splits", "split.rc2.val.json")):
        (root / folder).mkdir()
        (root / folder / name).symlink_to(cirr_root / folder / name)
    (root / "img_raw").symlink_to(cirr_root / "img_raw", target_is_directory=True)
    return root


TINY_FASHIONIQ_RECORDS = [
    {"candidate": "A1", "target": "A2", "captions": ["is red", "has long sleeves"]},
    {"candidate": "A2", "target": "A3", "captions": [" Is Darker.", "no collar?"]},
    {"candidate": "A4", "target": "A1", "captions": ["is shorter", "more casual"]},
]
TINY_FASHIONIQ_GALLERY = ["A1", "A2", "A3", "A4", "A5"]


@pytest.fixture
def tiny_fashioniq_root(tmp_path: Path) -> Path:
    """A writable FashionIQ root with dress val only: 3 triplets, a 5-image gallery, all images as PNG."""
    root = tmp_path / "fashioniq"
    write_json(root / "captions" / "cap.dress.val.json", TINY_FASHIONIQ_RECORDS)
    write_json(root / "image_splits" / "split.dress.val.json", TINY_FASHIONIQ_GALLERY)
    write_images((root / "images" / f"{name}.png" for name in TINY_FASHIONIQ_GALLERY), placeholder_png())
    return root


TINY_CIRR_MEMBERS = ["dev-0-0-img0", "dev-0-0-img1", "dev-0-1-img0", "dev-0-1-img1", "dev-0-2-img0", "dev-0-2-img1"]
TINY_CIRR_RECORDS = [
    {
        "pairid": 7,
        "reference": "dev-0-0-img0",
        "target_hard": "dev-0-1-img1",
        "target_soft": {"dev-0-1-img1": 1.0},
        "caption": " add a dog ",
        "img_set": {"id": 1, "members": TINY_CIRR_MEMBERS, "reference_rank": 3, "target_rank": 1},
    },
    {
        "pairid": 9,
        "reference": "dev-0-2-img1",
        "target_hard": "dev-0-0-img1",
        "target_soft": {"dev-0-0-img1": 1.0},
        "caption": "make it night",
        "img_set": {"id": 1, "members": TINY_CIRR_MEMBERS, "reference_rank": 0, "target_rank": 2},
    },
]
TINY_CIRR_GALLERY = [*TINY_CIRR_MEMBERS, "dev-1-0-img0"]


@pytest.fixture
def tiny_cirr_root(tmp_path: Path) -> Path:
    """A writable CIRR root with val only: 2 pairs over one 6-image set, a 7-image gallery, all images as PNG."""
    root = tmp_path / "cirr"
    write_json(root / "captions" / "cap.rc2.val.json", TINY_CIRR_RECORDS)
    write_json(root / "image_splits" / "split.rc2.val.json", {name: f"./dev/{name}.png" for name in TINY_CIRR_GALLERY})
    write_images((root / "img_raw" / "dev" / f"{name}.png" for name in TINY_CIRR_GALLERY), placeholder_png())
    return root


@pytest.fixture
def edit_json():
    """``edit_json(path, edit)``: parse ``path``, let ``edit`` change the data in place, write it back."""

    def edit_file(path: Path, edit) -> None:
        data = load_json(path)
        edit(data)
        write_json(path, data)

    return edit_file
