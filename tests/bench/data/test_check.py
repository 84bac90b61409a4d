"""``bench data check``: every referenced image exists and decodes; absent splits are skipped; the report table."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from bench.data.check import check_dataset, format_check_report
from bench.errors import BenchError

VAL_GALLERY = {"dress": 3817, "shirt": 6346, "toptee": 5373}
VAL_TRIPLETS = {"dress": 2017, "shirt": 2038, "toptee": 1961}


def test_real_fashioniq_val_checks_and_skips_absent_splits(fashioniq_val_root: Path):
    started = time.perf_counter()
    rows = check_dataset("fashioniq", fashioniq_val_root)
    elapsed = time.perf_counter() - started
    assert [(row["category"], row["split"]) for row in rows] == [
        (category, split) for category in ("dress", "shirt", "toptee") for split in ("train", "val", "test")
    ]
    checked = [row for row in rows if "skipped" not in row]
    assert [row["category"] for row in checked] == ["dress", "shirt", "toptee"]
    for row in checked:
        assert row["dataset"] == "fashioniq"
        assert row["queries"] == VAL_TRIPLETS[row["category"]]
        assert row["gallery"] == VAL_GALLERY[row["category"]]
        # Every val reference and target is in its gallery, so the gallery is all there is to check.
        assert row["images_checked"] == VAL_GALLERY[row["category"]]
    skipped = {(row["category"], row["split"]): row["skipped"] for row in rows if "skipped" in row}
    assert skipped[("dress", "train")] == "captions/cap.dress.train.json is missing"
    assert elapsed < 15, f"checking ~15k tiny images took {elapsed:.1f} s"


def test_real_cirr_val_checks_and_skips_train_and_test1(cirr_val_root: Path):
    rows = check_dataset("cirr", cirr_val_root)
    assert rows == [
        {"dataset": "cirr", "split": "train", "category": None, "skipped": "captions/cap.rc2.train.json is missing"},
        {"dataset": "cirr", "split": "val", "category": None, "queries": 4181, "gallery": 2297, "images_checked": 2297},
        {"dataset": "cirr", "split": "test1", "category": None, "skipped": "captions/cap.rc2.test1.json is missing"},
    ]


def test_missing_image_names_path_and_image(tiny_fashioniq_root: Path):
    missing = tiny_fashioniq_root / "images" / "A3.png"
    missing.unlink()
    with pytest.raises(BenchError, match=rf"^{missing}: image file is missing \(image 'A3' of fashioniq/dress/val\)$"):
        check_dataset("fashioniq", tiny_fashioniq_root)


def test_undecodable_image_names_its_path(tiny_cirr_root: Path):
    garbage = tiny_cirr_root / "img_raw" / "dev" / "dev-0-2-img0.png"
    garbage.write_bytes(b"\x00garbage, not an image" * 10)
    with pytest.raises(BenchError, match=rf"^{garbage}: image does not decode"):
        check_dataset("cirr", tiny_cirr_root)


def test_truncated_png_is_caught(tiny_fashioniq_root: Path):
    truncated = tiny_fashioniq_root / "images" / "A5.png"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(BenchError, match=rf"^{truncated}: image does not decode"):
        check_dataset("fashioniq", tiny_fashioniq_root)


def test_missing_cirr_member_is_caught(tiny_cirr_root: Path):
    # dev-0-2-img0 is only a member of the image sets here, never a reference or target.
    member = tiny_cirr_root / "img_raw" / "dev" / "dev-0-2-img0.png"
    member.unlink()
    with pytest.raises(BenchError, match=rf"{member}: image file is missing \(image 'dev-0-2-img0' of cirr/val\)"):
        check_dataset("cirr", tiny_cirr_root)


def test_jpg_images_pass(tiny_fashioniq_root: Path):
    images = tiny_fashioniq_root / "images"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="JPEG")
    for png in images.glob("*.png"):
        png.unlink()
        png.with_suffix(".jpg").write_bytes(buffer.getvalue())
    [row] = [row for row in check_dataset("fashioniq", tiny_fashioniq_root) if "skipped" not in row]
    assert (row["category"], row["split"], row["queries"], row["gallery"], row["images_checked"]) == (
        "dress",
        "val",
        3,
        5,
        5,
    )


def test_bad_annotation_is_reported(tiny_cirr_root: Path, edit_json):
    edit_json(tiny_cirr_root / "captions" / "cap.rc2.val.json", lambda records: records[1].update(pairid=7))
    with pytest.raises(BenchError, match=r"cap\.rc2\.val\.json: pairid 7 appears twice"):
        check_dataset("cirr", tiny_cirr_root)


def test_root_without_any_caption_file_is_an_error(tmp_path: Path):
    for folder in ("captions", "image_splits", "img_raw"):
        (tmp_path / folder).mkdir()
    with pytest.raises(BenchError, match=rf"{tmp_path}: no cirr caption files found under {tmp_path / 'captions'}"):
        check_dataset("cirr", tmp_path)


def test_missing_image_folder_says_what_is_expected(tiny_fashioniq_root: Path):
    images = tiny_fashioniq_root / "images"
    images.rename(tiny_fashioniq_root / "pictures")
    with pytest.raises(
        BenchError, match=r"the image folder images/ is missing \(expected images/<ASIN>\.png or \.jpg\)"
    ):
        check_dataset("fashioniq", tiny_fashioniq_root)


def test_root_not_in_the_layout(tmp_path: Path):
    with pytest.raises(BenchError, match=r"not a CIRR data root, it has no captions/ folder"):
        check_dataset("cirr", tmp_path)


def test_unknown_dataset_names_the_valid_ones(tmp_path: Path):
    with pytest.raises(BenchError, match=r"--dataset: unknown dataset 'cirr2' .*\(valid: fashioniq, cirr\)"):
        check_dataset("cirr2", tmp_path)


def test_report_is_an_aligned_table():
    rows = [
        {"dataset": "cirr", "split": "train", "category": None, "skipped": "captions/cap.rc2.train.json is missing"},
        {"dataset": "cirr", "split": "val", "category": None, "queries": 4181, "gallery": 2297, "images_checked": 2297},
        {"dataset": "cirr", "split": "test1", "category": None, "queries": 4148, "gallery": 2315, "images_checked": 17},
    ]
    lines = format_check_report(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["dataset", "category", "split", "queries", "gallery", "images", "checked", "status"]
    assert "skipped: captions/cap.rc2.train.json is missing" in lines[1]
    assert lines[2].split() == ["cirr", "-", "val", "4181", "2297", "2297", "ok"]
    # Columns line up: each row's status starts where the header's does, numbers are right-aligned.
    status_column = lines[0].index("status")
    assert all(line[status_column:].split()[0] in {"status", "ok", "skipped:"} for line in lines)
    assert lines[2].index(" ok") == lines[3].index(" ok")
