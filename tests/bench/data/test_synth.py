"""The synthetic CIR world: layouts like the real releases, determinism, held-out combinations, atomic writing."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import bench.data.synth.writer as writer_module
from bench.data.synth import (
    CATEGORY_TEXTURES,
    DEFAULT_CONFIG,
    SynthConfig,
    ensure_synth_world,
    generate,
    read_synth_manifest,
)
from bench.data.synth.captions import (
    EDIT_TEMPLATES,
    REFERENCE_LEVELS,
    edit_caption,
    object_phrase,
    reference_phrase,
    scene_caption,
)
from bench.data.synth.render import render_png
from bench.data.synth.scenes import (
    COLOURS,
    EDIT_KINDS,
    SHAPES,
    BackgroundEdit,
    ObjectEdit,
    Scene,
    SceneObject,
    SceneSampler,
)
from bench.data.synth.world import build_world
from bench.errors import BenchError

REPO_ROOT = Path(__file__).resolve().parents[3]
SMALL = SynthConfig(
    seed=7,
    heldout_combinations=3,
    cirr_train_queries=64,
    cirr_val_queries=24,
    cirr_test1_queries=20,
    fashioniq_train_queries=30,
    fashioniq_val_queries=10,
    fashioniq_test_queries=8,
    corpus_train_images=80,
    corpus_val_images=16,
)
TINY = SynthConfig(
    seed=3,
    heldout_combinations=1,
    cirr_train_queries=8,
    cirr_val_queries=8,
    cirr_test1_queries=8,
    fashioniq_train_queries=2,
    fashioniq_val_queries=2,
    fashioniq_test_queries=2,
    corpus_train_images=4,
    corpus_val_images=2,
)
CIRR_SPLITS = {"train": "train", "val": "dev", "test1": "test1"}
FASHIONIQ_SPLITS = ("train", "val", "test")
ALL_PAIRS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
# How many differences (changed cells, a changed background) one edit of each kind makes.
EDIT_CELLS = {kind: 2 if kind == "move" else 1 for kind in EDIT_KINDS}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SMALL world, generated once for the module's read-only checks."""
    return generate(tmp_path_factory.mktemp("synth") / "world", SMALL)


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def scene_combinations(scene_json: dict) -> set[tuple[str, str]]:
    return {(obj["colour"], obj["shape"]) for obj in scene_json["objects"]}


def cells_changed(first: dict, second: dict) -> int:
    """Cells whose content differs between two scenes (as in metadata/scenes.json), plus 1 if the backgrounds do."""
    first_cells = {obj["cell"]: obj for obj in first["objects"]}
    second_cells = {obj["cell"]: obj for obj in second["objects"]}
    changed = sum(first_cells.get(cell) != second_cells.get(cell) for cell in first_cells.keys() | second_cells.keys())
    return changed + (first["background"] != second["background"]) + (first["texture"] != second["texture"])


def synth_process(function: str, path: Path, config: SynthConfig, hash_seed: str = "0") -> subprocess.Popen:
    """Start another interpreter that calls ``bench.data.synth.<function>(path, config)``."""
    script = (
        "import json, sys; import bench.data.synth as synth; "
        f"synth.{function}(sys.argv[1], synth.SynthConfig(**json.loads(sys.argv[2])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path), json.dumps(config.to_json())], cwd=REPO_ROOT, env=env
    )


def random_sampler(seed: int, max_objects: int = 4) -> SceneSampler:
    return SceneSampler(random.Random(seed), ALL_PAIRS, max_objects)


# Determinism and the fingerprint


def test_same_seed_gives_byte_identical_files_across_processes(world: Path, tmp_path: Path):
    # Another interpreter with another hash seed: catches any dependence on set/dict iteration order of strings.
    again = tmp_path / "again"
    assert synth_process("generate", again, SMALL, hash_seed="12345").wait(timeout=60) == 0
    first, second = all_files(world), all_files(again)
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_fingerprint_is_stable_and_covers_every_field():
    assert SynthConfig().fingerprint() == DEFAULT_CONFIG.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", SMALL.fingerprint())
    assert SynthConfig(seed=1).fingerprint() != SynthConfig(seed=2).fingerprint()
    assert SynthConfig(corpus_val_images=999).fingerprint() != DEFAULT_CONFIG.fingerprint()
    assert SynthConfig(full_reference_rate=1).fingerprint() == SynthConfig(full_reference_rate=1.0).fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_size", 8), ("max_objects", 1), ("heldout_combinations", 9), ("cirr_val_queries", 0), ("seed", -1)]
    + [("fashioniq_distractor_rate", 1.5), ("seed", True), ("image_size", 64.0)],
)
def test_config_rejects_bad_values(field: str, value):
    with pytest.raises(BenchError, match=field):
        SynthConfig(**{field: value})


