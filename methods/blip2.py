"""BLIP-2 Q-Former fusion for CIR, after SPRC (ICLR 2024, chunmeifeng/SPRC) on LAVIS BLIP-2.

The ViT is frozen (its tokens are cached by the harness); the Q-Former, its query tokens, the text embeddings, both
projections and a learnable temperature are trained. A query is the reference image's tokens and the modification
text fused by the Q-Former (``Blip2Backbone.fuse`` / ``compose``); a gallery image is its Q per-query features, scored
by the max over them. SPRC's optional prompt branch adds learnable prompt tokens read with the text alone, a second
contrastive loss and an MSE alignment between the fused queries and the prompt (``prompt_alignment``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bench.backbones import file_identity
from bench.backbones.blip2 import FUSION_MODES, TINY_BLIP2, load_blip2
from bench.errors import BenchError
from methods import register_method
from methods.base import CIRMethod, Recipe

# LAVIS BLIP-2 keeps its learned temperature in this range.
TEMPERATURE_RANGE = (1e-3, 0.5)


def max_token_logits(queries: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, G]``: for each query ``[B, E]`` and gallery item ``[G, T, E]``, the max over the item's T tokens
    of the dot product, divided by ``temperature``."""
    return torch.einsum("be,gte->bgt", queries, targets).amax(dim=-1) / temperature


