"""Retrieval metrics of the CLIP4Cir/SPRC evaluation protocol, with an exact, deterministic ranking.

Similarity is the cosine between L2-normalised query and gallery features (a zero vector stays zero, as with
``F.normalize``). Features are taken as float32 (float16/bfloat16 are upcast, float64 is rounded); normalisation and
the dot product run in float64 and the result is rounded to a multiple of ``SIMILARITY_STEP`` (2**-28, about 4e-9:
as fine as float32's own spacing for cosines above 1/16, and below the typical error of a float32 matrix product,
6e-9 at D=640). Why not a float32 product: MKL picks float32 GEMM kernels by matrix shape and position, so identical
gallery rows got different last bits within one call, and 1 to 5 of the 4181 CIRR-val-sized rankings changed between
query chunks of 1 and larger ones (measured); the tie rule would then depend on BLAS internals. The float64 product
carries up to ~5e-16 of such kernel-dependent noise, which the rounding absorbs unless a value lies that close to the
midpoint between two steps (measured: 0 of 9.6M pairs changed between a one-row and a full product). Exact ties,
such as duplicated images, therefore tie reliably.

Ranking order: higher similarity first, ties broken by the lower gallery index. The order is exact because every
(similarity, index) pair is packed into one unique int64 key (see ``_order_keys``), so ``topk`` over keys has no ties
to break arbitrarily, at the k boundary, inside a chunk or across chunks.

Multi-token galleries: a gallery may be ``[G, T, D]`` (e.g. BLIP-2's query-token embeddings of each image); an
image's similarity is then the maximum over its T tokens of the cosine with the query (SPRC's scoring).

Memory: ``rank`` walks the gallery in chunks of ``gallery_chunk`` rows and, inside each, the queries in chunks of
``query_chunk`` rows, merging a running top-k; no similarity block larger than ``query_chunk x gallery_chunk`` is
ever formed and nothing is fully sorted. The other temporaries are one normalised chunk of each side and the
``Q x 2k`` running keys.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from bench.errors import BenchError

SIMILARITY_STEP = 2.0**-28
"""Similarities are rounded to multiples of this before ranking; closer values tie (see the module docstring)."""

DEFAULT_GALLERY_CHUNK = 1 << 12
"""Default gallery rows per chunk in ``rank``."""

DEFAULT_BLOCK_ELEMENTS = 1 << 19
"""Default similarity elements per block: ``query_chunk`` defaults to this divided by the gallery chunk."""

_EPS = 1e-12  # F.normalize's default: rows with a smaller norm are divided by it instead
_INDEX_MASK = (1 << 32) - 1  # the low 32 bits of a key hold the (complemented) gallery index
_EXCLUDED = torch.iinfo(torch.int64).min  # below every real key: an excluded image can never be ranked

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

Names = Sequence[str]


def rank(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    exclude: Tensor | None = None,
    *,
    query_chunk: int | None = None,
    gallery_chunk: int | None = None,
) -> Tensor:
    """Top-``k`` gallery indices per query by cosine similarity, as a LongTensor ``[Q, k]``.

    Order: higher similarity first, equal similarities by lower gallery index (exact and deterministic; see the
    module docstring for how similarity is computed). ``exclude`` is an integer tensor ``[Q]`` naming one gallery
    index to leave out of each query's ranking; a negative value excludes nothing for that query.
    ``k`` must be between 1 and the number of rankable images (the gallery size, less one if any query excludes
    one); it is an error rather than a clamp so that the result is always ``[Q, k]`` and an R@K that a small gallery
    cannot support is not silently reported. Chunk sizes bound memory (``query_chunk x gallery_chunk`` similarities
    per block; defaults ``DEFAULT_GALLERY_CHUNK`` and ``DEFAULT_BLOCK_ELEMENTS // gallery_chunk``) and never
    change the result.
    """
    queries, gallery = _features(queries, gallery)
    n_queries, n_gallery = len(queries), len(gallery)
    exclude = _exclusions(exclude, n_queries, n_gallery)
    k = _positive_int(k, "k")
    rankable = n_gallery - int(bool((exclude >= 0).any()))
    if k > rankable:
        raise BenchError(f"k={k} exceeds the {rankable} rankable gallery images")
    gallery_chunk = DEFAULT_GALLERY_CHUNK if gallery_chunk is None else _positive_int(gallery_chunk, "gallery_chunk")
    gallery_chunk = min(n_gallery, gallery_chunk)
    tokens = gallery.shape[1] if gallery.ndim == 3 else 1
    query_chunk = max(1, DEFAULT_BLOCK_ELEMENTS // (gallery_chunk * tokens)) if query_chunk is None else query_chunk
    query_chunk = _positive_int(query_chunk, "query_chunk")
    if n_queries == 0:
        return torch.empty(0, k, dtype=torch.long)

    best = None  # [Q, k] keys of the best images so far, descending
    for g0 in range(0, n_gallery, gallery_chunk):
        gallery_unit = _unit_rows(gallery[g0 : g0 + gallery_chunk], "gallery")
        chunk_best = []
        for q0 in range(0, n_queries, query_chunk):
            keys = _block_keys(_unit_rows(queries[q0 : q0 + query_chunk], "query"), gallery_unit, g0)
            _drop_excluded(keys, exclude[q0 : q0 + query_chunk], g0)
            chunk_best.append(keys.topk(min(k, keys.shape[1]), dim=1).values)
        chunk_top = torch.cat(chunk_best)
        if best is not None:
            merged = torch.cat([best, chunk_top], dim=1)
            chunk_top = merged.topk(min(k, merged.shape[1]), dim=1).values
        best = chunk_top
    return _key_index(best)


def fashioniq_hits(
    queries: Tensor, gallery: Tensor, gallery_names: Names, target_names: Names, ks: Iterable[int] = (10, 50)
) -> dict[str, Tensor]:
    """Per-query hits ``{"R@K": BoolTensor[Q]}`` of the FashionIQ protocol: the reference stays in the gallery."""
    index = _gallery_index(gallery_names, queries, gallery)
    _check_queries(queries, target_names=target_names)
    ks = _ks(ks, "ks")
    target = _indices(target_names, index, "target")
    return _hits(rank(queries, gallery, max(ks)), target, ks, "R")


def fashioniq_recall(
    queries: Tensor, gallery: Tensor, gallery_names: Names, target_names: Names, ks: Iterable[int] = (10, 50)
) -> dict[str, float]:
    """FashionIQ recall ``{"R@K": percent}`` for one category: % of queries whose target is in the top K.

    The reference image stays in the gallery (it can take rank 1). ``target_names`` holds one gallery name per query;
    a name missing from ``gallery_names`` is an error.
    """
    return recall_from_hits(fashioniq_hits(queries, gallery, gallery_names, target_names, ks))


def cirr_hits(
    queries: Tensor,
    gallery: Tensor,
    gallery_names: Names,
    reference_names: Names,
    target_names: Names,
    members: Sequence[Names],
    ks: Iterable[int] = (1, 5, 10, 50),
    subset_ks: Iterable[int] = (1, 2, 3),
) -> dict[str, Tensor]:
    """Per-query hits ``{"R@K": BoolTensor[Q], ..., "Rsubset@K": BoolTensor[Q], ...}`` of the CIRR protocol.

    See ``cirr_recall``; the recall of each metric is ``100 * hits.float().mean()``.
    """
    index = _gallery_index(gallery_names, queries, gallery)
    _check_queries(queries, reference_names=reference_names, target_names=target_names, members=members)
    ks, subset_ks = _ks(ks, "ks"), _ks(subset_ks, "subset_ks")
    target = _indices(target_names, index, "target")
    ranking, subset = _cirr_rankings(queries, gallery, index, reference_names, members, max(ks))
    if max(subset_ks) > subset.shape[1]:
        raise BenchError(f"subset_ks: K={max(subset_ks)} exceeds the {subset.shape[1]} members besides the reference")
    return _hits(ranking, target, ks, "R") | _hits(subset, target, subset_ks, "Rsubset")


def cirr_recall(
    queries: Tensor,
    gallery: Tensor,
    gallery_names: Names,
    reference_names: Names,
    target_names: Names,
    members: Sequence[Names],
    ks: Iterable[int] = (1, 5, 10, 50),
    subset_ks: Iterable[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR recall ``{"R@K": percent, ..., "Rsubset@K": percent, ...}``.

    R@K: the whole gallery is ranked with each query's reference removed. Rsubset@K: the query's ``members`` other
    than the reference, in the same global order (lower index first on ties), hit if the target is among the first
    K. ``members`` holds one name sequence per query (six in CIRR); every sequence must have the same length, repeat
    no name and contain the query's reference, as the CLIP4Cir code assumes. A target that is its own reference or
    not among the members can never hit. Use ``cirr_average`` for the published "Avg".
    """
    return recall_from_hits(
        cirr_hits(queries, gallery, gallery_names, reference_names, target_names, members, ks, subset_ks)
    )


def cirr_submission(
    queries: Tensor,
    gallery: Tensor,
    gallery_names: Names,
    pairids: Sequence[int | str],
    reference_names: Names,
    members: Sequence[Names],
) -> tuple[dict, dict]:
    """The two JSON-ready dicts for the CIRR test server: ``(recall, recall_subset)``.

    ``recall``: ``{"version": "rc2", "metric": "recall", str(pairid): [top-50 gallery names]}`` and
    ``recall_subset``: ``{"version": "rc2", "metric": "recall_subset", str(pairid): [top-3 member names]}``, both
    with the reference removed and ordered as in ``cirr_recall``. A repeated pairid is an error.
    """
    index = _gallery_index(gallery_names, queries, gallery)
    _check_queries(queries, pairids=pairids, reference_names=reference_names, members=members)
    keys = [str(pairid) for pairid in pairids]
    seen = set()
    for key in keys:
        if key in seen:
            raise BenchError(f"pairid {key} appears more than once")
        seen.add(key)
    ranking, subset = _cirr_rankings(queries, gallery, index, reference_names, members, 50)
    if subset.shape[1] < 3:
        raise BenchError(f"members: the top 3 needs at least 3 members besides the reference, got {subset.shape[1]}")
    recall = {"version": "rc2", "metric": "recall"}
    recall_subset = {"version": "rc2", "metric": "recall_subset"}
    for key, top, top_subset in zip(keys, ranking.tolist(), subset[:, :3].tolist(), strict=True):
        recall[key] = [gallery_names[i] for i in top]
        recall_subset[key] = [gallery_names[i] for i in top_subset]
    return recall, recall_subset


def fashioniq_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The published FashionIQ aggregate: mean R@10 and mean R@50 over categories, and "Avg" = their mean."""
    if not per_category:
        raise BenchError("fashioniq_average: no categories given")
    average = {}
    for metric in ("R@10", "R@50"):
        for category, metrics in per_category.items():
            if metric not in metrics:
                raise BenchError(f"fashioniq_average: category {category!r} has no {metric}")
        average[metric] = sum(metrics[metric] for metrics in per_category.values()) / len(per_category)
    average["Avg"] = (average["R@10"] + average["R@50"]) / 2
    return average


def cirr_average(metrics: Mapping[str, float]) -> float:
    """The published CIRR "Avg": (R@5 + Rsubset@1) / 2, from a ``cirr_recall`` result."""
    for metric in ("R@5", "Rsubset@1"):
        if metric not in metrics:
            raise BenchError(f"cirr_average: no {metric} in the metrics")
    return (metrics["R@5"] + metrics["Rsubset@1"]) / 2


def _cirr_rankings(
    queries: Tensor, gallery: Tensor, index: dict[str, int], reference_names: Names, members: Sequence[Names], k: int
) -> tuple[Tensor, Tensor]:
    """The global top-k without the reference, and each query's members without the reference in ranking order."""
    reference = _indices(reference_names, index, "reference")
    subset = _subset_indices(members, reference_names, index)
    return rank(queries, gallery, k, exclude=reference), _order_candidates(queries, gallery, subset)


def _hits(ranking: Tensor, target: Tensor, ks: list[int], prefix: str) -> dict[str, Tensor]:
    """``{f"{prefix}@K": target among the first K of each ranking row}``."""
    found = ranking == target[:, None]
    return {f"{prefix}@{k}": found[:, :k].any(dim=1) for k in ks}


def recall_from_hits(hits: dict[str, Tensor]) -> dict[str, float]:
    """Percent of queries hit per metric, counted in integers (exactly hits / queries)."""
    return {name: 100.0 * int(hit.sum()) / hit.numel() for name, hit in hits.items()}


def _block_keys(query_unit: Tensor, gallery_unit: Tensor, g0: int) -> Tensor:
    """Keys of one ``[queries, gallery rows]`` block; the only place ``rank`` forms a query-by-gallery matrix."""
    if gallery_unit.ndim == 3:
        similarity = torch.einsum("qd,gtd->qgt", query_unit, gallery_unit).amax(dim=2)
    else:
        similarity = query_unit @ gallery_unit.T
    return _order_keys(similarity, torch.arange(g0, g0 + len(gallery_unit)))


def _order_candidates(queries: Tensor, gallery: Tensor, candidates: Tensor) -> Tensor:
    """Each row of gallery indices ``candidates`` ``[Q, c]`` sorted into ranking order (by the same keys as ``rank``).

    Only the query's own candidates are scored, so the order equals the restriction of the global ranking.
    """
    queries, gallery = _features(queries, gallery)
    n_candidates, per_image = candidates.shape[1], gallery.shape[1:].numel()
    rows = max(1, DEFAULT_BLOCK_ELEMENTS // (n_candidates * per_image))  # bounds the gathered [rows, c, (T,) D] block
    ordered = torch.empty_like(candidates)
    for r0 in range(0, len(candidates), rows):
        block = candidates[r0 : r0 + rows]
        query_unit = _unit_rows(queries[r0 : r0 + rows], "query")
        gallery_unit = _unit_rows(gallery[block.reshape(-1)], "gallery").view(*block.shape, *gallery.shape[1:])
        if gallery_unit.ndim == 4:
            similarity = torch.einsum("rd,rctd->rct", query_unit, gallery_unit).amax(dim=2)
        else:
            similarity = torch.einsum("rd,rcd->rc", query_unit, gallery_unit)
        keys = _order_keys(similarity, block)
        # keys are unique, so any sort gives the one exact order
        ordered[r0 : r0 + rows] = block.gather(1, keys.argsort(dim=1, descending=True))
    return ordered


def _order_keys(similarity: Tensor, index: Tensor) -> Tensor:
    """Unique int64 keys whose descending order is (similarity descending, gallery index ascending).

    High 32 bits: the float64 similarity in whole ``SIMILARITY_STEP``s (at most 2**28 in magnitude for a cosine).
    Low 32 bits: ``_INDEX_MASK - index``, so a lower index makes a larger key. ``index`` broadcasts to the block.
    """
    steps = torch.round(similarity * (1 / SIMILARITY_STEP)).to(torch.int64)
    return (steps << 32) | (_INDEX_MASK - index)


def _key_index(keys: Tensor) -> Tensor:
    return _INDEX_MASK - (keys & _INDEX_MASK)


def _drop_excluded(keys: Tensor, exclude: Tensor, g0: int) -> None:
    """Give each row's excluded image, when it lies in this gallery chunk, the lowest possible key."""
    column = exclude - g0
    rows = ((column >= 0) & (column < keys.shape[1])).nonzero().squeeze(1)
    keys[rows, column[rows]] = _EXCLUDED


def _unit_rows(features: Tensor, what: str) -> Tensor:
    """Vectors (along the last dimension) scaled to unit L2 norm in float64 (as ``F.normalize``: a norm below 1e-12
    is replaced by 1e-12)."""
    features = features.to(torch.float64)
    norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True)
    # float32 values cannot overflow a float64 sum of squares, so a non-finite norm means a non-finite feature
    if not bool(torch.isfinite(norms).all()):
        raise BenchError(f"{what} features contain NaN or infinite values")
    return features / norms.clamp_min(_EPS)


def _features(queries: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
    """Both feature tensors as float32, after checking their shapes (queries ``[Q, D]``, gallery ``[G, D]`` or
    ``[G, T, D]``), that they are floating point and of the same width."""
    for what, features, dims in (("query", queries, (2,)), ("gallery", gallery, (2, 3))):
        if not isinstance(features, Tensor) or features.ndim not in dims:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            expected = "[n, dim]" if dims == (2,) else "[n, dim] or [n, tokens, dim]"
            raise BenchError(f"{what} features must be a tensor {expected}, got {shape}")
        if not features.is_floating_point():
            raise BenchError(f"{what} features must be floating point, got {features.dtype}")
    if 0 in gallery.shape[1:]:
        raise BenchError("features have width 0")
    if queries.shape[1] != gallery.shape[-1]:
        raise BenchError(f"query and gallery features differ in width: {queries.shape[1]} vs {gallery.shape[-1]}")
    if len(gallery) == 0:
        raise BenchError("the gallery is empty")
    if len(gallery) > _INDEX_MASK:
        raise BenchError(f"the gallery has {len(gallery)} images, more than the {_INDEX_MASK} supported")
    return queries.to(torch.float32), gallery.to(torch.float32)


def _exclusions(exclude: Tensor | None, n_queries: int, n_gallery: int) -> Tensor:
    if exclude is None:
        return torch.full((n_queries,), -1, dtype=torch.long)
    if not isinstance(exclude, Tensor) or exclude.shape != (n_queries,) or exclude.dtype not in _INTEGER_DTYPES:
        shape = tuple(exclude.shape) if isinstance(exclude, Tensor) else type(exclude).__name__
        raise BenchError(f"exclude must be an integer tensor of shape ({n_queries},), got {shape}")
    exclude = exclude.to(torch.long)
    if bool((exclude >= n_gallery).any()):
        raise BenchError(f"exclude holds index {int(exclude.max())}, outside a gallery of {n_gallery}")
    return exclude


def _gallery_index(gallery_names: Names, queries: Tensor, gallery: Tensor) -> dict[str, int]:
    """Name -> gallery row, after checking the features and that the names match the gallery one to one."""
    _features(queries, gallery)
    if len(gallery_names) != len(gallery):
        raise BenchError(f"gallery_names has {len(gallery_names)} names for {len(gallery)} gallery features")
    index = {}
    for i, name in enumerate(gallery_names):
        if index.setdefault(name, i) != i:
            raise BenchError(f"gallery name {name!r} appears more than once")
    return index


def _check_queries(queries: Tensor, **per_query: Sequence) -> None:
    """At least one query, and one entry per query in every named sequence."""
    if len(queries) == 0:
        raise BenchError("no queries to evaluate")
    for what, values in per_query.items():
        if len(values) != len(queries):
            raise BenchError(f"{what} has {len(values)} entries for {len(queries)} queries")


def _indices(names: Names, index: dict[str, int], what: str) -> Tensor:
    for name in names:
        if name not in index:
            raise BenchError(f"{what} {name!r} is not in the gallery")
    return torch.tensor([index[name] for name in names], dtype=torch.long)


def _subset_indices(members: Sequence[Names], reference_names: Names, index: dict[str, int]) -> Tensor:
    """Gallery indices ``[Q, m - 1]`` of each query's members other than its reference."""
    sizes = sorted({len(names) for names in members})
    if len(sizes) > 1 or sizes[0] < 2:
        raise BenchError(f"members: every query needs the same number (at least 2) of members, got sizes {sizes}")
    rows = []
    for i, (names, reference) in enumerate(zip(members, reference_names, strict=True)):
        if len(set(names)) != len(names):
            raise BenchError(f"members of query {i} repeat a name: {list(names)}")
        if reference not in names:
            raise BenchError(f"members of query {i} do not include its reference {reference!r}")
        rows.append(_indices([name for name in names if name != reference], index, f"member of query {i}"))
    return torch.stack(rows)


def _ks(ks: Iterable[int], what: str) -> list[int]:
    ks = [_positive_int(k, what) for k in ks]
    if not ks:
        raise BenchError(f"{what} is empty")
    return ks


def _positive_int(value: int, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise BenchError(f"{what} must be an integer, got {value!r}") from None
    if value < 1:
        raise BenchError(f"{what} must be at least 1, got {value}")
    return value