def test_png_has_fixed_bytes_and_no_metadata_chunks():
    scene = random_sampler(0).scene()
    png = render_png(scene, 64, 2)
    assert png == render_png(scene, 64, 2)
    chunks, offset = [], 8
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        chunks.append(png[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    assert set(chunks) == {"IHDR", "IDAT", "IEND"}


# Scenes, edits and their texts


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_reference_phrase_is_minimal_and_unambiguous(seed: int):
    scene = random_sampler(seed).scene()
    for obj in scene.objects:
        for full in (False, True):
            phrase, named = reference_phrase(obj, scene, full=full)
            matching = [
                other for other in scene.objects if all(getattr(other, attr) == getattr(obj, attr) for attr in named)
            ]
            assert matching == [obj], phrase
            assert phrase.startswith("the ") and obj.shape in phrase
        _, minimal = reference_phrase(obj, scene)
        less_specific = REFERENCE_LEVELS[: REFERENCE_LEVELS.index(minimal)] if minimal in REFERENCE_LEVELS else []
        for attributes in less_specific:
            assert sum(all(getattr(o, a) == getattr(obj, a) for a in attributes) for o in scene.objects) > 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_edits_invert_and_disjoint_edits_commute(seed: int):
    sampler = random_sampler(seed)
    scene = sampler.scene()
    first = sampler.edit(scene)
    edited = first.apply(scene)
    assert edited != scene and first.kind in EDIT_KINDS
    assert first.inverse().apply(edited) == scene
    assert 1 <= len(edited.objects) <= 4
    second = sampler.edit(edited, first.cells, allow_background=first.kind != "background")
    if second is not None:
        assert second.apply(first.apply(scene)) == first.apply(second.apply(scene))


def test_every_edit_kind_has_at_least_three_phrasings():
    rng = random.Random(0)
    sampler = random_sampler(1)
    used = {kind: set() for kind in EDIT_KINDS}
    patterns = {
        kind: [
            (template, re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)) + "$")) for template in templates
        ]
        for kind, templates in EDIT_TEMPLATES.items()
    }
    for _ in range(3000):
        scene = sampler.scene()
        edit = sampler.edit(scene)
        caption = edit_caption(edit, scene, rng, full_reference_rate=0.2)
        matches = [template for template, pattern in patterns[edit.kind] if pattern.match(caption)]
        assert matches, (edit.kind, caption)
        used[edit.kind].update(matches)
    assert all(len(templates) >= 3 for templates in used.values()), used


RED_CIRCLE = SceneObject(0, "circle", "red", "small")
BLUE_STAR = SceneObject(4, "star", "blue", "large")
SMALL_BLUE_TRIANGLE = SceneObject(2, "triangle", "blue", "small")
TRIANGLES = Scene(
    "grey",
    "striped",
    (SMALL_BLUE_TRIANGLE, SceneObject(5, "triangle", "blue", "large"), SceneObject(8, "triangle", "red", "small")),
)
TWIN_STARS = Scene("white", "plain", (SceneObject(0, "star", "blue", "large"), BLUE_STAR))


@pytest.mark.parametrize(
    ("edit", "scene", "expected"),
    [
        (
            ObjectEdit(RED_CIRCLE, SceneObject(0, "circle", "blue", "small")),
            None,
            "make the circle blue instead of red",
        ),
        (
            ObjectEdit(BLUE_STAR, SceneObject(4, "square", "green", "large")),
            None,
            "replace the star with a green square",
        ),
        (
            ObjectEdit(RED_CIRCLE, SceneObject(8, "circle", "red", "small")),
            None,
            "move the circle from the top left to the bottom right",
        ),
        (
            ObjectEdit(None, SceneObject(8, "heart", "yellow", "large")),
            None,
            "add a large yellow heart in the bottom right",
        ),
        (BackgroundEdit("white", "grey"), None, "make the background grey instead of white"),
        (ObjectEdit(SMALL_BLUE_TRIANGLE, None), TRIANGLES, "remove the small blue triangle"),
        (ObjectEdit(BLUE_STAR, None), TWIN_STARS, "remove the star in the centre"),
    ],
)
def test_texts_name_objects_minimally_and_changes_relatively(edit, scene, expected):
    scene = scene or Scene("white", "plain", (RED_CIRCLE, BLUE_STAR))
    assert expected in {edit_caption(edit, scene, random.Random(seed), 0) for seed in range(200)}


