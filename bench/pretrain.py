"""Contrastive image-text pre-training of the tiny backbones on the synthetic world's image-caption corpus.

Real CLIP / BLIP-2 weights cannot be downloaded here, so the embedded default fine-tunes backbones the suite
pre-trains itself (``python -m bench pretrain --family clip|blip2``). Weights are cached under
``<cache>/pretrained/`` by a hash of the pre-training config and the synthetic world's fingerprint; methods ask
for them with ``pretrained="synth"`` and the first such run triggers pre-training, with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError

FAMILIES = ("clip", "blip2")
# Bump when the pre-training procedure changes, so cached weights of the old procedure are not reused.
PRETRAIN_VERSION = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pre-training run (defaults: about 5 minutes per family on 2 CPU cores)."""

    family: str = "clip"
    arch: str | None = None  # default: the family's tiny config
    steps: int = 500
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    eval_images: int = 1000


def default_arch(family: str) -> str:
    """The tiny CPU config of ``family``."""
    if family == "clip":
        from bench.backbones.clip import TINY_CLIP

        return TINY_CLIP
    if family == "blip2":
        from bench.backbones.blip2 import TINY_BLIP2

        return TINY_BLIP2
    raise BenchError(f"--family: unknown backbone family {family!r} (valid: {', '.join(FAMILIES)})")


class _ContrastiveModel:
    """The family-specific part of pre-training: building the model and its image-text similarity logits."""

    def __init__(self, family: str, arch: str) -> None:
        import torch

        self.family = family
        if family == "clip":
            from bench.backbones.clip import load_clip

            self.backbone = load_clip(arch)
            self.temperature = None
        else:
            from bench.backbones.blip2 import load_blip2

            self.backbone = load_blip2(arch)
            # BLIP-2's image-text contrastive loss learns its temperature (LAVIS ``temp``, init 0.07).
            self.temperature = torch.nn.Parameter(torch.tensor(math.log(0.07)))
        self.modules = [self.backbone.model]

    def parameters(self) -> list:
        extra = [self.temperature] if self.temperature is not None else []
        return [p for m in self.modules for p in m.parameters()] + extra

    def train(self, mode: bool) -> None:
        for module in self.modules:
            module.train(mode)

    def logits(self, pixels, texts: list[str]):
        """``[B_images, B_texts]`` similarity logits."""
        import torch.nn.functional as F

        if self.family == "clip":
            model = self.backbone.model
            image = F.normalize(model.encode_image(pixels), dim=-1)
            text = F.normalize(self.backbone.encode_texts(texts), dim=-1)
            return model.logit_scale.exp() * image @ text.T
        tokens = self.backbone.query_embeddings(self.backbone.image_tokens(pixels))
        ids, mask = self.backbone.tokenize(texts)
        text = self.backbone.text_embedding(ids, mask)
        # BLIP-2's image-text similarity: the best-matching query token per pair.
        similarity = (tokens @ text.T.unsqueeze(0)).amax(dim=1)
        return similarity / self.temperature.exp()

    def state_dict(self) -> dict[str, Any]:
        return self.backbone.model.state_dict()


def _corpus(world: Path, split: str) -> list[dict[str, str]]:
    path = world / "corpus" / f"captions.{split}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: the synthetic world has no pre-training corpus") from None


def _load_pixels(world: Path, names: list[str], transform):
    import torch
    from PIL import Image

    images = []
    for name in names:
        with Image.open(world / "corpus" / "images" / f"{name}.png") as img:
            images.append(transform(img.convert("RGB")))
    return torch.stack(images)


