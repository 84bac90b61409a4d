"""The embedded synthetic CIR world: Pillow scenes of coloured shapes, written in FashionIQ's and CIRR's layouts.

A scene is one to four objects (8 shapes x 8 colours x 2 sizes, one per cell of a 3x3 grid) over a background
colour and texture. A query pairs a reference scene with a target made by edits (add, remove, replace, colour,
shape, size, move, background), each described in several phrasings that name objects unambiguously.

- CIRR layout: six-image sets of a base scene and five single-edit variants; queries between any two members.
- FashionIQ layout: a target is its candidate with two edits, one per caption; the categories are background
  textures (dress = plain, shirt = striped, toptee = checkered, see ``CATEGORY_TEXTURES``).
- Compositional split: some (colour, shape) pairs never appear in a training (or corpus) image; every val/test
  split shows each of them.
- Corpus: image-caption pairs of scenes disjoint from every CIR image, for contrastive pre-training.

``generate`` writes a world to a folder; ``ensure_synth_world`` keeps one per config in a cache. The manifest
(``manifest.json``) records the config, the held-out pairs, the counts and these conventions.
"""

from bench.data.synth.config import DEFAULT_CONFIG, GENERATOR_VERSION, SynthConfig
from bench.data.synth.world import CATEGORY_TEXTURES
from bench.data.synth.writer import ensure_synth_world, generate, read_synth_manifest

__all__ = [
    "CATEGORY_TEXTURES",
    "DEFAULT_CONFIG",
    "GENERATOR_VERSION",
    "SynthConfig",
    "ensure_synth_world",
    "generate",
    "read_synth_manifest",
]
