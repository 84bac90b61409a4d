"""FashionIQ loader: published counts on the real annotation files, text composition, image lookup, bad input."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.data.fashioniq import FASHIONIQ_CATEGORIES, FASHIONIQ_SPLITS, fashioniq_text, load_fashioniq
from bench.errors import BenchError

PUBLISHED = {
    # category: (train triplets, val triplets, val gallery, test triplets)
    "dress": (5985, 2017, 3817, 2024),
    "shirt": (5988, 2038, 6346, 2038),
    "toptee": (6027, 1961, 5373, 2056),
}


def test_constants():
    assert FASHIONIQ_CATEGORIES == ("dress", "shirt", "toptee")
    assert FASHIONIQ_SPLITS == ("train", "val", "test")


@pytest.mark.parametrize("category", FASHIONIQ_CATEGORIES)
def test_real_val_matches_published_counts(fashioniq_root: Path, category: str):
    split = load_fashioniq(fashioniq_root, "val", category)
    _, val_triplets, val_gallery, _ = PUBLISHED[category]
    assert (split.dataset, split.split, split.subset, split.name) == (
        "fashioniq",
        "val",
        category,
        f"fashioniq/{category}/val",
    )
    assert len(split.queries) == val_triplets
    assert len(split.gallery_names) == val_gallery
    assert all(q.target is not None and q.category == category and len(q.captions) == 2 for q in split.queries)
    # The protocol keeps references in the gallery: the loader must not drop them.
    gallery = set(split.gallery_names)
    assert all(q.reference in gallery and q.target in gallery for q in split.queries)


@pytest.mark.parametrize("category", FASHIONIQ_CATEGORIES)
def test_real_train_and_test_counts(fashioniq_root: Path, category: str):
    train_triplets, _, _, test_triplets = PUBLISHED[category]
    assert len(load_fashioniq(fashioniq_root, "train", category).queries) == train_triplets
    test = load_fashioniq(fashioniq_root, "test", category)
    assert len(test.queries) == test_triplets
    assert all(q.target is None for q in test.queries)


def test_real_val_image_paths_cover_gallery_and_queries(fashioniq_root: Path):
    split = load_fashioniq(fashioniq_root, "val", "shirt")
    needed = set(split.gallery_names) | {q.reference for q in split.queries} | {q.target for q in split.queries}
    assert set(split.image_paths) == needed
    assert all(path == fashioniq_root / "images" / f"{name}.png" for name, path in split.image_paths.items())
    assert all(path.is_file() for path in split.image_paths.values())
    assert split.load_image(split.queries[0].reference).mode == "RGB"


def test_real_first_dress_val_record(fashioniq_root: Path):
    split = load_fashioniq(fashioniq_root, "val", "dress")
    first = split.queries[0]
    assert (first.reference, first.target) == ("B005X4PL1G", "B0084Y8XIU")
    assert first.captions == ("is shiny and silver with shorter sleeves", "fit and flare")
    assert split.query_text(first) == "Is shiny and silver with shorter sleeves and fit and flare"


def test_eval_text_strips_punctuation_and_capitalizes_first_caption_only():
    assert fashioniq_text([" Is DARKER Blue.", "has a V-neck?"]) == "Is darker blue and has a V-neck"
    assert fashioniq_text(["..is red, ", " , More Casual."]) == "Is red and More Casual"


def test_training_composition_gives_the_four_forms_equally_often():
    captions = ("is red.", " has stripes")
    counts = Counter(fashioniq_text(captions, random.Random(seed)) for seed in range(4000))
    assert set(counts) == {"Is red and has stripes", "Has stripes and is red", "Is red", "Has stripes"}
    # Each form has probability 1/4: 1000 expected, standard deviation about 27.
    assert all(850 < n < 1150 for n in counts.values()), counts


@given(st.text(max_size=12), st.text(max_size=12), st.integers(0, 2**32))
def test_training_composition_is_always_one_of_the_four_forms(first: str, second: str, seed: int):
    a, b = first.strip(".?, "), second.strip(".?, ")
    forms = {f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize()}
    assert fashioniq_text((first, second), random.Random(seed)) in forms


def test_query_text_uses_rng_for_training(tiny_fashioniq_root: Path):
    split = load_fashioniq(tiny_fashioniq_root, "val", "dress")
    query = split.queries[1]
    assert split.query_text(query) == "Is darker and no collar"
    texts = {split.query_text(query, random.Random(seed)) for seed in range(200)}
    # Only the leading caption is capitalize()-d; the trailing one keeps its case ("C2 and c1").
    assert texts == {"Is darker and no collar", "No collar and Is Darker", "Is darker", "No collar"}


def test_image_lookup_prefers_png_then_jpg_then_names_the_missing_png(tiny_fashioniq_root: Path):
    images = tiny_fashioniq_root / "images"
    (images / "A2.png").rename(images / "A2.jpg")
    (images / "A3.jpg").write_bytes((images / "A3.png").read_bytes())
    (images / "A4.png").unlink()
    split = load_fashioniq(tiny_fashioniq_root, "val", "dress")
    assert split.image_paths["A1"] == images / "A1.png"
    assert split.image_paths["A2"] == images / "A2.jpg"
    assert split.image_paths["A3"] == images / "A3.png"
    assert split.image_paths["A4"] == images / "A4.png"
    with pytest.raises(BenchError, match=r"A4\.png: image file is missing"):
        split.load_image("A4")


def test_loader_does_not_open_images(tiny_fashioniq_root: Path):
    (tiny_fashioniq_root / "images" / "A1.png").write_bytes(b"not an image")
    assert len(load_fashioniq(tiny_fashioniq_root, "val", "dress").queries) == 3


def test_annotations_load_without_an_images_folder(real_annotations: Path):
    split = load_fashioniq(real_annotations / "fashioniq", "val", "toptee")
    assert len(split.queries) == 1961
    assert all(path.suffix == ".png" for path in split.image_paths.values())


@pytest.mark.parametrize(
    ("split", "category", "message"),
    [
        ("dev", "dress", r"unknown FashionIQ split 'dev' \(valid: train, val, test\)"),
        ("val", "pants", r"unknown FashionIQ category 'pants' \(valid: dress, shirt, toptee\)"),
    ],
)
def test_unknown_split_or_category(tiny_fashioniq_root: Path, split: str, category: str, message: str):
    with pytest.raises(BenchError, match=message):
        load_fashioniq(tiny_fashioniq_root, split, category)


def test_missing_caption_file_is_named(tiny_fashioniq_root: Path):
    with pytest.raises(BenchError, match=r"captions/cap\.shirt\.val\.json: annotation file is missing"):
        load_fashioniq(tiny_fashioniq_root, "val", "shirt")


def test_missing_split_file_is_named(tiny_fashioniq_root: Path):
    (tiny_fashioniq_root / "image_splits" / "split.dress.val.json").unlink()
    with pytest.raises(BenchError, match=r"image_splits/split\.dress\.val\.json: annotation file is missing"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_malformed_json_names_file_line_and_column(tiny_fashioniq_root: Path):
    path = tiny_fashioniq_root / "captions" / "cap.dress.val.json"
    path.write_text('[\n  {"candidate": "A1",\n   "target": }\n]')
    with pytest.raises(BenchError, match=r"cap\.dress\.val\.json: malformed JSON at line 3 column 14"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_record_missing_captions(tiny_fashioniq_root: Path, edit_json):
    edit_json(tiny_fashioniq_root / "captions" / "cap.dress.val.json", lambda records: records[1].pop("captions"))
    with pytest.raises(BenchError, match=r"cap\.dress\.val\.json: record 1 has no 'captions'$"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_val_record_missing_target(tiny_fashioniq_root: Path, edit_json):
    edit_json(tiny_fashioniq_root / "captions" / "cap.dress.val.json", lambda records: records[2].pop("target"))
    with pytest.raises(BenchError, match=r"cap\.dress\.val\.json: record 2 has no 'target'"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


@pytest.mark.parametrize("captions", [["only one"], ["a", "b", "c"], "a and b", ["a", 3]])
def test_captions_must_be_two_strings(tiny_fashioniq_root: Path, edit_json, captions):
    edit_json(
        tiny_fashioniq_root / "captions" / "cap.dress.val.json", lambda records: records[0].update(captions=captions)
    )
    with pytest.raises(BenchError, match=r"cap\.dress\.val\.json: record 0: 'captions' must be a list of 2 strings"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_candidate_must_be_a_name(tiny_fashioniq_root: Path, edit_json):
    edit_json(tiny_fashioniq_root / "captions" / "cap.dress.val.json", lambda records: records[0].update(candidate=12))
    with pytest.raises(BenchError, match=r"record 0: 'candidate' must be an image name"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_captions_file_must_be_a_list_of_objects(tiny_fashioniq_root: Path, edit_json):
    edit_json(tiny_fashioniq_root / "captions" / "cap.dress.val.json", lambda records: records.append("A9"))
    with pytest.raises(BenchError, match=r"cap\.dress\.val\.json: record 3 is not a JSON object"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_gallery_duplicate_is_named(tiny_fashioniq_root: Path, edit_json):
    edit_json(tiny_fashioniq_root / "image_splits" / "split.dress.val.json", lambda names: names.append("A2"))
    with pytest.raises(BenchError, match=r"split\.dress\.val\.json: image 'A2' appears twice \(entries 1 and 5\)"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_gallery_must_be_a_list(tiny_fashioniq_root: Path):
    (tiny_fashioniq_root / "image_splits" / "split.dress.val.json").write_text('{"A1": 1}')
    with pytest.raises(BenchError, match=r"split\.dress\.val\.json: expected a JSON list of image names, got dict"):
        load_fashioniq(tiny_fashioniq_root, "val", "dress")


def test_root_without_captions_folder_says_what_is_expected(tmp_path: Path):
    (tmp_path / "images").mkdir()
    with pytest.raises(BenchError, match=r"not a FashionIQ data root, it has no captions/ folder \(expected captions/"):
        load_fashioniq(tmp_path, "val", "dress")


def test_missing_root(tmp_path: Path):
    with pytest.raises(BenchError, match=r"nowhere: FashionIQ data root is not a folder"):
        load_fashioniq(tmp_path / "nowhere", "val", "dress")
