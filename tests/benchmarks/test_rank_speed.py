"""Speed and memory of ``bench.metrics.rank``.

The speed test compares the chunked exact top-k with a full stable sort at CIRR-val size, side by side in one
process (each benchmark round of ``rank`` is preceded, untimed by pytest-benchmark, by one timed round of each
baseline). The ratio goes to ``extra_info["speedup_vs_full_argsort"]`` and is printed (``pytest -s``).
"""

from __future__ import annotations

import statistics
import time

import torch

from bench import metrics
from bench.metrics import SIMILARITY_STEP, rank
from tests.bench.test_metrics import ref_rank

N_QUERIES, N_GALLERY, DIM, K = 4181, 2297, 640, 50  # CIRR val
ROUNDS = 3


def full_argsort_rank(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """The plain way with the same similarity as ``rank``: the full Q x G matrix, one stable sort per row."""
    queries, gallery = queries.double(), gallery.double()
    queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gallery = gallery / gallery.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = torch.round(queries @ gallery.T / SIMILARITY_STEP)
    return torch.argsort(similarity, dim=1, descending=True, stable=True)[:, :k]


def float32_full_argsort_rank(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """The CLIP4Cir way, for context: float32 product, full stable sort (may order near-ties differently)."""
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    return torch.argsort(similarity, dim=1, descending=True, stable=True)[:, :k]


def test_rank_speed_vs_full_argsort(benchmark):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(N_QUERIES, DIM, generator=generator)
    gallery = torch.randn(N_GALLERY, DIM, generator=generator)
    times = {"chunked": [], "full": [], "float32_full": []}
    baselines = {}

    def timed(name, function, *args):
        start = time.perf_counter()
        result = function(*args)
        times[name].append(time.perf_counter() - start)
        return result

    def run_baselines():
        baselines["full"] = timed("full", full_argsort_rank, queries, gallery, K)
        baselines["float32_full"] = timed("float32_full", float32_full_argsort_rank, queries, gallery, K)

    ranked = benchmark.pedantic(timed, ("chunked", rank, queries, gallery, K), setup=run_baselines, rounds=ROUNDS)

    assert torch.equal(ranked, baselines["full"])
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    speedup = median["full"] / median["chunked"]
    speedup_float32 = median["float32_full"] / median["chunked"]
    rows_differing = int((ranked != baselines["float32_full"]).any(dim=1).sum())
    benchmark.extra_info["speedup_vs_full_argsort"] = round(speedup, 2)
    benchmark.extra_info["speedup_vs_float32_full_argsort"] = round(speedup_float32, 2)
    benchmark.extra_info["float32_rankings_differing"] = rows_differing
    print(
        f"\nrank top-{K}, {N_QUERIES} queries x {N_GALLERY} gallery x {DIM}: chunked {median['chunked']:.3f} s, "
        f"full argsort {median['full']:.3f} s (speedup_vs_full_argsort {speedup:.2f}x); "
        f"float32 full argsort {median['float32_full']:.3f} s ({speedup_float32:.2f}x, "
        f"{rows_differing} of {N_QUERIES} rankings differ on near-ties)"
    )
    assert speedup > 0.2  # a sanity bound only: shared machines are noisy


def test_rank_memory_stays_within_the_chunks(benchmark, monkeypatch):
    """200 queries over a 300k gallery with small chunks: every similarity block fits the chunk sizes, every pair is
    scored once, and the result matches the reference, including ties between copies far apart in the gallery."""
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(200, 16, generator=generator)
    gallery = torch.randn(300_000, 16, generator=generator)
    gallery[250_000:250_100] = gallery[:100]
    queries[:10] = gallery[:10]
    query_chunk, gallery_chunk = 64, 7919  # neither divides its side

    shapes = []
    block_keys = metrics._block_keys

    def recording_block_keys(query_unit, gallery_unit, g0):
        shapes.append((len(query_unit), len(gallery_unit)))
        return block_keys(query_unit, gallery_unit, g0)

    monkeypatch.setattr(metrics, "_block_keys", recording_block_keys)
    ranked = benchmark.pedantic(
        rank, (queries, gallery, 10), {"query_chunk": query_chunk, "gallery_chunk": gallery_chunk}, rounds=1
    )

    assert max(rows for rows, _ in shapes) == query_chunk
    assert max(columns for _, columns in shapes) == gallery_chunk
    assert sum(rows * columns for rows, columns in shapes) == len(queries) * len(gallery)
    assert ranked[:10, :2].tolist() == [[i, 250_000 + i] for i in range(10)]
    checked = [0, 9, 10, 63, 64, 199]
    assert ranked[checked].tolist() == ref_rank(queries[checked], gallery, 10)
