"""What the CLIP-based methods (``combiner``, ``clip4cir``) share: the feature-cache identity of their backbone."""

from __future__ import annotations

from typing import Any

from bench.backbones import file_identity
from bench.backbones.clip import ClipBackbone


def clip_cache_key(backbone: ClipBackbone, transform, extra: Any = None) -> dict[str, Any]:
    """The feature-cache key of a CLIP backbone's frozen towers under ``transform``."""
    return {
        "family": "clip",
        "arch": backbone.arch,
        "weights": file_identity(backbone.weights),
        "transform": repr(transform),
        "extra": extra,
    }
