"""The knobs of the synthetic world, and the fingerprint that names its cache folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from bench.errors import BenchError

# Bump whenever the generator's output for a given config changes (new scenes, wording, rendering, layout):
# the fingerprint includes it, so stale cached worlds are never reused.
GENERATOR_VERSION = 1

# Inclusive ranges of the integer knobs; a knob missing here only has to be a non-negative integer.
INTEGER_RANGES = {
    "image_size": (16, 1024),
    "supersample": (1, 8),
    "max_objects": (2, 6),
    "heldout_combinations": (0, 8),
    "cirr_queries_per_set": (1, 30),
}
POSITIVE_COUNTS = (
    "cirr_train_queries",
    "cirr_val_queries",
    "cirr_test1_queries",
    "fashioniq_train_queries",
    "fashioniq_val_queries",
    "fashioniq_test_queries",
    "corpus_train_images",
    "corpus_val_images",
    "corpus_train_captions_per_image",
    "corpus_val_captions_per_image",
)
RATES = ("fashioniq_distractor_rate", "full_reference_rate")


@dataclass(frozen=True)
class SynthConfig:
    """Every setting of the synthetic CIR world; equal configs generate byte-identical worlds.

    Counts are queries (triplets) per split; FashionIQ counts are per category (dress, shirt and toptee each).
    ``cirr_queries_per_set`` queries are drawn from each six-image set. ``fashioniq_distractor_rate`` is the share of
    FashionIQ queries that also put a half-edited image (only one of the two described changes) in the gallery.
    ``heldout_combinations`` (colour, shape) pairs never occur in a training or corpus image. A modification text
    names the edited object with all its attributes at ``full_reference_rate``, else minimally.
    """

    seed: int = 0
    image_size: int = 64
    supersample: int = 2
    max_objects: int = 4
    heldout_combinations: int = 6
    cirr_train_queries: int = 3000
    cirr_val_queries: int = 1000
    cirr_test1_queries: int = 1000
    cirr_queries_per_set: int = 8
    fashioniq_train_queries: int = 1000
    fashioniq_val_queries: int = 400
    fashioniq_test_queries: int = 400
    fashioniq_distractor_rate: float = 0.5
    corpus_train_images: int = 20000
    corpus_val_images: int = 1000
    corpus_train_captions_per_image: int = 2
    corpus_val_captions_per_image: int = 1
    full_reference_rate: float = 0.2

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in RATES:
                if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                    raise BenchError(f"synth config: {field.name} must be a number in [0, 1], got {value!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise BenchError(f"synth config: {field.name} must be an integer, got {value!r}")
            low, high = INTEGER_RANGES.get(field.name, (1 if field.name in POSITIVE_COUNTS else 0, None))
            if value < low or (high is not None and value > high):
                allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise BenchError(f"synth config: {field.name} must be {allowed}, got {value}")

    def to_json(self) -> dict:
        """The settings as a JSON-ready dict (rates as floats, so ``1`` and ``1.0`` give one fingerprint)."""
        settings = asdict(self)
        for name in RATES:
            settings[name] = float(settings[name])
        return settings

    def fingerprint(self) -> str:
        """A stable 16-hex-digit key of these settings and the generator version (the cache folder's name)."""
        payload = json.dumps({"generator_version": GENERATOR_VERSION, "config": self.to_json()}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


DEFAULT_CONFIG = SynthConfig()
"""The default world: CIRR 3000/1000/1000 queries, FashionIQ 1000/400/400 per category, a 20k + 1k corpus."""