@register_method("blip2")
class Blip2Fusion(CIRMethod):
    """SPRC-style BLIP-2 fusion: a frozen ViT, a trained Q-Former, max-over-query-tokens retrieval."""

    @dataclass(frozen=True)
    class Config:
        """Settings of the BLIP-2 fusion method.

        ``backbone``: a suite config name, a local transformers folder or a hub id (``load_blip2``); ``pretrained``:
        a weights file loaded on top (LAVIS or transformers format). ``fusion``: ``"sprc"`` (two Q-Former passes),
        ``"cls"`` or ``"mean"`` (see ``Blip2Backbone.compose``). ``prompt_alignment`` adds SPRC's prompt branch with
        loss weights ``prompt_weight`` and ``align_weight`` (SPRC: 1 / 1 on FashionIQ, 0.4 / 0.4 on CIRR). The
        temperature starts at ``temperature_init`` unless the weights file carries LAVIS's ``temp``, which wins.
        """

        backbone: str = TINY_BLIP2
        pretrained: str | None = "synth"
        fusion: str = "sprc"
        prompt_alignment: bool = False
        prompt_weight: float = 1.0
        align_weight: float = 1.0
        temperature_init: float = 0.07

        def __post_init__(self) -> None:
            if self.fusion not in FUSION_MODES:
                raise BenchError(f"method blip2: unknown fusion {self.fusion!r} (valid: {', '.join(FUSION_MODES)})")
            low, high = TEMPERATURE_RANGE
            if not low <= self.temperature_init <= high:
                raise BenchError(
                    f"method blip2: temperature_init must be in [{low}, {high}], got {self.temperature_init}"
                )
            for name in ("prompt_weight", "align_weight"):
                if not getattr(self, name) >= 0:
                    raise BenchError(f"method blip2: {name} must be >= 0, got {getattr(self, name)}")

    # SPRC: AdamW betas (0.9, 0.98), eps 1e-7, wd 0.05, OneCycleLR, batch 128, lr 2e-5 / 1e-5 for 30 / 50 epochs from
    # pretrained BLIP-2. The tiny backbone starts from random weights on the small synthetic sets, so it takes a
    # larger lr and fewer epochs on a CPU budget; batch 64 keeps enough in-batch negatives.
    recipe = Recipe(
        lr=1e-4, epochs=10, batch_size=64, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-7, schedule="onecycle"
    )

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.backbone = load_blip2(config.backbone, config.pretrained)
        self.model = self.backbone.model
        for module in (self.model.vision_model, self.model.itm_head):  # the ITM head has no part in retrieval
            module.requires_grad_(False)
        temperature = self.backbone.extras.get("temp")
        start = float(temperature) if temperature is not None else config.temperature_init
        self.log_temperature = nn.Parameter(torch.tensor(math.log(start)))
        if config.prompt_alignment:
            qformer = self.model.config.qformer_config
            shape = (1, self.backbone.num_query_tokens, qformer.hidden_size)
            prompt = self.backbone.extras.get("prompt_tokens")
            if prompt is None:
                prompt = torch.randn(shape) * qformer.initializer_range
            elif prompt.shape != shape:
                raise BenchError(
                    f"--pretrained: {config.pretrained} has prompt_tokens of shape {tuple(prompt.shape)}, "
                    f"the model needs {shape}"
                )
            self.prompt_tokens = nn.Parameter(prompt.detach().clone().float())
        self.model.vision_model.eval()

    def train(self, mode: bool = True):
        """Set training mode; the frozen ViT always stays in eval mode."""
        super().train(mode)
        self.model.vision_model.eval()
        return self

    @property
    def temperature(self) -> torch.Tensor:
        """The learned contrastive temperature, clamped to ``TEMPERATURE_RANGE``."""
        return self.log_temperature.exp().clamp(*TEMPERATURE_RANGE)

    def image_transform(self) -> Callable:
        """SPRC's preprocessing: target pad 1.25, resize and crop to the ViT's resolution, CLIP mean/std (the
        constants LAVIS BLIP-2 uses too)."""
        from bench.data.transforms import build_transform

        return build_transform("targetpad", self.backbone.resolution)

    def frozen_image_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Pixels -> the frozen ViT's tokens ``[B, N, Dv]``."""

        @torch.no_grad()
        def encode(pixels: torch.Tensor) -> torch.Tensor:
            return self.backbone.image_tokens(pixels)

        return encode

    def feature_cache_key(self) -> dict[str, Any]:
        """The backbone, the identity of its weights file, the transform and the kind of features cached."""
        return {
            "backbone": self.config.backbone,
            "vision_config": self.model.config.vision_config.to_dict(),
            "weights": file_identity(self.backbone.weights),
            "transform": repr(self.image_transform()),
            "features": "blip2-vision-tokens",
        }

    def losses(self, reference, text, target) -> dict[str, torch.Tensor]:
        """``contrastive``: cross-entropy of each composed query against the in-batch targets (max over the target's
        query tokens, over the temperature). With ``prompt_alignment``, SPRC's ``prompt`` (the same loss for the
        prompt branch) and ``align`` (MSE between the mean fused query state and the mean prompt token, the prompt
        detached as in SPRC), each times its weight."""
        input_ids, attention_mask = self.backbone.tokenize(text)
        fused = self.backbone.fuse(reference, input_ids, attention_mask)
        queries = self.backbone.compose(fused, input_ids, attention_mask, self.config.fusion)
        targets = self.encode_targets(target)
        labels = torch.arange(queries.shape[0], device=queries.device)
        terms = {"contrastive": F.cross_entropy(max_token_logits(queries, targets, self.temperature), labels)}
        if self.config.prompt_alignment:
            prompt = self.prompt_tokens.expand(queries.shape[0], -1, -1)
            prompt_queries = self.backbone.prompt_query(prompt, input_ids, attention_mask)
            prompt_logits = max_token_logits(prompt_queries, targets, self.temperature)
            terms["prompt"] = self.config.prompt_weight * F.cross_entropy(prompt_logits, labels)
            fused_mean = fused[:, : self.backbone.num_query_tokens].mean(dim=1)
            terms["align"] = self.config.align_weight * F.mse_loss(fused_mean, prompt.detach().mean(dim=1))
        return terms

    def encode_queries(self, reference, text) -> torch.Tensor:
        """Composed query features ``[B, E]`` (L2-normalised) of reference image tokens and texts."""
        input_ids, attention_mask = self.backbone.tokenize(text)
        return self.backbone.fused_query(reference, input_ids, attention_mask, self.config.fusion)

    def encode_targets(self, target) -> torch.Tensor:
        """Gallery features ``[B, Q, E]``, one L2-normalised feature per query token."""
        return self.backbone.query_embeddings(target)

    def lora_targets(self) -> dict[str, list[str]]:
        """The Q-Former; LoRA on the query and value projections of its self- and cross-attention."""
        return {"model.qformer": ["query", "value"]}

    def describe_backbone(self) -> dict[str, Any]:
        """The backbone's identity for result records."""
        return self.backbone.describe()
