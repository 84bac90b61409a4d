"""CIRR loader: published counts on the real annotation files, members, image paths, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench.data.cirr import CIRR_SPLITS, cirr_text_forms, load_cirr
from bench.errors import BenchError


def test_constants():
    assert CIRR_SPLITS == ("train", "val", "test1")


def test_real_val_matches_published_counts(cirr_root: Path):
    split = load_cirr(cirr_root, "val")
    assert (split.dataset, split.split, split.subset, split.name) == ("cirr", "val", None, "cirr/val")
    assert len(split.queries) == 4181
    assert len(split.gallery_names) == 2297
    assert len({q.pairid for q in split.queries}) == 4181
    assert all(q.target is not None and len(q.captions) == 1 for q in split.queries)


def test_real_val_members_are_six_and_include_the_reference(cirr_root: Path):
    for query in load_cirr(cirr_root, "val").queries:
        assert len(query.members) == 6
        assert query.reference in query.members


def test_real_val_gallery_is_the_split_file_in_order(cirr_root: Path):
    relative_paths = json.loads((cirr_root / "image_splits" / "split.rc2.val.json").read_text())
    split = load_cirr(cirr_root, "val")
    assert split.gallery_names == tuple(relative_paths)
    name = split.gallery_names[0]
    assert split.image_paths[name] == cirr_root / "img_raw" / "dev" / f"{name}.png"
    assert all(path.is_file() for path in split.image_paths.values())


def test_real_val_first_record(cirr_root: Path):
    first = load_cirr(cirr_root, "val").queries[0]
    assert (first.pairid, first.reference, first.target) == (12060, "dev-244-0-img0", "dev-1028-1-img1")
    assert first.captions == ("show three bottles of soft drink",)
    assert first.members[4] == "dev-244-0-img0"


def test_real_test1_counts_and_no_targets(cirr_root: Path):
    split = load_cirr(cirr_root, "test1")
    assert len(split.queries) == 4148
    assert len(split.gallery_names) == 2315
    assert all(q.target is None and q.reference in q.members for q in split.queries)


def test_real_train_captions_absent_gives_clear_error(cirr_root: Path):
    with pytest.raises(BenchError, match=r"captions/cap\.rc2\.train\.json: annotation file is missing"):
        load_cirr(cirr_root, "train")


def test_text_is_the_stripped_caption_for_eval_and_training(tiny_cirr_root: Path):
    split = load_cirr(tiny_cirr_root, "val")
    query = split.queries[0]
    assert query.captions == (" add a dog ",)
    assert split.query_text(query) == "add a dog"
    assert split.query_text(query, random.Random(0)) == "add a dog"
    assert cirr_text_forms(["  two cats\n"]) == ("two cats",)


def test_loader_does_not_open_images(tiny_cirr_root: Path):
    (tiny_cirr_root / "img_raw" / "dev" / "dev-0-0-img0.png").unlink()
    assert len(load_cirr(tiny_cirr_root, "val").queries) == 2


def test_unknown_split_names_the_valid_ones(tiny_cirr_root: Path):
    with pytest.raises(BenchError, match=r"unknown CIRR split 'test' \(valid: train, val, test1\)"):
        load_cirr(tiny_cirr_root, "test")


def test_duplicate_pairid_names_file_and_pairid(tiny_cirr_root: Path, edit_json):
    edit_json(tiny_cirr_root / "captions" / "cap.rc2.val.json", lambda records: records[1].update(pairid=7))
    with pytest.raises(BenchError, match=r"cap\.rc2\.val\.json: pairid 7 appears twice \(records 0 and 1\)"):
        load_cirr(tiny_cirr_root, "val")


def test_reference_must_be_among_members(tiny_cirr_root: Path, edit_json):
    def drop_reference(records):
        records[1]["img_set"]["members"] = [*records[1]["img_set"]["members"][:5], "dev-1-0-img0"]

    edit_json(tiny_cirr_root / "captions" / "cap.rc2.val.json", drop_reference)
    with pytest.raises(
        BenchError, match=r"cap\.rc2\.val\.json: record 1 \(pairid 9\): reference 'dev-0-2-img1' is not among img_set"
    ):
        load_cirr(tiny_cirr_root, "val")


@pytest.mark.parametrize("members", [["dev-0-0-img0"] * 5, "dev-0-0-img0", [*["dev-0-0-img0"] * 5, 3]])
def test_members_must_be_six_names(tiny_cirr_root: Path, edit_json, members):
    edit_json(
        tiny_cirr_root / "captions" / "cap.rc2.val.json", lambda records: records[0]["img_set"].update(members=members)
    )
    with pytest.raises(BenchError, match=r"record 0 \(pairid 7\): 'img_set\.members' must be a list of 6 image names"):
        load_cirr(tiny_cirr_root, "val")


@pytest.mark.parametrize("field", ["pairid", "reference", "target_hard", "caption", "img_set"])
def test_record_missing_a_field(tiny_cirr_root: Path, edit_json, field: str):
    edit_json(tiny_cirr_root / "captions" / "cap.rc2.val.json", lambda records: records[1].pop(field))
    with pytest.raises(BenchError, match=rf"cap\.rc2\.val\.json: record 1 .*has no '{field}'"):
        load_cirr(tiny_cirr_root, "val")


def test_pairid_must_be_an_integer(tiny_cirr_root: Path, edit_json):
    edit_json(tiny_cirr_root / "captions" / "cap.rc2.val.json", lambda records: records[0].update(pairid="7"))
    with pytest.raises(BenchError, match=r"record 0: 'pairid' must be an integer, got str"):
        load_cirr(tiny_cirr_root, "val")


def test_names_must_be_in_the_split_file(tiny_cirr_root: Path, edit_json):
    edit_json(tiny_cirr_root / "image_splits" / "split.rc2.val.json", lambda paths: paths.pop("dev-0-1-img1"))
    with pytest.raises(
        BenchError, match=r"record 0 \(pairid 7\): target_hard image 'dev-0-1-img1' is not in split\.rc2\.val\.json"
    ):
        load_cirr(tiny_cirr_root, "val")


def test_malformed_json_names_file_line_and_column(tiny_cirr_root: Path):
    (tiny_cirr_root / "image_splits" / "split.rc2.val.json").write_text('{"a": "./dev/a.png",}')
    with pytest.raises(BenchError, match=r"split\.rc2\.val\.json: malformed JSON at line 1 column 21"):
        load_cirr(tiny_cirr_root, "val")


def test_split_file_must_map_names_to_paths(tiny_cirr_root: Path):
    (tiny_cirr_root / "image_splits" / "split.rc2.val.json").write_text('["dev-0-0-img0"]')
    with pytest.raises(
        BenchError, match=r"split\.rc2\.val\.json: expected a JSON object of image name -> relative path"
    ):
        load_cirr(tiny_cirr_root, "val")


def test_root_without_image_splits_folder_says_what_is_expected(tiny_cirr_root: Path):
    (tiny_cirr_root / "image_splits" / "split.rc2.val.json").unlink()
    (tiny_cirr_root / "image_splits").rmdir()
    with pytest.raises(BenchError, match=r"not a CIRR data root, it has no image_splits/ folder \(expected captions/"):
        load_cirr(tiny_cirr_root, "val")
