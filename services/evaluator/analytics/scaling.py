"""Gallery scaling: metrics vs number of distractors, from one ranking over the full gallery.

A subset's ranking is the full ranking with the excluded distractors dropped (no re-search): the
relative order of the kept items does not depend on what else is in the gallery. That is exact as
long as the full ranked list of every query reaches its K_max-th non-distractor item (then no
subset can pull an item from beyond the list into its top K_max); `deep_ranking` makes sure of it.

Subsets: for each repetition a random permutation of the distractors; the subset of size n is the
first n of it, so a repetition's subsets are nested. Sizes are log-spaced from 0 to all.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from services.evaluator.analytics.options import DEFAULT_REPETITIONS  # noqa: F401 - the defaults live with the options

from services.evaluator.scoring import score_topk
from services.evaluator.search import TopK

DEFAULT_SIZES = 8  # log-spaced sizes between 1 and all, besides 0
FIT_METRIC = "recall@1"
METHOD = (
    "one exact ranking over the full gallery, deep enough that every query's list reaches its "
    "K_max-th non-distractor; a subset's ranking is that list with the excluded distractors dropped "
    "(no re-search); random nested subsets (a seeded permutation of the distractors per repetition)"
)


class ScalingError(ValueError):
    """The ranking cannot support the scaling analysis (raised to the caller, which records why)."""


def distractor_sizes(total: int, count: int = DEFAULT_SIZES) -> list[int]:
    """0, then up to `count` log-spaced sizes from 1 to `total` (always including `total`)."""
    if total <= 0:
        return [0]
    inner = np.unique(np.round(np.geomspace(1, total, num=max(2, count))).astype(np.int64))
    return [0] + sorted({int(v) for v in inner} | {total})


def non_distractors_ranked(indices: np.ndarray, is_distractor: np.ndarray) -> np.ndarray:
    """Per row: how many non-distractor items the ranked list holds."""
    valid = indices >= 0
    return (valid & ~is_distractor[np.where(valid, indices, 0)]).sum(axis=1)


def needed_non_distractors(
    is_distractor: np.ndarray, depth: int, n_queries: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Per query: how many non-distractors its list must hold, min(K_max, those it can rank)
    (in intra its own image is not rankable)."""
    available = np.full(n_queries, int((~is_distractor).sum()), dtype=np.int64)
    if exclude is not None:
        ex = np.asarray(exclude)
        available -= (ex >= 0) & ~is_distractor[np.where(ex >= 0, ex, 0)]
    return np.minimum(depth, available)


def deep_ranking(
    rank: Callable[[np.ndarray, int], TopK],
    n_queries: int,
    needed: np.ndarray,
    is_distractor: np.ndarray,
    start_depth: int,
    max_entries: int = 200_000_000,
) -> TopK:
    """Rank every query deep enough: each row's list reaches `needed[q]` non-distractors or holds
    the whole gallery. rank(rows, depth) -> TopK for those query rows. Rows short of it are
    ranked again at twice the depth (only those rows)."""
    n_gallery = len(is_distractor)
    depth = max(1, min(start_depth, n_gallery))
    rows = np.arange(n_queries)
    first = rank(rows, depth)
    lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    current = first
    while True:
        have = non_distractors_ranked(current.indices, is_distractor)
        full = (current.indices >= 0).sum(axis=1) >= min(depth, n_gallery)
        short = (have < needed[rows]) & full & (depth < n_gallery)
        for r, row in enumerate(rows):
            if not short[r]:
                lists[int(row)] = (current.indices[r], current.scores[r])
        if not short.any():
            break
        rows = rows[short]
        depth = min(depth * 2, n_gallery)
        if len(rows) * depth > max_entries:
            raise ScalingError(
                f"{len(rows)} queries need ranked lists of {depth} items to see their top K non-distractors "
                f"among the distractors; that exceeds the {max_entries:,}-entry bound"
            )
        current = rank(rows, depth)
    width = max(len(v[0]) for v in lists.values()) if lists else 0
    indices = np.full((n_queries, width), -1, dtype=np.int64)
    scores = np.full((n_queries, width), -np.inf, dtype=np.float32)
    for row, (idx, sc) in lists.items():
        indices[row, : len(idx)] = idx
        scores[row, : len(sc)] = sc
    return TopK(indices=indices, scores=scores)