def test_scene_captions_name_every_object_and_the_background():
    rng = random.Random(0)
    sampler = random_sampler(2)
    for _ in range(300):
        scene = sampler.scene()
        caption = scene_caption(scene, rng)
        for obj in scene.objects:
            assert object_phrase(obj) in caption
        assert scene.background in caption and "background" in caption
        if scene.texture != "plain":
            assert scene.texture in caption


# The CIRR layout


def test_cirr_layout_matches_the_release(world: Path):
    root = world / "cirr"
    pairids = []
    for split, folder in CIRR_SPLITS.items():
        captions_path = root / "captions" / f"cap.rc2.{split}.json"
        split_path = root / "image_splits" / f"split.rc2.{split}.json"
        records, paths = load(captions_path), load(split_path)
        # The release's byte format: one line, json.dumps defaults, no final newline.
        assert captions_path.read_text() == json.dumps(records)
        assert split_path.read_text() == json.dumps(paths)
        folder_pattern = r"\./train/\d{1,2}/" if split == "train" else rf"\./{folder}/"
        for name, relative in paths.items():
            assert re.fullmatch(rf"{folder}-\d+-[0-2]-img[01]", name)
            assert re.fullmatch(folder_pattern + re.escape(name) + r"\.png", relative)
            assert (root / "img_raw" / relative).is_file()
        members_seen = set()
        for record in records:
            expected = ["pairid", "reference", "caption", "img_set"]
            if split != "test1":
                expected[2:2] = ["target_hard", "target_soft"]
            assert list(record) == expected
            img_set = record["img_set"]
            assert list(img_set) == ["id", "members", "reference_rank"] + (["target_rank"] if split != "test1" else [])
            members = img_set["members"]
            assert len(members) == 6 and len(set(members)) == 6
            assert set(members) <= set(paths)
            assert record["reference"] in members and 0 <= img_set["reference_rank"] < 6
            if split != "test1":
                assert record["target_hard"] in members and record["target_hard"] != record["reference"]
                assert record["target_soft"] == {record["target_hard"]: 1.0}
                assert img_set["target_rank"] != img_set["reference_rank"]
            assert isinstance(record["caption"], str) and record["caption"].strip()
            members_seen.update(members)
            pairids.append(record["pairid"])
        # The gallery is exactly the images of the split's sets.
        assert members_seen == set(paths)
    assert all(isinstance(pairid, int) for pairid in pairids)
    assert len(pairids) == len(set(pairids))


def test_cirr_image_sets_are_a_base_and_five_single_edit_variants(world: Path):
    scenes = load(world / "metadata" / "scenes.json")
    queries = load(world / "metadata" / "queries.json")
    for split in CIRR_SPLITS:
        records = load(world / "cirr" / "captions" / f"cap.rc2.{split}.json")
        infos = queries[f"cirr/{split}"]
        assert [info["pairid"] for info in infos] == [record["pairid"] for record in records]
        for record, info in zip(records, infos, strict=True):
            members = record["img_set"]["members"]
            assert info["reference"] == record["reference"] and info["target"] in members
            assert len({json.dumps(scenes[name], sort_keys=True) for name in members}) == 6
            reference, target = scenes[info["reference"]], scenes[info["target"]]
            # The recorded edits are exactly what changed between the two images.
            assert cells_changed(reference, target) == sum(EDIT_CELLS[kind] for kind in info["edits"])
            if split == "test1":
                continue
            assert info["target"] == record["target_hard"]
            from_base = record["img_set"]["reference_rank"] == 0
            assert len(info["edits"]) == (1 if from_base or record["img_set"]["target_rank"] == 0 else 2)
            if from_base:
                # Every other member is one edit away from the base, as the target is: only the text tells them apart.
                assert all(
                    1 <= cells_changed(reference, scenes[name]) <= 2 for name in members if name != info["reference"]
                )


