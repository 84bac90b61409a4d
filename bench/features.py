"""Model inputs for training and evaluation, with an on-disk cache of frozen-tower features.

A method whose image (or text) tower is frozen gets that tower's outputs instead of pixels (or strings). Those
outputs depend only on the frozen weights, the transform and the data, so they are computed once, stored under
the cache directory keyed by a hash of all three, and reused by every later run and sweep trial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.data.base import CIRSplit
from bench.io import cache_root


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cached(kind: str, key: dict[str, Any], compute: Callable[[], Any]):
    """``compute()``'s tensor, stored once under ``cache_root()/features/<kind>-<hash>.pt``."""
    import torch

    from bench.io import atomic_write

    path = cache_root() / "features" / f"{kind}-{_digest(key)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    atomic_write(path, lambda f: torch.save(value, f), mode="wb")
    return value


class ImageInputs:
    """Per-name model inputs of images: frozen-encoder features (cached) or preprocessed pixels (in memory)."""

    def __init__(self, tensor, names: Sequence[str]) -> None:
        self.tensor = tensor
        self.row = {name: i for i, name in enumerate(names)}

    def take(self, names: Sequence[str]):
        """The inputs of ``names`` stacked along the first dimension."""
        return self.tensor[[self.row[n] for n in names]]


def build_image_inputs(
    method, splits: Sequence[CIRSplit], batch_size: int = 256, use_cache: bool = True
) -> ImageInputs:
    """Inputs of every image the ``splits`` refer to (galleries, references, targets), each computed once."""
    import torch

    from bench.evaluate import encode_images

    paths: dict[str, Path] = {}
    owner: dict[str, CIRSplit] = {}
    for split in splits:
        needed = list(split.gallery_names) + [q.reference for q in split.queries]
        needed += [q.target for q in split.queries if q.target is not None]
        for name in needed:
            if name not in paths:
                paths[name] = split.image_path(name)
                owner[name] = split
    names = sorted(paths)
    transform = method.image_transform()
    encoder = method.frozen_image_encoder()

    def compute():
        by_split: dict[int, list[str]] = {}
        for name in names:
            by_split.setdefault(id(owner[name]), []).append(name)
        rows = {}
        for group in by_split.values():
            split = owner[group[0]]
            encode = encoder if encoder is not None else (lambda pixels: pixels)
            for name, row in zip(group, encode_images(encode, split, group, transform, batch_size), strict=True):
                rows[name] = row
        return torch.stack([rows[n] for n in names])

    if encoder is None or not use_cache:
        return ImageInputs(compute(), names)
    key = {"method": method.feature_cache_key(), "images": [(n, str(paths[n])) for n in names]}
    return ImageInputs(_cached("images", key, compute), names)


class TextInputs:
    """Per-string model inputs of texts: frozen-encoder features (cached) or the strings themselves."""

    def __init__(self, texts: Sequence[str], features=None) -> None:
        self.features = features
        self.row = {t: i for i, t in enumerate(texts)}

    def take(self, texts: Sequence[str]):
        """The inputs of ``texts``: a feature tensor, or the list of strings when the text tower is trained."""
        if self.features is None:
            return list(texts)
        return self.features[[self.row[t] for t in texts]]


def build_text_inputs(method, texts: Sequence[str], batch_size: int = 512, use_cache: bool = True) -> TextInputs:
    """Inputs of every distinct string in ``texts``."""
    from bench.evaluate import encode_texts

    distinct = sorted(set(texts))
    encoder = method.frozen_text_encoder()
    if encoder is None:
        return TextInputs(distinct)

    def compute():
        return encode_texts(encoder, distinct, batch_size)

    if not use_cache:
        return TextInputs(distinct, compute())
    key = {"method": method.feature_cache_key(), "texts": distinct}
    return TextInputs(distinct, _cached("texts", key, compute))