def subset_topk(full: TopK, keep: np.ndarray, depth: int) -> TopK:
    """The full ranking with gallery positions where keep is False dropped, cut to `depth`."""
    idx = full.indices
    valid = idx >= 0
    kept = valid & keep[np.where(valid, idx, 0)]
    order = np.argsort(~kept, axis=1, kind="stable")[:, :depth]
    out_i = np.take_along_axis(idx, order, 1)
    out_s = np.take_along_axis(full.scores, order, 1)
    ok = np.take_along_axis(kept, order, 1)
    out_i = np.where(ok, out_i, -1)
    out_s = np.where(ok, out_s, -np.inf).astype(np.float32)
    if out_i.shape[1] < depth:  # a gallery smaller than K: pad, as exact_topk does
        pad = depth - out_i.shape[1]
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
    return TopK(indices=out_i, scores=out_s)


def _metrics(topk: TopK, query_codes, gallery_codes, recall_k, map_k, exclude, unanswerable_as_miss) -> dict:
    return score_topk(
        topk, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
        query_in_gallery=exclude, unanswerable_as_miss=unanswerable_as_miss,
    ).metrics


def fit_log_model(points: Sequence[tuple[int, float]], total: int) -> dict | None:
    """Least-squares line value = a + b * log10(distractors) over points with distractors >= 1,
    and its value at 10x the distractors (clipped to [0, 100]): an extrapolation, not a measure."""
    usable = [(n, v) for n, v in points if n >= 1 and v is not None]
    if len({n for n, _ in usable}) < 2:
        return None
    x = np.log10([n for n, _ in usable])
    y = np.asarray([v for _, v in usable], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    at = 10 * total
    value = float(np.clip(intercept + slope * math.log10(at), 0.0, 100.0))
    return {
        "metric": FIT_METRIC,
        "form": f"{FIT_METRIC} = intercept + slope * log10(distractors), least squares over the mean points with distractors >= 1",
        "intercept": round(float(intercept), 4),
        "slope": round(float(slope), 4),
        "fitted_on": [int(n) for n, _ in usable],
        "extrapolation": {"distractors": int(at), "value": round(value, 4)},
    }


def scaling_analysis(
    full: TopK,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    *,
    recall_k: Sequence[int],
    map_k: Sequence[int],
    exclude: np.ndarray | None = None,
    unanswerable_as_miss: bool = False,
    repetitions: int = DEFAULT_REPETITIONS,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
) -> dict | None:
    """Metrics vs number of distractors (the record's ScalingAnalysis), or None without distractors.

    full: the ranking over the full gallery, deep enough (see deep_ranking); gallery_codes -1
    marks a distractor. The 0 and all points have one possible subset each."""
    is_distractor = np.asarray(gallery_codes) < 0
    distractors = np.flatnonzero(is_distractor)
    total = len(distractors)
    if total == 0:
        return None
    depth = max(max(recall_k), max(map_k))
    have = non_distractors_ranked(full.indices, is_distractor)
    if (have < needed_non_distractors(is_distractor, depth, len(query_codes), exclude)).any():
        raise ScalingError("the ranking is not deep enough for the subsets (see deep_ranking)")
    sizes = sorted(set(int(s) for s in (sizes if sizes is not None else distractor_sizes(total))))
    if sizes[0] < 0 or sizes[-1] > total:
        raise ScalingError(f"distractor sizes must lie in [0, {total}], got {sizes}")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(distractors) for _ in range(max(1, int(repetitions)))]
    points = []
    for size in sizes:
        draws = perms[:1] if size in (0, total) else perms
        values: dict[str, list[float]] = {}
        for perm in draws:
            keep = ~is_distractor.copy()
            keep[perm[:size]] = True
            got = _metrics(subset_topk(full, keep, depth), query_codes, gallery_codes, recall_k, map_k,
                           exclude, unanswerable_as_miss)
            for name, value in got.items():
                values.setdefault(name, []).append(value)
        metrics, spread = {}, {}
        for name, vals in values.items():
            finite = [v for v in vals if v is not None]
            if not finite:
                metrics[name], spread[name] = None, None
                continue
            arr = np.asarray(finite, dtype=np.float64)
            # One draw: the mean is that draw's value exactly (the end points equal the plain scores).
            metrics[name] = finite[0] if len(finite) == 1 else round(float(arr.mean()), 4)
            spread[name] = {"min": round(float(arr.min()), 4), "max": round(float(arr.max()), 4),
                            "std": round(float(arr.std()), 4)}
        points.append({"distractors": size, "subsets": len(draws), "metrics": metrics, "spread": spread})
    fit = fit_log_model([(p["distractors"], p["metrics"].get(FIT_METRIC)) for p in points], total)
    return {
        "method": METHOD,
        "seed": seed,
        "repetitions": len(perms),
        "ranking_depth": int(full.indices.shape[1]),
        "points": points,
        "fit": fit,
    }
