"""Zero-training baselines (image-only, text-only, image+text sum) on any open_clip backbone: every CIR table's
sanity rows, evaluated through the same harness as the trained methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.backbones.clip import TINY_CLIP
from bench.evaluate import ZERO_SHOT_BASELINES


@dataclass(frozen=True)
class ZeroShotConfig:
    """Settings of a zero-training evaluation (``python -m bench eval``)."""

    dataset: str = "synth-fiq"
    data_root: str | None = None
    split: str = "val"
    backbone: str = TINY_CLIP
    pretrained: str | None = "synth"
    baselines: tuple[str, ...] = ZERO_SHOT_BASELINES
    transform: str = "targetpad"
    batch_size: int = 256
    seed: int = 0


def run_zero_shot(config: ZeroShotConfig, results_dir: Path, submissions_dir: Path | None = None) -> list[Path]:
    """Evaluate each baseline of ``config``; returns the record paths (val) or the ranking files (test splits).

    Images and texts are encoded once and shared by all baselines. All inputs are validated before any file
    is written.
    """
    import torch

    from bench.backbones.clip import load_clip
    from bench.config import config_dict
    from bench.data import get_dataset
    from bench.data.transforms import build_transform
    from bench.evaluate import (
        aggregate,
        encode_images,
        encode_texts,
        hits_to_strings,
        image_names,
        score_split,
        write_test_rankings,
        zero_shot_queries,
    )
    from bench.records import new_record, write_record

    spec = get_dataset(config.dataset)
    for kind in config.baselines:
        zero_shot_queries(kind, torch.zeros(1, 1), torch.zeros(1, 1))  # validates the names up front
    splits = spec.load(config.split, spec.root(config.data_root))
    torch.manual_seed(config.seed)
    backbone = load_clip(config.backbone, config.pretrained)
    transform = build_transform(config.transform, backbone.resolution)
    has_targets = all(q.target is not None for split in splits for q in split.queries)

    per_baseline: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in config.baselines}
    per_query: dict[str, dict[str, dict[str, str]]] = {kind: {} for kind in config.baselines}
    written: list[Path] = []
    for split in splits:
        names = image_names(split)
        features = encode_images(backbone.encode_images, split, names, transform, config.batch_size)
        row_of = {name: i for i, name in enumerate(names)}
        gallery = features[: len(split.gallery_names)]
        references = features[[row_of[q.reference] for q in split.queries]]
        texts = encode_texts(backbone.encode_texts, [split.query_text(q) for q in split.queries])
        subset = split.subset or "all"
        for kind in config.baselines:
            queries = zero_shot_queries(kind, references, texts)
            if not has_targets:
                out = (submissions_dir or results_dir / "submissions" / f"{spec.name}-{backbone.arch}") / kind
                written += write_test_rankings(split, queries, gallery, out)
                continue
            score = score_split(split, queries, gallery)
            per_baseline[kind][subset] = score.metrics
            per_query[kind][subset] = hits_to_strings(score.hits)
    if not has_targets:
        return written
    for kind in config.baselines:
        record = new_record(
            method=f"zero-shot-{kind}",
            backbone=backbone.describe(),
            regime="zero-shot",
            regularizer={"name": "none"},
            seed=config.seed,
            dataset=spec.name,
            layout=spec.layout,
            split=config.split,
            config=config_dict(config),
            metrics=aggregate(spec.layout, per_baseline[kind]),
            per_query=per_query[kind],
        )
        written.append(write_record(record, results_dir))
    return written