# The FashionIQ layout


def test_fashioniq_layout_matches_the_release(world: Path):
    root = world / "fashioniq"
    assert set(CATEGORY_TEXTURES) == {"dress", "shirt", "toptee"}
    scenes = load(world / "metadata" / "scenes.json")
    for category, texture in CATEGORY_TEXTURES.items():
        for split in FASHIONIQ_SPLITS:
            captions_path = root / "captions" / f"cap.{category}.{split}.json"
            split_path = root / "image_splits" / f"split.{category}.{split}.json"
            records, gallery = load(captions_path), load(split_path)
            # The release's byte format: four-space indented, no final newline.
            assert captions_path.read_text() == json.dumps(records, indent=4)
            assert split_path.read_text() == json.dumps(gallery, indent=4)
            assert len(gallery) == len(set(gallery))
            for name in gallery:
                assert re.fullmatch(r"S[0-9A-Z]{9}", name)
                assert (root / "images" / f"{name}.png").is_file()
                assert scenes[name]["texture"] == texture
            for record in records:
                assert list(record) == (
                    ["candidate", "captions"] if split == "test" else ["target", "candidate", "captions"]
                )
                assert record["candidate"] in gallery and record.get("target", record["candidate"]) in gallery
                first, second = record["captions"]
                assert first.strip() and second.strip() and first.strip().lower() != second.strip().lower()
                assert not first.endswith((".", "?", "!")) and not second.endswith((".", "?", "!"))


def test_fashioniq_targets_differ_from_candidates_in_two_ways(world: Path):
    scenes = load(world / "metadata" / "scenes.json")
    queries = load(world / "metadata" / "queries.json")
    for category in CATEGORY_TEXTURES:
        for split in FASHIONIQ_SPLITS:
            records = load(world / "fashioniq" / "captions" / f"cap.{category}.{split}.json")
            for record, info in zip(records, queries[f"fashioniq/{category}/{split}"], strict=True):
                assert info["reference"] == record["candidate"] and info["target"] == record.get(
                    "target", info["target"]
                )
                assert len(info["edits"]) == 2
                changed = cells_changed(scenes[info["reference"]], scenes[info["target"]])
                assert changed == sum(EDIT_CELLS[kind] for kind in info["edits"]) >= 2


# Captions of every kind, held-out combinations, corpus


def test_every_modification_kind_is_captioned_in_training(world: Path):
    infos = load(world / "metadata" / "queries.json")
    cirr_kinds = {kind for info in infos["cirr/train"] for kind in info["edits"]}
    fashioniq_kinds = {
        kind
        for category in CATEGORY_TEXTURES
        for info in infos[f"fashioniq/{category}/train"]
        for kind in info["edits"]
    }
    assert cirr_kinds == set(EDIT_KINDS)
    assert fashioniq_kinds == set(EDIT_KINDS)


def test_heldout_combinations_only_in_evaluation_images(world: Path):
    manifest = read_synth_manifest(world)
    heldout = {(pair["colour"], pair["shape"]) for pair in manifest["heldout_combinations"]}
    assert len(heldout) == SMALL.heldout_combinations
    scenes = load(world / "metadata" / "scenes.json")

    def combinations_of(names) -> set[tuple[str, str]]:
        return set().union(*(scene_combinations(scenes[name]) for name in names))

    train_names = list(load(world / "cirr" / "image_splits" / "split.rc2.train.json"))
    for category in CATEGORY_TEXTURES:
        train_names += load(world / "fashioniq" / "image_splits" / f"split.{category}.train.json")
    corpus_names = [
        record["image"] for split in ("train", "val") for record in load(world / "corpus" / f"captions.{split}.json")
    ]
    assert combinations_of(train_names) & heldout == set()
    assert combinations_of(corpus_names) & heldout == set()

    for split in ("val", "test1"):
        assert heldout <= combinations_of(load(world / "cirr" / "image_splits" / f"split.rc2.{split}.json"))
    for category in CATEGORY_TEXTURES:
        for split in ("val", "test"):
            assert heldout <= combinations_of(
                load(world / "fashioniq" / "image_splits" / f"split.{category}.{split}.json")
            )


