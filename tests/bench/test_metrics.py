"""Retrieval metrics: hand-computed cases, and an independent numpy implementation of the protocol on random data.

The reference implementation below shares no code with ``bench.metrics``: it builds the full similarity matrix,
orders every row with ``np.lexsort`` on (-similarity, index) and applies the protocol with explicit loops. The
similarity definition is the documented one: the float64 cosine rounded to a multiple of ``SIMILARITY_STEP``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import metrics
from bench.errors import BenchError
from bench.metrics import (
    cirr_average,
    cirr_hits,
    cirr_recall,
    cirr_submission,
    fashioniq_average,
    fashioniq_hits,
    fashioniq_recall,
    rank,
)

# --------------------------------------------------------------------------------------------------------------------
# Reference implementation


def ref_similarity(queries: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    def unit(x: torch.Tensor) -> np.ndarray:
        x = x.to(torch.float32).numpy().astype(np.float64)
        return x / np.maximum(np.sqrt((x * x).sum(axis=1, keepdims=True)), 1e-12)

    return np.round((unit(queries) @ unit(gallery).T) / metrics.SIMILARITY_STEP)


def ref_order(similarity_row: np.ndarray, skip: int = -1) -> list[int]:
    """The whole gallery, best first: by -similarity, then by index (lexsort's last key is the primary one)."""
    order = np.lexsort((np.arange(len(similarity_row)), -similarity_row))
    return [int(j) for j in order if j != skip]


def ref_rank(queries, gallery, k, exclude=None) -> list[list[int]]:
    similarity = ref_similarity(queries, gallery)
    skips = [-1] * len(similarity) if exclude is None else [int(e) if e >= 0 else -1 for e in exclude]
    return [ref_order(row, skip)[:k] for row, skip in zip(similarity, skips, strict=True)]


def ref_fashioniq(queries, gallery, gallery_names, target_names, ks) -> dict[str, float]:
    similarity = ref_similarity(queries, gallery)
    hits = {f"R@{k}": 0 for k in ks}
    for row, target in zip(similarity, target_names, strict=True):
        ranked = [gallery_names[j] for j in ref_order(row)]
        for k in ks:
            hits[f"R@{k}"] += target in ranked[:k]
    return {name: 100 * count / len(target_names) for name, count in hits.items()}


def ref_cirr_rankings(queries, gallery, gallery_names, reference_names, members):
    """Per query: all gallery names best first without the reference, and the members in that order."""
    similarity = ref_similarity(queries, gallery)
    for row, reference, group in zip(similarity, reference_names, members, strict=True):
        ranked = [gallery_names[j] for j in ref_order(row, gallery_names.index(reference))]
        yield ranked, [name for name in ranked if name in group]


def ref_cirr(queries, gallery, gallery_names, reference_names, target_names, members, ks, subset_ks):
    hits = {f"R@{k}": 0 for k in ks} | {f"Rsubset@{k}": 0 for k in subset_ks}
    rankings = ref_cirr_rankings(queries, gallery, gallery_names, reference_names, members)
    for (ranked, subset), target in zip(rankings, target_names, strict=True):
        for k in ks:
            hits[f"R@{k}"] += target in ranked[:k]
        for k in subset_ks:
            hits[f"Rsubset@{k}"] += target in subset[:k]
    return {name: 100 * count / len(target_names) for name, count in hits.items()}


def ref_submission(queries, gallery, gallery_names, pairids, reference_names, members):
    recall = {"version": "rc2", "metric": "recall"}
    recall_subset = {"version": "rc2", "metric": "recall_subset"}
    rankings = ref_cirr_rankings(queries, gallery, gallery_names, reference_names, members)
    for pairid, (ranked, subset) in zip(pairids, rankings, strict=True):
        recall[str(pairid)] = ranked[:50]
        recall_subset[str(pairid)] = subset[:3]
    return recall, recall_subset


# --------------------------------------------------------------------------------------------------------------------
# Random data with many exact ties


def random_features(rng: np.random.Generator, kind: str, n: int, dim: int) -> np.ndarray:
    """``dyadic``: 0, 1 or 4 entries of +-1 scaled by a power of two, so norms and cosines are exact in any
    arithmetic and ties abound; ``integer``: small integers (equal and parallel vectors); ``gaussian``: generic."""
    if kind == "gaussian":
        return rng.standard_normal((n, dim)).astype(np.float32)
    if kind == "integer":
        return rng.integers(-2, 3, (n, dim)).astype(np.float32)
    features = np.zeros((n, dim), dtype=np.float32)
    for row in features:
        nonzero = rng.choice([0, 1, 4], p=[0.1, 0.3, 0.6])
        row[rng.choice(dim, nonzero, replace=False)] = rng.choice([-1.0, 1.0], nonzero)
        row *= 2.0 ** rng.integers(-2, 3)
    return features


@st.composite
def cir_data(draw, min_gallery: int = 2, max_gallery: int = 30, max_queries: int = 12):
    """(queries, gallery, rng): duplicated gallery rows, queries that copy gallery rows, and the rng for more draws."""
    n_queries = draw(st.integers(1, max_queries))
    n_gallery = draw(st.integers(min_gallery, max_gallery))
    dim = draw(st.integers(4, 8))
    kind = draw(st.sampled_from(["dyadic", "integer", "gaussian"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    queries = random_features(rng, kind, n_queries, dim)
    gallery = random_features(rng, kind, n_gallery, dim)
    copies = rng.integers(0, n_gallery // 2 + 1)
    gallery[rng.integers(0, n_gallery, copies)] = gallery[rng.integers(0, n_gallery, copies)]
    copied = rng.random(n_queries) < 0.3
    queries[copied] = gallery[rng.integers(0, n_gallery, int(copied.sum()))]
    return torch.from_numpy(queries), torch.from_numpy(gallery), rng


def names(n: int) -> list[str]:
    return [f"img{i:03d}" for i in range(n)]


def random_cirr_queries(rng: np.random.Generator, gallery_names: list[str], n_queries: int, n_members: int):
    """References, targets (sometimes outside the members or equal to the reference) and members per query."""
    references, targets, members = [], [], []
    for _ in range(n_queries):
        group = [str(name) for name in rng.choice(gallery_names, n_members, replace=False)]
        references.append(group[rng.integers(n_members)])
        targets.append(str(rng.choice(group if rng.random() < 0.8 else gallery_names)))
        members.append(group)
    return references, targets, members


SETTINGS = settings(max_examples=200, deadline=None)


# --------------------------------------------------------------------------------------------------------------------
# rank


def test_rank_orders_by_cosine_then_lower_index():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.5, 0.0], [-1.0, 0.0]])
    # cosines with (3, 0): 1, 0, 0.707, 1, 1, -1: the three 1s keep their index order
    assert rank(torch.tensor([[3.0, 0.0]]), gallery, 6).tolist() == [[0, 3, 4, 2, 1, 5]]
    # cosines with (0, -1): 0, -1, -0.707, 0, 0, 0
    assert rank(torch.tensor([[0.0, -1.0]]), gallery, 2).tolist() == [[0, 3]]


def test_ties_straddling_the_k_boundary_take_the_lower_indices():
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    for gallery_chunk in range(1, 7):
        assert rank(query, gallery, 2, gallery_chunk=gallery_chunk).tolist() == [[1, 3]]
        assert rank(query, gallery, 4, gallery_chunk=gallery_chunk).tolist() == [[1, 3, 4, 0]]


def test_zero_vectors_tie_with_everything_at_zero():
    gallery = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    assert rank(torch.tensor([[1.0, 0.0]]), gallery, 4).tolist() == [[2, 0, 1, 3]]
    assert rank(torch.zeros(1, 2), gallery, 4).tolist() == [[0, 1, 2, 3]]


def test_similarities_closer_than_the_rounding_step_tie():
    # -0.0 and float64 noise around an exact 0 are all the same rounded similarity
    similarity = torch.tensor([[1e-17, -0.0, 0.0, -1e-17, 2 * metrics.SIMILARITY_STEP]], dtype=torch.float64)
    keys = metrics._order_keys(similarity, torch.arange(5))
    assert keys.argsort(descending=True).tolist() == [[4, 0, 1, 2, 3]]


def test_exclude_removes_one_image_per_query_and_negative_means_none():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ranked = rank(queries, gallery, 3, exclude=torch.tensor([0, -1, -7]))
    assert ranked.tolist() == [[3, 1, 2], [0, 3, 1], [2, 1, 0]]


def test_rank_shape_dtype_and_empty_queries():
    gallery = torch.eye(3)
    assert rank(torch.eye(3)[:2], gallery, 2).dtype == torch.long
    assert rank(torch.empty(0, 3), gallery, 2).shape == (0, 2)


def test_low_precision_and_double_inputs_rank_as_their_float32_values():
    rng = np.random.default_rng(0)
    queries = torch.from_numpy(rng.standard_normal((20, 16)).astype(np.float32)).half()
    gallery = torch.from_numpy(rng.standard_normal((50, 16)).astype(np.float32)).half()
    expected = rank(queries.float(), gallery.float(), 10)
    assert torch.equal(rank(queries, gallery, 10), expected)
    assert torch.equal(rank(queries.double(), gallery.double(), 10), expected)
    assert torch.equal(rank(queries.bfloat16(), gallery, 10), rank(queries.bfloat16().float(), gallery, 10))


def test_chunk_sizes_never_change_the_ranking():
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(random_features(rng, "dyadic", 23, 6))
    gallery = torch.from_numpy(random_features(rng, "dyadic", 37, 6))
    gallery[30:] = gallery[:7]  # exact ties across gallery chunks
    exclude = torch.from_numpy(rng.integers(-1, 37, 23))
    expected = ref_rank(queries, gallery, 20, exclude)
    for query_chunk, gallery_chunk in [(1, 1), (1, 37), (23, 1), (4, 5), (7, 10), (22, 36), (100, 100), (None, None)]:
        ranked = rank(queries, gallery, 20, exclude, query_chunk=query_chunk, gallery_chunk=gallery_chunk)
        assert ranked.tolist() == expected, (query_chunk, gallery_chunk)


@SETTINGS
@given(cir_data(), st.data())
def test_rank_matches_the_reference(features, data):
    queries, gallery, rng = features
    n_queries, n_gallery = len(queries), len(gallery)
    exclude = torch.from_numpy(rng.integers(-2, n_gallery, n_queries)) if data.draw(st.booleans()) else None
    rankable = n_gallery - int(exclude is not None and bool((exclude >= 0).any()))
    k = data.draw(st.integers(1, rankable))
    query_chunk = data.draw(st.integers(1, n_queries + 2))
    gallery_chunk = data.draw(st.integers(1, n_gallery + 2))
    ranked = rank(queries, gallery, k, exclude, query_chunk=query_chunk, gallery_chunk=gallery_chunk)
    assert ranked.tolist() == ref_rank(queries, gallery, k, exclude)


# --------------------------------------------------------------------------------------------------------------------
# FashionIQ and CIRR recall


def nearest_reference_case():
    """One query whose nearest image is its reference, then its target, then the rest."""
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    gallery_names = ["ref", "tgt", "b", "c"]
    return torch.tensor([[1.0, 0.1]]), gallery, gallery_names


def test_fashioniq_keeps_the_reference_in_the_gallery():
    queries, gallery, gallery_names = nearest_reference_case()
    recall = fashioniq_recall(queries, gallery, gallery_names, ["tgt"], ks=(1, 2))
    assert recall == {"R@1": 0.0, "R@2": 100.0}
    assert fashioniq_recall(queries, gallery, gallery_names, ["ref"], ks=(1,)) == {"R@1": 100.0}


def test_cirr_removes_the_reference_from_the_ranking():
    queries, gallery, gallery_names = nearest_reference_case()
    recall = cirr_recall(queries, gallery, gallery_names, ["ref"], ["tgt"], [["c", "ref", "tgt"]], (1, 2), (1, 2))
    assert recall == {"R@1": 100.0, "R@2": 100.0, "Rsubset@1": 100.0, "Rsubset@2": 100.0}
    # a target equal to its reference is never retrieved
    recall = cirr_recall(queries, gallery, gallery_names, ["ref"], ["ref"], [["c", "ref", "tgt"]], (3,), (2,))
    assert recall == {"R@3": 0.0, "Rsubset@2": 0.0}


def test_rsubset_follows_the_global_order_within_the_members():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    gallery_names = ["a", "b", "c", "d", "e", "f"]
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # query 0, reference d: global order a (ties d, lower index), b, c, f, e; members {d, c, e, f}: c, f, e
    # query 1, reference b: order e, f, c, a, d; members {b, a, d, c}: c, a, d
    hits = cirr_hits(
        queries,
        gallery,
        gallery_names,
        ["d", "b"],
        ["f", "a"],
        [["d", "c", "e", "f"], ["a", "b", "c", "d"]],
        ks=(1, 4),
        subset_ks=(1, 2, 3),
    )
    assert {name: hit.tolist() for name, hit in hits.items()} == {
        "R@1": [False, False],
        "R@4": [True, True],
        "Rsubset@1": [False, False],
        "Rsubset@2": [True, True],
        "Rsubset@3": [True, True],
    }


def test_recall_is_the_mean_of_the_per_query_hits():
    rng = np.random.default_rng(2)
    queries = torch.from_numpy(random_features(rng, "gaussian", 40, 8))
    gallery = torch.from_numpy(random_features(rng, "gaussian", 60, 8))
    gallery_names = names(60)
    references, targets, members = random_cirr_queries(rng, gallery_names, 40, 6)
    for hits, recall in [
        (
            fashioniq_hits(queries, gallery, gallery_names, targets),
            fashioniq_recall(queries, gallery, gallery_names, targets),
        ),
        (
            cirr_hits(queries, gallery, gallery_names, references, targets, members),
            cirr_recall(queries, gallery, gallery_names, references, targets, members),
        ),
    ]:
        assert list(hits) == list(recall)
        for name, hit in hits.items():
            assert hit.dtype == torch.bool and hit.shape == (40,)
            assert recall[name] == pytest.approx(100 * hit.float().mean().item())


def test_default_metric_names():
    rng = np.random.default_rng(3)
    queries = torch.from_numpy(random_features(rng, "gaussian", 5, 8))
    gallery = torch.from_numpy(random_features(rng, "gaussian", 60, 8))
    gallery_names = names(60)
    references, targets, members = random_cirr_queries(rng, gallery_names, 5, 6)
    assert list(fashioniq_recall(queries, gallery, gallery_names, targets)) == ["R@10", "R@50"]
    recall = cirr_recall(queries, gallery, gallery_names, references, targets, members)
    assert list(recall) == ["R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"]


@SETTINGS
@given(cir_data(), st.data())
def test_fashioniq_recall_matches_the_reference(features, data):
    queries, gallery, rng = features
    gallery_names = names(len(gallery))
    targets = [str(name) for name in rng.choice(gallery_names, len(queries))]
    ks = data.draw(st.lists(st.integers(1, len(gallery)), min_size=1, max_size=3, unique=True))
    recall = fashioniq_recall(queries, gallery, gallery_names, targets, ks)
    assert recall == pytest.approx(ref_fashioniq(queries, gallery, gallery_names, targets, ks), abs=1e-9)


@SETTINGS
@given(cir_data(), st.data())
def test_cirr_recall_matches_the_reference(features, data):
    queries, gallery, rng = features
    gallery_names = names(len(gallery))
    n_members = data.draw(st.integers(2, min(6, len(gallery))))
    references, targets, members = random_cirr_queries(rng, gallery_names, len(queries), n_members)
    ks = data.draw(st.lists(st.integers(1, len(gallery) - 1), min_size=1, max_size=4, unique=True))
    subset_ks = data.draw(st.lists(st.integers(1, n_members - 1), min_size=1, max_size=3, unique=True))
    recall = cirr_recall(queries, gallery, gallery_names, references, targets, members, ks, subset_ks)
    expected = ref_cirr(queries, gallery, gallery_names, references, targets, members, ks, subset_ks)
    assert recall == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# CIRR test-server submission


def test_cirr_submission_by_hand():
    angles = torch.arange(60) * 0.01  # the query (1, 0) ranks the gallery by index
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    gallery_names = names(60)
    recall, recall_subset = cirr_submission(
        torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        gallery,
        gallery_names,
        [7, 12],
        ["img000", "img005"],
        [["img000", "img007", "img003", "img009", "img055", "img002"], ["img005"] + names(5)],
    )
    assert recall == {
        "version": "rc2",
        "metric": "recall",
        "7": names(51)[1:],
        "12": names(5) + names(51)[6:],
    }
    assert recall_subset == {
        "version": "rc2",
        "metric": "recall_subset",
        "7": ["img002", "img003", "img007"],
        "12": ["img000", "img001", "img002"],
    }


@settings(max_examples=60, deadline=None)
@given(cir_data(min_gallery=51, max_gallery=70, max_queries=6))
def test_cirr_submission_matches_the_reference(features):
    queries, gallery, rng = features
    gallery_names = names(len(gallery))
    references, _, members = random_cirr_queries(rng, gallery_names, len(queries), 6)
    pairids = [int(p) for p in rng.choice(10**6, len(queries), replace=False)]
    submission = cirr_submission(queries, gallery, gallery_names, pairids, references, members)
    assert submission == ref_submission(queries, gallery, gallery_names, pairids, references, members)


# --------------------------------------------------------------------------------------------------------------------
# Aggregates


def test_fashioniq_average_is_the_mean_over_categories():
    per_category = {
        "dress": {"R@10": 39.46, "R@50": 64.55},
        "shirt": {"R@10": 44.41, "R@50": 65.26},
        "toptee": {"R@10": 47.48, "R@50": 70.98},
    }
    average = fashioniq_average(per_category)
    assert average == pytest.approx({"R@10": 43.7833333, "R@50": 66.93, "Avg": 55.3566667})


def test_cirr_average_is_r5_and_rsubset1():
    assert cirr_average({"R@1": 51.96, "R@5": 82.12, "Rsubset@1": 80.65}) == pytest.approx(81.385)


# --------------------------------------------------------------------------------------------------------------------
# Bad input


def bad_input_cases():
    gallery, gallery_names = torch.eye(4), ["a", "b", "c", "d"]
    queries = torch.eye(4)[:2]
    members = [["a", "b", "c"], ["b", "c", "d"]]

    def cirr(**changes):
        arguments = dict(
            queries=queries,
            gallery=gallery,
            gallery_names=gallery_names,
            reference_names=["a", "b"],
            target_names=["b", "c"],
            members=members,
            ks=(1,),
            subset_ks=(1,),
        )
        return lambda: cirr_recall(**(arguments | changes))

    def submission(**changes):
        gallery_60 = torch.randn(60, 4)
        arguments = dict(
            queries=queries,
            gallery=gallery_60,
            gallery_names=names(60),
            pairids=[1, 2],
            reference_names=["img000", "img001"],
            members=[names(6), names(6)],
        )
        return lambda: cirr_submission(**(arguments | changes))

    return [
        (lambda: rank(torch.ones(4), gallery, 1), r"query features must be a tensor \[n, dim\], got \(4,\)"),
        (
            lambda: rank(queries, [[1.0]], 1),
            r"gallery features must be a tensor \[n, dim\] or \[n, tokens, dim\], got list",
        ),
        (lambda: rank(queries, torch.eye(3), 1), "query and gallery features differ in width: 4 vs 3"),
        (lambda: rank(queries.long(), gallery, 1), "query features must be floating point"),
        (lambda: rank(torch.empty(2, 0), torch.empty(3, 0), 1), "features have width 0"),
        (lambda: rank(queries, torch.empty(0, 4), 1), "the gallery is empty"),
        (lambda: rank(queries * float("nan"), gallery, 1), "query features contain NaN or infinite values"),
        (lambda: rank(queries, gallery / 0.0, 1), "gallery features contain NaN or infinite values"),
        (lambda: rank(queries, gallery, 0), "k must be at least 1, got 0"),
        (lambda: rank(queries, gallery, 1.5), "k must be an integer, got 1.5"),
        (lambda: rank(queries, gallery, 5), "k=5 exceeds the 4 rankable gallery images"),
        (lambda: rank(queries, gallery, 4, torch.tensor([0, -1])), "k=4 exceeds the 3 rankable gallery images"),
        (lambda: rank(queries, gallery, 1, torch.tensor([0])), r"exclude must be an integer tensor of shape \(2,\)"),
        (lambda: rank(queries, gallery, 1, torch.tensor([0.0, 1.0])), "exclude must be an integer tensor"),
        (lambda: rank(queries, gallery, 1, torch.tensor([0, 4])), "exclude holds index 4, outside a gallery of 4"),
        (lambda: rank(queries, gallery, 1, query_chunk=0), "query_chunk must be at least 1, got 0"),
        (lambda: rank(queries, gallery, 1, gallery_chunk=-3), "gallery_chunk must be at least 1, got -3"),
        (
            lambda: fashioniq_recall(queries, gallery, gallery_names, ["a", "zz"], ks=(1,)),
            "target 'zz' is not in the gallery",
        ),
        (
            lambda: fashioniq_recall(queries, gallery, gallery_names[:3], ["a", "b"], ks=(1,)),
            "gallery_names has 3 names for 4 gallery features",
        ),
        (
            lambda: fashioniq_recall(queries, gallery, ["a", "b", "a", "d"], ["a", "b"], ks=(1,)),
            "gallery name 'a' appears more than once",
        ),
        (lambda: fashioniq_recall(queries, gallery, gallery_names, ["a"], ks=(1,)), "target_names has 1 entries for 2"),
        (lambda: fashioniq_recall(queries, gallery, gallery_names, ["a", "b"], ks=()), "ks is empty"),
        (lambda: fashioniq_recall(queries, gallery, gallery_names, ["a", "b"]), "k=50 exceeds the 4 rankable"),
        (lambda: fashioniq_recall(queries[:0], gallery, gallery_names, [], ks=(1,)), "no queries to evaluate"),
        (cirr(reference_names=["a", "q"]), "reference 'q' is not in the gallery"),
        (cirr(members=[["a", "b", "c"], ["b", "c", "x"]]), "member of query 1 'x' is not in the gallery"),
        (cirr(members=[["a", "b", "c"], ["b", "c"]]), r"same number \(at least 2\) of members, got sizes \[2, 3\]"),
        (cirr(members=[["a", "b", "c"], ["c", "d", "a"]]), "members of query 1 do not include its reference 'b'"),
        (cirr(members=[["a", "b", "b"], ["b", "c", "d"]]), "members of query 0 repeat a name"),
        (cirr(members=members[:1]), "members has 1 entries for 2 queries"),
        (cirr(subset_ks=(3,)), "subset_ks: K=3 exceeds the 2 members besides the reference"),
        (cirr(ks=(4,)), "k=4 exceeds the 3 rankable gallery images"),
        (submission(pairids=[5, "5"]), "pairid 5 appears more than once"),
        (submission(pairids=[5]), "pairids has 1 entries for 2 queries"),
        (submission(members=[names(3), names(3)]), "the top 3 needs at least 3 members besides the reference, got 2"),
        (lambda: cirr_submission(queries, gallery, gallery_names, [1, 2], ["a", "b"], members), "k=50 exceeds"),
        (lambda: fashioniq_average({}), "fashioniq_average: no categories given"),
        (lambda: fashioniq_average({"dress": {"R@10": 1.0}}), "category 'dress' has no R@50"),
        (lambda: cirr_average({"R@5": 1.0}), "cirr_average: no Rsubset@1 in the metrics"),
    ]


@pytest.mark.parametrize("call, message", bad_input_cases())
def test_bad_input_is_a_one_line_bench_error(call, message):
    with pytest.raises(BenchError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_multi_token_gallery_scores_the_best_token():
    generator = torch.Generator().manual_seed(3)
    queries = torch.randn(7, 5, generator=generator)
    gallery = torch.randn(30, 4, 5, generator=generator)
    gallery[11] = gallery[4]  # an exact tie across images: lower index first
    unit_q = torch.nn.functional.normalize(queries.double(), dim=-1)
    unit_g = torch.nn.functional.normalize(gallery.double(), dim=-1)
    similarity = torch.einsum("qd,gtd->qgt", unit_q, unit_g).amax(dim=2).numpy()
    expected = [sorted(range(30), key=lambda g, row=row: (-round(row[g] * 2**28), g))[:10] for row in similarity]
    assert rank(queries, gallery, 10, query_chunk=2, gallery_chunk=7).tolist() == expected


def test_single_token_gallery_equals_the_plain_gallery():
    generator = torch.Generator().manual_seed(4)
    queries, gallery = torch.randn(9, 6, generator=generator), torch.randn(40, 6, generator=generator)
    names = [f"g{i}" for i in range(40)]
    members = [[names[(3 * q + j) % 40] for j in range(6)] for q in range(9)]
    references = [m[0] for m in members]
    targets = [m[2] for m in members]
    flat = cirr_recall(queries, gallery, names, references, targets, members, ks=(1, 5, 10))
    tokens = cirr_recall(queries, gallery[:, None, :], names, references, targets, members, ks=(1, 5, 10))
    assert flat == tokens
