"""``clip4cir``: CLIP4Cir stage 1 (Baldrati et al., TOMM 2023): fine-tune CLIP's text, image or both encoders
with element-wise-sum fusion, query = normalize(image + text), and a fixed logit scale of 100.

Stage 2 is the ``combiner`` method with ``stage1_checkpoint`` set to this run's ``best.pt``. As in CLIP4Cir the
model stays in eval mode while training (ResNet BatchNorm statistics stay frozen). A frozen tower's outputs come
from the feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.backbones.clip import TINY_CLIP, load_clip
from bench.errors import BenchError
from methods import register_method
from methods.base import CIRMethod, Recipe
from methods.clip_common import clip_cache_key

ENCODER_CHOICES = ("both", "text", "image")
# open_clip's transformer MLPs are plain Linear layers that peft can wrap; its attention is nn.MultiheadAttention,
# whose out_proj weight is used functionally, so a LoRA wrapper there would never run.
CLIP_LORA_MODULES = ["c_fc", "c_proj"]


@dataclass(frozen=True)
class Clip4CirConfig:
    """Settings of CLIP4Cir stage 1."""

    backbone: str = TINY_CLIP
    pretrained: str | None = "synth"
    encoders: str = "both"
    logit_scale: float = 100.0
    transform: str = "targetpad"


@register_method("clip4cir")
class Clip4Cir(CIRMethod):
    """CLIP encoders fine-tuned for CIR with element-wise-sum fusion."""

    Config = Clip4CirConfig
    # CLIP4Cir stage 1: AdamW, betas (0.9, 0.999), eps 1e-7, wd 0.01 at lr 2e-6 for RN50x4; the tiny embedded
    # backbone needs a larger rate to move within a few epochs.
    recipe = Recipe(lr=5e-5, epochs=6, batch_size=128, weight_decay=0.01, eps=1e-7, schedule="cosine")

    def __init__(self, config: Clip4CirConfig) -> None:
        super().__init__()
        from bench.data.transforms import build_transform

        if config.encoders not in ENCODER_CHOICES:
            raise BenchError(f"encoders: unknown choice {config.encoders!r} (valid: {', '.join(ENCODER_CHOICES)})")
        self.config = config
        self.backbone = load_clip(config.backbone, config.pretrained)
        self.clip_model = self.backbone.model
        self.train_image = config.encoders in ("both", "image")
        self.train_text = config.encoders in ("both", "text")
        for name, parameter in self.clip_model.named_parameters():
            in_image_tower = name.startswith("visual.")
            parameter.requires_grad_(
                name != "logit_scale" and (self.train_image if in_image_tower else self.train_text)
            )
        self.transform = build_transform(config.transform, self.backbone.resolution)

    def train(self, mode: bool = True):
        """CLIP4Cir keeps the model in eval mode while fine-tuning; gradients still flow."""
        return super().train(False)

    def image_transform(self):
        return self.transform

    def frozen_image_encoder(self):
        return None if self.train_image else self.backbone.encode_images

    def frozen_text_encoder(self):
        return None if self.train_text else self.backbone.encode_texts

    def feature_cache_key(self) -> dict[str, Any]:
        return clip_cache_key(self.backbone, self.transform)

    def _image_features(self, images) -> torch.Tensor:
        return self.backbone.encode_images(images) if self.train_image else images

    def losses(self, reference, text, target) -> dict[str, torch.Tensor]:
        logits = self.config.logit_scale * self.encode_queries(reference, text) @ self.encode_targets(target).T
        labels = torch.arange(len(logits), device=logits.device)
        return {"contrastive": F.cross_entropy(logits, labels)}

    def encode_queries(self, reference, text) -> torch.Tensor:
        text_features = self.backbone.encode_texts(text) if self.train_text else text
        return F.normalize(self._image_features(reference) + text_features, dim=-1)

    def encode_targets(self, target) -> torch.Tensor:
        return F.normalize(self._image_features(target), dim=-1)

    def lora_targets(self) -> dict[str, list[str]]:
        towers = {}
        if self.train_image:
            towers["clip_model.visual.transformer"] = CLIP_LORA_MODULES
        if self.train_text:
            towers["clip_model.transformer"] = CLIP_LORA_MODULES
        return towers

    def describe_backbone(self) -> dict[str, Any]:
        return self.backbone.describe()
