"""One Combiner epoch with the frozen-feature cache against recomputing the frozen CLIP every batch.

The second is what CLIP4Cir's stage-2 code does (load images, encode them and the captions with the frozen CLIP,
then train the Combiner). Both run side by side in one process on the same batches and seeds; the losses must
follow the same trajectory, and the speed ratio goes to ``extra_info["cache_speedup"]``. The ratio depends on
how heavy the frozen tower is next to the Combiner: it is measured on the embedded tiny CLIP and on a randomly
initialised ViT-B-32 (CLIP4Cir-scale towers, no download), on the first 256 (ViT-B-32: 128) training triplets.
"""

from __future__ import annotations

import dataclasses
import random
import time

import pytest
import torch

from bench.data import get_dataset
from bench.features import ImageInputs, TextInputs, build_image_inputs, build_text_inputs
from bench.train import BatchClosure, RunConfig, build_method

BATCH = 64


class EncodedPerBatch(ImageInputs):
    """Images loaded from disk and encoded by the frozen tower at every ``take`` (no cache)."""

    def __init__(self, method, split) -> None:
        self.method, self.split, self.transform = method, split, method.image_transform()

    def take(self, names):
        with torch.no_grad():
            pixels = torch.stack([self.transform(self.split.load_image(n)) for n in names])
            return self.method.frozen_image_encoder()(pixels)


class TextEncodedPerBatch(TextInputs):
    def __init__(self, method) -> None:
        self.method = method

    def take(self, texts):
        with torch.no_grad():
            return self.method.frozen_text_encoder()(list(texts))


def run_epoch(method, images, texts, triplets, seed: int) -> tuple[list[float], float]:
    """One epoch of Combiner training; returns the per-step losses and the seconds it took."""
    torch.manual_seed(seed)
    method.combiner.load_state_dict(INITIAL)
    optimizer = torch.optim.AdamW(method.combiner.parameters(), lr=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    rng = random.Random(seed)
    order = list(range(len(triplets)))
    rng.shuffle(order)
    chosen = [rng.choice(triplets[i][1]) for i in order]
    losses = []
    start = time.perf_counter()
    method.train()
    for s in range(0, len(order), BATCH):
        group = [(order[s : s + BATCH], chosen[s : s + BATCH])]
        losses.append(BatchClosure(method, optimizer, scaler, images, texts, triplets, group, amp=False)())
        optimizer.step()
    return losses, time.perf_counter() - start


INITIAL: dict = {}


@pytest.mark.parametrize("backbone", ["cirbench-tiny-clip", "ViT-B-32"])
def test_feature_cache_speeds_up_a_combiner_epoch(benchmark, small_world, backbone):
    torch.manual_seed(0)
    method = build_method(RunConfig(method="combiner", backbone=backbone, pretrained="none"))
    INITIAL.clear()
    INITIAL.update({k: v.clone() for k, v in method.combiner.state_dict().items()})
    (split,) = get_dataset("synth-cirr").load("train", small_world / "cirr")
    queries = split.queries[: 256 if backbone == "cirbench-tiny-clip" else 128]
    used = sorted({name for q in queries for name in (q.reference, q.target)})
    split = dataclasses.replace(split, queries=queries, gallery_names=tuple(used))
    triplets = [(q.reference, split.training_texts(q), q.target) for q in split.queries]
    cached_images = build_image_inputs(method, [split])
    cached_texts = build_text_inputs(method, [t for _, forms, _ in triplets for t in forms])

    uncached = {}

    def run_uncached():
        uncached["losses"], seconds = run_epoch(
            method, EncodedPerBatch(method, split), TextEncodedPerBatch(method), triplets, seed=1
        )
        uncached.setdefault("seconds", []).append(seconds)

    cached_seconds = []

    def run_cached():
        losses, seconds = run_epoch(method, cached_images, cached_texts, triplets, seed=1)
        cached_seconds.append(seconds)
        return losses

    losses = benchmark.pedantic(run_cached, setup=run_uncached, rounds=1 if backbone == "ViT-B-32" else 2)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(uncached["losses"]), rtol=1e-4, atol=1e-4)
    speedup = min(uncached["seconds"]) / min(cached_seconds)
    benchmark.extra_info["cache_speedup"] = speedup
    print(f"\nCombiner epoch on {backbone}: feature cache {speedup:.1f}x faster than encoding every batch")
    assert speedup > 1.0
