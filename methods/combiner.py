"""``combiner``: CLIP4Cir stage 2 (Baldrati et al., TOMM 2023), a Combiner network over a frozen CLIP.

Text and image projections (ReLU, dropout), a mixing branch and a sigmoid dynamic-scalar branch;
output = normalize(mix + λ·text + (1 − λ)·image); contrastive cross-entropy over in-batch targets with CLIP4Cir's
fixed logit scale. Widths scale with the backbone's embedding size (P = 4D, H = 8D as for RN50x4). CLIP is
frozen, so its image and text features come from the harness's on-disk feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import file_identity
from bench.backbones.clip import TINY_CLIP, load_clip
from methods import register_method
from methods.base import CIRMethod, Recipe
from methods.clip_common import clip_cache_key


@dataclass(frozen=True)
class CombinerConfig:
    """Settings of the Combiner method."""

    backbone: str = TINY_CLIP
    pretrained: str | None = "synth"
    stage1_checkpoint: str | None = None  # a clip4cir run's best.pt: stage 2 on its fine-tuned encoders
    projection_factor: int = 4
    hidden_factor: int = 8
    dropout: float = 0.5
    logit_scale: float = 100.0
    transform: str = "targetpad"


class CombinerNetwork(nn.Module):
    """The Combiner of CLIP4Cir over raw (unnormalised) image and text features of width ``dim``."""

    def __init__(self, dim: int, projection: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.text_projection = nn.Sequential(nn.Linear(dim, projection), nn.ReLU(), nn.Dropout(dropout))
        self.image_projection = nn.Sequential(nn.Linear(dim, projection), nn.ReLU(), nn.Dropout(dropout))
        self.mixing = nn.Sequential(
            nn.Linear(2 * projection, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1), nn.Sigmoid()
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The normalised composed feature of reference ``image`` and modification ``text`` features."""
        joint = torch.cat([self.text_projection(text), self.image_projection(image)], dim=-1)
        scalar = self.dynamic_scalar(joint)
        return F.normalize(self.mixing(joint) + scalar * text + (1 - scalar) * image, dim=-1)


def load_stage1(clip_model: nn.Module, checkpoint: str) -> None:
    """Copy a clip4cir run's fine-tuned CLIP tensors (``clip_model.*`` in its checkpoint) into ``clip_model``."""
    from bench.errors import BenchError
    from bench.train import load_checkpoint

    trainable = load_checkpoint(checkpoint)["trainable"]
    prefix = "clip_model."
    tensors = {k[len(prefix) :]: v for k, v in trainable.items() if k.startswith(prefix) and "lora_" not in k}
    if not tensors:
        raise BenchError(f"stage1_checkpoint: {checkpoint} holds no fully fine-tuned CLIP tensors (a clip4cir run?)")
    missing = [k for k in tensors if k not in clip_model.state_dict()]
    if missing:
        raise BenchError(f"stage1_checkpoint: {checkpoint} does not fit this backbone (unknown tensor {missing[0]})")
    clip_model.load_state_dict(tensors, strict=False)


@register_method("combiner")
class Combiner(CIRMethod):
    """CLIP4Cir stage 2: a trained Combiner over frozen CLIP features."""

    Config = CombinerConfig
    # CLIP4Cir's stage-2 optimiser is Adam at lr 2e-5 for RN50x4 over hundreds of epochs; the tiny embedded
    # backbone converges with a larger rate in tens of epochs (AdamW with the CLIP4Cir default decay).
    recipe = Recipe(lr=5e-4, epochs=30, batch_size=128, weight_decay=0.01, schedule="cosine")

    def __init__(self, config: CombinerConfig) -> None:
        super().__init__()
        from bench.data.transforms import build_transform

        self.config = config
        self.backbone = load_clip(config.backbone, config.pretrained)
        self.clip_model = self.backbone.model
        if config.stage1_checkpoint:
            load_stage1(self.clip_model, config.stage1_checkpoint)
        self.clip_model.requires_grad_(False)
        dim = self.backbone.embed_dim
        self.combiner = CombinerNetwork(dim, config.projection_factor * dim, config.hidden_factor * dim, config.dropout)
        self.transform = build_transform(config.transform, self.backbone.resolution)

    def train(self, mode: bool = True):
        """Train the Combiner; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip_model.eval()
        return self

    def image_transform(self):
        return self.transform

    def frozen_image_encoder(self):
        return self.backbone.encode_images

    def frozen_text_encoder(self):
        return self.backbone.encode_texts

    def feature_cache_key(self) -> dict[str, Any]:
        return clip_cache_key(self.backbone, self.transform, extra=file_identity(self.config.stage1_checkpoint))

    def losses(self, reference, text, target) -> dict[str, torch.Tensor]:
        logits = self.config.logit_scale * self.encode_queries(reference, text) @ self.encode_targets(target).T
        labels = torch.arange(len(logits), device=logits.device)
        return {"contrastive": F.cross_entropy(logits, labels)}

    def encode_queries(self, reference, text) -> torch.Tensor:
        return self.combiner(reference, text)

    def encode_targets(self, target) -> torch.Tensor:
        return F.normalize(target, dim=-1)

    def lora_targets(self) -> dict[str, list[str]]:
        linear = [
            "text_projection.0",
            "image_projection.0",
            "mixing.0",
            "mixing.3",
            "dynamic_scalar.0",
            "dynamic_scalar.3",
        ]
        return {"combiner": linear}

    def describe_backbone(self) -> dict[str, Any]:
        return self.backbone.describe()