def test_corpus_is_disjoint_from_every_cir_image(world: Path):
    corpus = {split: load(world / "corpus" / f"captions.{split}.json") for split in ("train", "val")}
    assert len(corpus["train"]) == SMALL.corpus_train_images * SMALL.corpus_train_captions_per_image
    assert len(corpus["val"]) == SMALL.corpus_val_images * SMALL.corpus_val_captions_per_image
    corpus_images = {split: {record["image"] for record in records} for split, records in corpus.items()}
    assert corpus_images["train"].isdisjoint(corpus_images["val"])
    for records in corpus.values():
        for record in records:
            assert list(record) == ["image", "caption"] and record["caption"]
    corpus_files = [world / "corpus" / "images" / f"{name}.png" for names in corpus_images.values() for name in names]
    cir_files = list((world / "cirr" / "img_raw").rglob("*.png")) + list((world / "fashioniq" / "images").glob("*.png"))
    corpus_digests = {hashlib.sha256(path.read_bytes()).digest() for path in corpus_files}
    cir_digests = {hashlib.sha256(path.read_bytes()).digest() for path in cir_files}
    assert len(corpus_digests) == len(corpus_files) and len(cir_digests) == len(cir_files)
    assert corpus_digests.isdisjoint(cir_digests)


def test_images_match_their_recorded_scenes(world: Path):
    built = build_world(SMALL)
    scenes = load(world / "metadata" / "scenes.json")
    assert len(scenes) == len(built.images) == sum(1 for _ in world.rglob("*.png"))
    for relative, scene in list(built.images.items())[::25]:
        path = world / relative
        assert path.read_bytes() == render_png(scene, SMALL.image_size, SMALL.supersample)
        assert scenes[path.stem] == scene.to_json()
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", (SMALL.image_size, SMALL.image_size))


def test_manifest_counts_match_the_files(world: Path):
    manifest = read_synth_manifest(world)
    assert manifest["fingerprint"] == SMALL.fingerprint() and manifest["config"] == SMALL.to_json()
    assert manifest["category_mapping"] == CATEGORY_TEXTURES
    requested = {"train": SMALL.cirr_train_queries, "val": SMALL.cirr_val_queries, "test1": SMALL.cirr_test1_queries}
    for split, count in requested.items():
        assert (
            manifest["counts"]["cirr"][split]["queries"]
            == count
            == len(load(world / "cirr" / "captions" / f"cap.rc2.{split}.json"))
        )
    requested = {
        "train": SMALL.fashioniq_train_queries,
        "val": SMALL.fashioniq_val_queries,
        "test": SMALL.fashioniq_test_queries,
    }
    for category in CATEGORY_TEXTURES:
        for split, count in requested.items():
            records = load(world / "fashioniq" / "captions" / f"cap.{category}.{split}.json")
            assert manifest["counts"]["fashioniq"][category][split]["queries"] == count == len(records)


# The loaders read every split


def test_loaders_read_every_split(world: Path):
    if importlib.util.find_spec("bench.data.cirr") is None or importlib.util.find_spec("bench.data.fashioniq") is None:
        pytest.skip("the layout loaders are not in this tree yet")
    from bench.data.cirr import load_cirr
    from bench.data.fashioniq import load_fashioniq

    for split in CIRR_SPLITS:
        loaded = load_cirr(world / "cirr", split)
        assert len(loaded.queries) == read_synth_manifest(world)["counts"]["cirr"][split]["queries"]
        assert all((query.target is None) == (split == "test1") for query in loaded.queries)
        assert all(loaded.image_path(name).is_file() for name in loaded.gallery_names)
    for category in CATEGORY_TEXTURES:
        for split in FASHIONIQ_SPLITS:
            loaded = load_fashioniq(world / "fashioniq", split, category)
            assert all((query.target is None) == (split == "test") for query in loaded.queries)
            assert all(loaded.image_path(name).is_file() for name in loaded.gallery_names)
            assert loaded.query_text(loaded.queries[0])
    if importlib.util.find_spec("bench.data.check") is not None:
        from bench.data.check import check_dataset

        # Every named image exists and decodes.
        for layout in ("cirr", "fashioniq"):
            assert all("skipped" not in row for row in check_dataset(layout, world / layout))


# Writing: refusal, replacement, interruption, the cache


