"""What every CIR method provides to the one training loop and evaluation harness.

A method owns its model, its losses, its trainable parameters and how it encodes queries and gallery images.
It never knows which regularizer trains it: regularizers only see the model and a loss closure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """A method's default optimisation recipe (the anchors' published settings, scaled to the embedded default)."""

    lr: float
    epochs: int
    batch_size: int
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"  # "cosine", "onecycle" or "constant"


class CIRMethod(nn.Module):
    """Base class of the registered CIR methods.

    Inputs: ``reference`` and ``target`` are a batch of images as this method wants them: preprocessed pixels,
    or, when ``frozen_image_encoder`` is not None, that encoder's outputs (computed once and cached on disk by
    the harness). ``text`` is a list of strings, or the frozen text encoder's outputs when
    ``frozen_text_encoder`` is not None.
    """

    Config: ClassVar[type]  # the method's frozen settings dataclass; the constructor takes one instance
    recipe: ClassVar[Recipe]
    method_name: ClassVar[str]  # set by ``register_method``

    def image_transform(self) -> Callable:
        """PIL image -> preprocessed tensor for this method's image encoder."""
        raise NotImplementedError

    def frozen_image_encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Pixels -> features of a frozen image tower whose outputs may be cached, or None (images stay pixels)."""
        return None

    def frozen_text_encoder(self) -> Callable[[Sequence[str]], torch.Tensor] | None:
        """Texts -> features of a frozen text tower whose outputs may be cached, or None (texts stay strings)."""
        return None

    def feature_cache_key(self) -> dict[str, Any]:
        """What determines the frozen encoders' outputs (backbone, weights, transform): the feature-cache key."""
        raise NotImplementedError

    def losses(self, reference, text, target) -> dict[str, torch.Tensor]:
        """Named loss terms of a batch of triplets; the training loss is their sum."""
        raise NotImplementedError

    def encode_queries(self, reference, text) -> torch.Tensor:
        """Composed query features ``[B, E]``."""
        raise NotImplementedError

    def encode_targets(self, target) -> torch.Tensor:
        """Gallery features ``[B, E]``, or ``[B, T, E]`` for methods scoring by the max over T tokens."""
        raise NotImplementedError

    def lora_targets(self) -> dict[str, list[str]]:
        """Trainable towers (attribute names) and the module names inside each that LoRA adapts by default."""
        raise NotImplementedError

    def describe_backbone(self) -> dict[str, Any]:
        """The backbone's identity for result records."""
        raise NotImplementedError