def _cache_path(config: PretrainConfig, world_fingerprint: str) -> Path:
    from bench.io import cache_root

    key = json.dumps(
        {"config": asdict(config), "world": world_fingerprint, "version": PRETRAIN_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "pretrained" / f"{config.family}-{config.arch}-{digest}.pt"


def image_to_text_accuracy(model: _ContrastiveModel, pixels, captions: list[str], batch_size: int = 250) -> float:
    """Held-out image-to-text R@1 (%): each image must rank its own caption first among all ``captions``."""
    import torch

    model.train(False)
    with torch.no_grad():
        rows = [model.logits(pixels[s : s + batch_size], captions) for s in range(0, len(pixels), batch_size)]
    best = torch.cat(rows).argmax(dim=1)
    return 100.0 * float((best == torch.arange(len(captions))).float().mean())


def pretrain(config: PretrainConfig, world: Path, out: Path, progress: bool | None = None) -> dict[str, Any]:
    """Pre-train ``config`` on the corpus of the synthetic ``world``; writes weights to ``out`` and metrics beside.

    Returns the metrics: held-out image-to-text R@1 over ``eval_images`` captions, chance, and the time taken.
    """
    import random

    import torch
    from tqdm import tqdm

    from bench.data.transforms import build_transform
    from bench.io import atomic_write, write_json

    if config.arch is None:
        config = replace(config, arch=default_arch(config.family))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = _ContrastiveModel(config.family, config.arch)
    transform = build_transform("targetpad", model.backbone.resolution)
    train_rows = _corpus(world, "train")
    by_image: dict[str, list[str]] = {}
    for row in train_rows:
        by_image.setdefault(row["image"], []).append(row["caption"])
    names = sorted(by_image)
    pixels = _load_pixels(world, names, transform)
    val_rows = _corpus(world, "val")
    seen, held_out = set(), []
    for row in val_rows:
        if row["image"] not in seen:
            seen.add(row["image"])
            held_out.append(row)
    held_out = held_out[: config.eval_images]
    val_pixels = _load_pixels(world, [r["image"] for r in held_out], transform)
    val_captions = [r["caption"] for r in held_out]

    parameters = model.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    started = time.perf_counter()
    model.train(True)
    bar = tqdm(
        range(config.steps), desc=f"pre-training {config.family}", disable=None if progress is None else not progress
    )
    for _ in bar:
        batch = rng.sample(range(len(names)), min(config.batch_size, len(names)))
        captions = [rng.choice(by_image[names[i]]) for i in batch]
        logits = model.logits(pixels[batch], captions)
        labels = torch.arange(len(batch))
        loss = (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        ) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    accuracy = image_to_text_accuracy(model, val_pixels, val_captions)
    metrics = {
        "config": asdict(config),
        "image_to_text_r1": accuracy,
        "chance_r1": 100.0 / len(val_captions),
        "eval_captions": len(val_captions),
        "train_images": len(names),
        "seconds": time.perf_counter() - started,
    }
    if model.temperature is not None:
        metrics["temperature"] = float(model.temperature.exp())
    atomic_write(out, lambda f: torch.save(model.state_dict(), f), mode="wb")
    write_json(out.with_suffix(".json"), metrics)
    return metrics


def pretrained_weights(family: str, arch: str | None = None, config: PretrainConfig | None = None) -> Path:
    """The cached weights of the suite's pre-training of ``family``/``arch``, pre-training on first use."""
    from bench.data.synth import SynthConfig, ensure_synth_world

    arch = arch or default_arch(family)
    if arch != default_arch(family):
        raise BenchError(
            f"--pretrained synth: only the tiny config {default_arch(family)} is pre-trained by the suite, not {arch}"
        )
    config = config or PretrainConfig(family=family, arch=arch)
    synth = SynthConfig()
    path = _cache_path(config, synth.fingerprint())
    if not path.is_file():
        print(f"pre-training {family} ({arch}) on the synthetic corpus once; cached at {path}")
        metrics = pretrain(config, ensure_synth_world(config=synth), path)
        print(f"held-out image-to-text R@1 {metrics['image_to_text_r1']:.1f}% (chance {metrics['chance_r1']:.1f}%)")
    return path