def test_generate_refuses_a_foreign_directory(tmp_path: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="refusing to overwrite"):
        generate(foreign, TINY)
    assert (foreign / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="not a directory"):
        generate(tmp_path / "file", TINY)


def test_generate_replaces_a_previous_world_and_fills_an_empty_directory(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    generate(out, TINY)
    other = SynthConfig(**{**TINY.to_json(), "seed": 4})
    generate(out, other)
    assert read_synth_manifest(out)["fingerprint"] == other.fingerprint()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_interrupted_generation_leaves_the_destination_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    generate(out, TINY)
    before = all_files(out)
    calls = []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return render_png(*args, **kwargs)

    monkeypatch.setattr(writer_module, "render_png", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate(out, SynthConfig(**{**TINY.to_json(), "seed": 9}))
    assert all_files(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "fresh", TINY)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_ensure_synth_world_generates_once_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIR_BENCH_CACHE", str(tmp_path / "cache"))
    root = ensure_synth_world(config=TINY)
    assert root == tmp_path / "cache" / f"synth-{TINY.fingerprint()}"
    assert read_synth_manifest(root)["fingerprint"] == TINY.fingerprint()

    def no_rebuild(config):
        raise AssertionError("a cached world was generated again")

    monkeypatch.setattr(writer_module, "build_world", no_rebuild)
    assert ensure_synth_world(config=TINY) == root
    assert ensure_synth_world(cache_root=tmp_path / "cache", config=TINY) == root


def test_ensure_synth_world_loser_of_a_race_discards_its_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    racing = []

    def build_while_another_process_wins(config):
        if not racing:
            racing.append(1)
            # The rival process finishes first, while this one is still building.
            winner = ensure_synth_world(cache, config)
            (winner / "winner").write_text("")
        return build_world(config)

    monkeypatch.setattr(writer_module, "build_world", build_while_another_process_wins)
    root = ensure_synth_world(cache, TINY)
    assert (root / "winner").exists()
    assert sorted(path.name for path in cache.iterdir()) == [root.name]


def test_ensure_synth_world_two_processes_racing_share_one_world(tmp_path: Path):
    cache = tmp_path / "cache"
    racers = [synth_process("ensure_synth_world", cache, SMALL) for _ in range(2)]
    assert [racer.wait(timeout=60) for racer in racers] == [0, 0]
    assert sorted(path.name for path in cache.iterdir()) == [f"synth-{SMALL.fingerprint()}"]
    assert read_synth_manifest(cache / f"synth-{SMALL.fingerprint()}")["fingerprint"] == SMALL.fingerprint()


def test_ensure_synth_world_rejects_a_damaged_cache_entry(tmp_path: Path):
    damaged = tmp_path / f"synth-{TINY.fingerprint()}"
    damaged.mkdir()
    (damaged / "half-written").write_text("")
    with pytest.raises(BenchError, match="not the complete synthetic world"):
        ensure_synth_world(tmp_path, TINY)
    assert sorted(path.name for path in tmp_path.iterdir()) == [damaged.name]


# The default world


@pytest.mark.slow
def test_default_world_counts_and_time_budget(tmp_path: Path):
    start = time.perf_counter()
    root = generate(tmp_path / "default")
    elapsed = time.perf_counter() - start
    counts = read_synth_manifest(root)["counts"]
    assert {split: counts["cirr"][split]["queries"] for split in CIRR_SPLITS} == {
        "train": 3000,
        "val": 1000,
        "test1": 1000,
    }
    for category in CATEGORY_TEXTURES:
        assert {split: counts["fashioniq"][category][split]["queries"] for split in FASHIONIQ_SPLITS} == {
            "train": 1000,
            "val": 400,
            "test": 400,
        }
    assert counts["corpus"] == {
        "train": {"images": 20000, "captions": 40000},
        "val": {"images": 1000, "captions": 1000},
    }
    # Compositional queries must be frequent enough to report on their own.
    assert all(counts["cirr"][split]["heldout_queries"] >= 150 for split in ("val", "test1"))
    images = sum(1 for _ in root.rglob("*.png"))
    assert images == len(load(root / "metadata" / "scenes.json"))
    # The budget is 60 s on 2 cores; the slack absorbs a busy CI machine.
    assert elapsed < 90, f"default generation took {elapsed:.0f} s"
