"""Draws the whole synthetic world in memory: every annotation file and the scene behind every image.

Order matters for determinism and is fixed: CIRR (train, val, test1), then FashionIQ (per category: train, val,
test), then the corpus. Each part draws from its own ``random.Random`` stream named after it, and every scene is
claimed once for the whole world, so no image appears twice in any gallery and the corpus shares no scene with a
CIR split.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass

from bench.data.synth.captions import (
    CaptionStyle,
    edit_caption,
    join_edit_captions,
    scene_caption,
    style_caption,
)
from bench.data.synth.config import GENERATOR_VERSION, SynthConfig
from bench.data.synth.scenes import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    EDIT_KINDS,
    SHAPES,
    SIZES,
    TEXTURES,
    Combination,
    Edit,
    Scene,
    SceneSampler,
    choose_heldout,
)
from bench.errors import BenchError

GENERATOR_NAME = "bench.data.synth"
# (split, image folder and name prefix), as in the CIRR release.
CIRR_SPLITS = (("train", "train"), ("val", "dev"), ("test1", "test1"))
CIRR_TRAIN_FOLDERS = 100
FASHIONIQ_SPLITS = ("train", "val", "test")
# The loaders fix FashionIQ's category names; each synthetic category is one background texture, a global property
# that every edit keeps, as a garment's category is kept between a FashionIQ candidate and its target.
CATEGORY_TEXTURES = {"dress": "plain", "shirt": "striped", "toptee": "checkered"}
SET_SIZE = 6
CIRR_STYLE = CaptionStyle(capitalise=0.5, leading_space=0.0, period=0.1)
FASHIONIQ_STYLE = CaptionStyle(capitalise=0.15, leading_space=0.05, period=0.0)
ASIN_ALPHABET = string.digits + string.ascii_uppercase
# Draws of a set, triplet or corpus scene before giving up; a collision is rare, so reaching this means the
# requested counts do not fit the scene space.
MAX_ATTEMPTS = 1000

NOTES = {
    "fashioniq_categories": "each FashionIQ category is one background texture (dress=plain, shirt=striped, "
    "toptee=checkered); candidate, target and gallery of a category share it",
    "fashioniq_captions": "a target differs from its candidate by two commuting edits; each caption describes one "
    "of them (so either caption alone is a partial description); captions are styled raw: mostly lowercase, no "
    "final punctuation, an occasional leading space",
    "fashioniq_gallery": "the candidates and targets of the category and split, plus half-edited distractors "
    "(one of the two changes only) for a share of the queries",
    "cirr_image_sets": "an image set is a base scene and five variants, each the base with one edit, the five "
    "edits touching disjoint cells; queries go base->variant (one edit), variant->base (the inverse edit) and "
    "variant->variant (undo one edit and make another, two-part caption), so every other member is as close to "
    "the reference as the target is",
    "cirr_ranks": "img_set.reference_rank / target_rank are the images' construction order in the set (0 = base, "
    "1..5 = variants), not positions in members, whose order is shuffled",
    "heldout": "the held-out (colour, shape) pairs never occur in a train or corpus image; every val/test split "
    "contains each of them (forced into the first sets or triplets), plus natural occurrences",
    "metadata": "metadata/scenes.json gives every image's scene; metadata/queries.json gives, per split and in "
    "caption-file order, each query's reference, target (test targets included, for local evaluation), edit kinds "
    "(FashionIQ: aligned with the two captions) and whether its reference or target holds a held-out pair",
}


@dataclass
class World:
    """A generated world before writing: text files and images by path relative to the output root."""

    files: dict[str, str]
    images: dict[str, Scene]
    manifest: dict


def build_world(config: SynthConfig) -> World:
    """Draw every split, image and caption of the world ``config`` describes."""
    return _WorldBuilder(config).build()


class _WorldBuilder:
    def __init__(self, config: SynthConfig):
        self.config = config
        self.heldout = choose_heldout(self._stream("heldout"), config.heldout_combinations)
        all_pairs = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
        self.eval_pairs = all_pairs
        self.train_pairs = tuple(pair for pair in all_pairs if pair not in self.heldout)
        self.heldout_set = set(self.heldout)
        self.claimed: set[Scene] = set()
        self.files: dict[str, str] = {}
        self.images: dict[str, Scene] = {}
        self.scene_of: dict[str, Scene] = {}
        self.queries: dict[str, list[dict]] = {}
        self.counts: dict = {"cirr": {}, "fashioniq": {}, "corpus": {}}

    def build(self) -> World:
        self._build_cirr()
        self._build_fashioniq()
        self._build_corpus()
        self.files["metadata/scenes.json"] = json.dumps(
            {name: scene.to_json() for name, scene in self.scene_of.items()}
        )
        self.files["metadata/queries.json"] = json.dumps(self.queries)
        manifest = {
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "fingerprint": self.config.fingerprint(),
            "config": self.config.to_json(),
            "category_mapping": CATEGORY_TEXTURES,
            "heldout_combinations": [{"colour": colour, "shape": shape} for colour, shape in self.heldout],
            "counts": self.counts,
            "vocabulary": {
                "shapes": list(SHAPES),
                "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
                "sizes": list(SIZES),
                "cells": list(CELLS),
                "backgrounds": {name: list(rgb) for name, rgb in BACKGROUNDS.items()},
                "textures": list(TEXTURES),
                "edit_kinds": list(EDIT_KINDS),
            },
            "notes": NOTES,
        }
        return World(self.files, self.images, manifest)

    def _stream(self, purpose: str) -> random.Random:
        # String seeds are hashed with SHA-512 by random.Random, independent of PYTHONHASHSEED.
        return random.Random(f"{self.config.seed}/{purpose}")

    def _sampler(self, rng: random.Random, split: str) -> SceneSampler:
        pairs = self.train_pairs if split == "train" else self.eval_pairs
        return SceneSampler(rng, pairs, self.config.max_objects)

    def _forced_pair(self, split: str, index: int) -> Combination | None:
        """The held-out pair the ``index``-th set or triplet of an evaluation split must show, if any."""
        if split == "train" or index >= len(self.heldout):
            return None
        return self.heldout[index]

    def _claim(self, scenes: list[Scene]) -> bool:
        """Reserve ``scenes`` for the world if all are new and distinct."""
        if len(set(scenes)) < len(scenes) or any(scene in self.claimed for scene in scenes):
            return False
        self.claimed.update(scenes)
        return True

    def _add_image(self, name: str, path: str, scene: Scene) -> None:
        self.images[path] = scene
        self.scene_of[name] = scene

    def _holds_heldout(self, *scenes: Scene) -> bool:
        return any(scene.combinations() & self.heldout_set for scene in scenes)

    def _caption(self, edit: Edit, scene: Scene, rng: random.Random) -> str:
        return edit_caption(edit, scene, rng, self.config.full_reference_rate)

    # CIRR

    def _build_cirr(self) -> None:
        config = self.config
        per_set = config.cirr_queries_per_set
        requested = {
            "train": config.cirr_train_queries,
            "val": config.cirr_val_queries,
            "test1": config.cirr_test1_queries,
        }
        pairid = 0
        for split, folder in CIRR_SPLITS:
            rng = self._stream(f"cirr/{split}")
            sampler = self._sampler(rng, split)
            records, paths, infos = [], {}, []
            set_count = math.ceil(requested[split] / per_set)
            for set_id in range(set_count):
                scenes, edits = self._image_set(sampler, self._forced_pair(split, set_id))
                # members[position] is the scene built at order[position]; names follow positions, so neither a
                # name nor a position reveals which member is the base.
                order = list(range(SET_SIZE))
                rng.shuffle(order)
                members = [f"{folder}-{set_id}-{position // 2}-img{position % 2}" for position in range(SET_SIZE)]
                name_of = dict(zip(order, members, strict=True))
                subfolder = f"{folder}/{set_id % CIRR_TRAIN_FOLDERS}" if split == "train" else folder
                for built, name in name_of.items():
                    paths[name] = f"./{subfolder}/{name}.png"
                    self._add_image(name, f"cirr/img_raw/{subfolder}/{name}.png", scenes[built])

                wanted = min(per_set, requested[split] - set_id * per_set)
                for reference, target in self._set_queries(rng)[:wanted]:
                    query_edits = _star_edits(edits, reference, target)
                    parts = [self._caption(edit, scenes[reference], rng) for edit in query_edits]
                    caption = style_caption(join_edit_captions(parts, rng), rng, CIRR_STYLE)
                    record = {"pairid": pairid, "reference": name_of[reference]}
                    img_set = {"id": set_id, "members": members, "reference_rank": reference}
                    if split != "test1":
                        record["target_hard"] = name_of[target]
                        record["target_soft"] = {name_of[target]: 1.0}
                        img_set["target_rank"] = target
                    record["caption"] = caption
                    record["img_set"] = img_set
                    records.append(record)
                    infos.append(
                        {
                            "pairid": pairid,
                            "reference": name_of[reference],
                            "target": name_of[target],
                            "edits": [edit.kind for edit in query_edits],
                            "heldout": self._holds_heldout(scenes[reference], scenes[target]),
                        }
                    )
                    pairid += 1

            gallery = list(paths)
            # Gallery order must not follow set structure: rankers break ties by gallery index.
            rng.shuffle(gallery)
            self.files[f"cirr/captions/cap.rc2.{split}.json"] = json.dumps(records)
            self.files[f"cirr/image_splits/split.rc2.{split}.json"] = json.dumps(
                {name: paths[name] for name in gallery}
            )
            self.queries[f"cirr/{split}"] = infos
            self.counts["cirr"][split] = {
                "queries": len(records),
                "images": len(paths),
                "image_sets": set_count,
                "heldout_queries": sum(info["heldout"] for info in infos),
            }

    def _image_set(self, sampler: SceneSampler, forced: Combination | None) -> tuple[list[Scene], list[Edit]]:
        """A base scene and five single-edit variants whose edits touch disjoint cells (so they commute)."""
        for _ in range(MAX_ATTEMPTS):
            base = sampler.scene(first=forced)
            edits: list[Edit] = []
            busy: frozenset[int] = frozenset()
            while len(edits) < SET_SIZE - 1:
                background_used = any(edit.kind == "background" for edit in edits)
                edit = sampler.edit(base, busy, allow_background=not background_used)
                if edit is None:
                    break
                edits.append(edit)
                busy |= edit.cells
            else:
                scenes = [base] + [edit.apply(base) for edit in edits]
                if self._claim(scenes):
                    return scenes, edits
        raise BenchError(f"synth: could not draw a new CIRR image set in {MAX_ATTEMPTS} tries; lower the CIRR counts")

    @staticmethod
    def _set_queries(rng: random.Random) -> list[tuple[int, int]]:
        """(reference, target) construction indices: the five base->variant queries first, then the others shuffled."""
        forward = [(0, variant) for variant in range(1, SET_SIZE)]
        others = [(variant, 0) for variant in range(1, SET_SIZE)]
        others += [(a, b) for a in range(1, SET_SIZE) for b in range(1, SET_SIZE) if a != b]
        rng.shuffle(others)
        return forward + others

    # FashionIQ

    def _build_fashioniq(self) -> None:
        config = self.config
        requested = {
            "train": config.fashioniq_train_queries,
            "val": config.fashioniq_val_queries,
            "test": config.fashioniq_test_queries,
        }
        names_rng = self._stream("fashioniq/names")
        for category, texture in CATEGORY_TEXTURES.items():
            self.counts["fashioniq"][category] = {}
            for split in FASHIONIQ_SPLITS:
                rng = self._stream(f"fashioniq/{category}/{split}")
                sampler = self._sampler(rng, split)
                records, gallery, infos = [], [], []
                for index in range(requested[split]):
                    scenes, edits = self._triplet(sampler, texture, self._forced_pair(split, index))
                    names = [self._asin(names_rng) for _ in scenes]
                    for name, scene in zip(names, scenes, strict=True):
                        self._add_image(name, f"fashioniq/images/{name}.png", scene)
                    gallery += names
                    candidate, target = names[0], names[1]
                    rng.shuffle(edits)
                    captions = [
                        style_caption(self._caption(edit, scenes[0], rng), rng, FASHIONIQ_STYLE) for edit in edits
                    ]
                    if split == "test":
                        records.append({"candidate": candidate, "captions": captions})
                    else:
                        records.append({"target": target, "candidate": candidate, "captions": captions})
                    infos.append(
                        {
                            "reference": candidate,
                            "target": target,
                            "edits": [edit.kind for edit in edits],
                            "heldout": self._holds_heldout(scenes[0], scenes[1]),
                        }
                    )
                # Gallery order must not pair candidates with their targets: rankers break ties by gallery index.
                rng.shuffle(gallery)
                # FashionIQ's release is indented JSON, CIRR's is one line; both are reproduced as-is.
                self.files[f"fashioniq/captions/cap.{category}.{split}.json"] = json.dumps(records, indent=4)
                self.files[f"fashioniq/image_splits/split.{category}.{split}.json"] = json.dumps(gallery, indent=4)
                self.queries[f"fashioniq/{category}/{split}"] = infos
                self.counts["fashioniq"][category][split] = {
                    "queries": len(records),
                    "images": len(gallery),
                    "heldout_queries": sum(info["heldout"] for info in infos),
                }

    def _triplet(
        self, sampler: SceneSampler, texture: str, forced: Combination | None
    ) -> tuple[list[Scene], list[Edit]]:
        """[candidate, target] or [candidate, target, half-edited distractor], and the two commuting edits."""
        rng = sampler.rng
        for _ in range(MAX_ATTEMPTS):
            candidate = sampler.scene(texture=texture, first=forced)
            first = sampler.edit(candidate)
            halfway = first.apply(candidate)
            # Drawn on the half-edited scene so object counts stay in range, away from the first edit's cells
            # and so describable on the candidate.
            second = sampler.edit(halfway, first.cells, allow_background=first.kind != "background")
            if second is None:
                continue
            scenes = [candidate, second.apply(halfway)]
            if rng.random() < self.config.fashioniq_distractor_rate:
                halves = [halfway, second.apply(candidate)]
                scenes.append(rng.choice([s for s in halves if 1 <= len(s.objects) <= self.config.max_objects]))
            if self._claim(scenes):
                return scenes, [first, second]
        raise BenchError(f"synth: could not draw a new FashionIQ triplet in {MAX_ATTEMPTS} tries; lower the counts")

    def _asin(self, rng: random.Random) -> str:
        """A new ASIN-like name: "S" and nine digits or capitals."""
        while True:
            name = "S" + "".join(rng.choices(ASIN_ALPHABET, k=9))
            if name not in self.scene_of:
                return name

    # Image-caption corpus

    def _build_corpus(self) -> None:
        config = self.config
        requested = {
            "train": (config.corpus_train_images, config.corpus_train_captions_per_image),
            "val": (config.corpus_val_images, config.corpus_val_captions_per_image),
        }
        for split, (image_count, captions_per_image) in requested.items():
            rng = self._stream(f"corpus/{split}")
            # Held out of training everywhere, so the corpus draws from the training distribution in both splits.
            sampler = self._sampler(rng, "train")
            records = []
            for index in range(image_count):
                scene = self._new_corpus_scene(sampler)
                name = f"corpus-{split}-{index:06d}"
                self._add_image(name, f"corpus/images/{name}.png", scene)
                captions: list[str] = []
                # Distinct phrasings where the phrasing space allows (a one-object plain scene has few).
                for _ in range(4 * captions_per_image):
                    caption = scene_caption(scene, rng)
                    if caption not in captions:
                        captions.append(caption)
                    if len(captions) == captions_per_image:
                        break
                records += [{"image": name, "caption": caption} for caption in captions]
            self.files[f"corpus/captions.{split}.json"] = json.dumps(records)
            self.counts["corpus"][split] = {"images": image_count, "captions": len(records)}

    def _new_corpus_scene(self, sampler: SceneSampler) -> Scene:
        for _ in range(MAX_ATTEMPTS):
            scene = sampler.scene()
            if self._claim([scene]):
                return scene
        raise BenchError(f"synth: could not draw a new corpus scene in {MAX_ATTEMPTS} tries; lower the corpus size")


def _star_edits(edits: list[Edit], reference: int, target: int) -> list[Edit]:
    """The edits from set member ``reference`` to ``target`` (construction indices; 0 is the base)."""
    if reference == 0:
        return [edits[target - 1]]
    undo = edits[reference - 1].inverse()
    return [undo] if target == 0 else [undo, edits[target - 1]]
