"""Evaluation harness: encode a split, score it with the protocol in ``bench.metrics``, and test-split outputs.

Shared by the zero-training baselines and every trained method: a method only supplies query and gallery
features; how they are scored is decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.base import CIRSplit
from bench.errors import BenchError

ZERO_SHOT_BASELINES = ("image-only", "text-only", "sum")


@dataclass(frozen=True)
class SplitScore:
    """Recall metrics of one split (percentages) and the per-query hit vectors they were computed from."""

    metrics: dict[str, float]
    hits: dict[str, Any]


def image_names(split: CIRSplit) -> list[str]:
    """The gallery followed by every query reference not in it: each image of the split is encoded once."""
    names = list(split.gallery_names)
    seen = set(names)
    for query in split.queries:
        if query.reference not in seen:
            seen.add(query.reference)
            names.append(query.reference)
    return names


def encode_images(encode: Callable, split: CIRSplit, names: Sequence[str], transform: Callable, batch_size: int = 256):
    """Features ``[len(names), D]`` of the named images, loaded lazily through ``transform`` batch by batch."""
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(names), batch_size):
            batch = torch.stack([transform(split.load_image(n)) for n in names[start : start + batch_size]])
            chunks.append(encode(batch).float())
    return torch.cat(chunks) if chunks else torch.empty(0)


def encode_texts(encode: Callable, texts: Sequence[str], batch_size: int = 512):
    """Features ``[len(texts), D]`` of ``texts``."""
    import torch

    with torch.no_grad():
        return torch.cat([encode(list(texts[s : s + batch_size])).float() for s in range(0, len(texts), batch_size)])


def zero_shot_queries(kind: str, reference_features, text_features):
    """Query features of a zero-training baseline: the reference image, the text, or the sum of both (normalised)."""
    import torch.nn.functional as F

    if kind == "image-only":
        return reference_features
    if kind == "text-only":
        return text_features
    if kind == "sum":
        return F.normalize(reference_features, dim=-1) + F.normalize(text_features, dim=-1)
    raise BenchError(f"--baseline: unknown zero-training baseline {kind!r} (valid: {', '.join(ZERO_SHOT_BASELINES)})")


def score_split(split: CIRSplit, query_features, gallery_features) -> SplitScore:
    """Recall of ``split`` under its dataset's protocol (FashionIQ keeps the reference; CIRR removes it)."""
    from bench import metrics

    if any(q.target is None for q in split.queries):
        raise BenchError(f"{split.name}: has no targets (a test split); write its rankings with `bench eval` instead")
    targets = [q.target for q in split.queries]
    if split.dataset == "fashioniq":
        hits = metrics.fashioniq_hits(query_features, gallery_features, list(split.gallery_names), targets)
    else:
        hits = metrics.cirr_hits(
            query_features,
            gallery_features,
            list(split.gallery_names),
            [q.reference for q in split.queries],
            targets,
            [q.members for q in split.queries],
        )
    return SplitScore(metrics.recall_from_hits(hits), hits)


def aggregate(layout: str, per_subset: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-subset metrics plus the published aggregate under the key ``"average"`` (FashionIQ) or added Avg (CIRR)."""
    from bench import metrics

    if layout == "fashioniq":
        return {**per_subset, "average": metrics.fashioniq_average(per_subset)}
    ((name, values),) = per_subset.items()
    return {name: {**values, "Avg": metrics.cirr_average(values)}}


def hits_to_strings(hits: dict[str, Any]) -> dict[str, str]:
    """Per-query hit vectors as compact ``"0110..."`` strings for records (the bootstrap reads them back)."""
    return {name: "".join("1" if h else "0" for h in vector.tolist()) for name, vector in hits.items()}


def write_test_rankings(split: CIRSplit, query_features, gallery_features, out_dir: Path) -> list[Path]:
    """Write a test split's outputs: CIRR's two server JSON files, or a FashionIQ top-50 ranking file."""
    from bench import metrics
    from bench.io import write_json

    if split.dataset == "cirr":
        recall, recall_subset = metrics.cirr_submission(
            query_features,
            gallery_features,
            list(split.gallery_names),
            [q.pairid for q in split.queries],
            [q.reference for q in split.queries],
            [q.members for q in split.queries],
        )
        return [
            write_json(out_dir / f"recall_submission_{split.split}.json", recall),
            write_json(out_dir / f"recall_subset_submission_{split.split}.json", recall_subset),
        ]
    top = metrics.rank(query_features, gallery_features, k=min(50, len(split.gallery_names)))
    names = split.gallery_names
    rows = [
        {"candidate": q.reference, "captions": list(q.captions), "ranking": [names[i] for i in row]}
        for q, row in zip(split.queries, top.tolist(), strict=True)
    ]
    return [write_json(out_dir / f"ranking.{split.subset}.{split.split}.json", rows)]
