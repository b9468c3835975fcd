"""Retrieval metrics as pure functions over ranked relevance (see docs/protocol.md).

Inputs are per query: a boolean row saying whether the item at each rank (1, 2, ...) is relevant,
and the number of relevant gallery items for that query (after self-match removal). Outputs are
per-query values in [0, 1]; means and percentages are taken by the caller over answerable queries.
"""

from __future__ import annotations

import numpy as np


def _as_relevance(ranked_relevance: np.ndarray) -> np.ndarray:
    rel = np.asarray(ranked_relevance, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"ranked_relevance must be 2-D (queries x ranks), got shape {rel.shape}")
    return rel


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")


def recall_at_k(ranked_relevance: np.ndarray, k: int) -> np.ndarray:
    """Hit rate: 1.0 if any of the first k ranked items is relevant, else 0.0 (SOP's Recall@K).

    Not the IR recall (fraction of relevant items found). If fewer than k items were ranked (a
    gallery smaller than k), the available ranks are used.
    """
    _check_k(k)
    rel = _as_relevance(ranked_relevance)
    return rel[:, :k].any(axis=1).astype(np.float64)


def average_precision_at_k(ranked_relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k = (1 / min(k, n_rel)) * sum_{i<=k} P(i) * rel(i)  (GLDv2 / ILIAS convention).

    P(i) is precision at cut-off i. A query with no hit in the top k scores 0; a query with
    n_rel == 0 is unanswerable and gets NaN (the caller excludes it or counts it as a miss).
    """
    _check_k(k)
    rel = _as_relevance(ranked_relevance)[:, :k].astype(np.float64)
    n_rel = np.asarray(n_relevant, dtype=np.int64)
    if n_rel.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have one entry per query ({rel.shape[0]}), got {n_rel.shape}")
    if (rel.sum(axis=1) > n_rel).any():
        bad = int(np.flatnonzero(rel.sum(axis=1) > n_rel)[0])
        raise ValueError(f"query {bad}: more relevant items ranked than n_relevant={n_rel[bad]}")
    hits_so_far = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    precision_sum = (hits_so_far / ranks * rel).sum(axis=1)
    denominator = np.minimum(k, n_rel).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_rel > 0, precision_sum / np.where(denominator > 0, denominator, 1.0), np.nan)
    return ap


def first_relevant_rank(ranked_relevance: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant item in the ranked list, 0 when none is ranked."""
    rel = _as_relevance(ranked_relevance)
    has = rel.any(axis=1)
    return np.where(has, rel.argmax(axis=1) + 1, 0).astype(np.int64)


def mean_percent(per_query: np.ndarray, answerable: np.ndarray, unanswerable_as_miss: bool = False) -> float:
    """Mean over answerable queries in percent; optionally count unanswerable ones as 0."""
    values = np.asarray(per_query, dtype=np.float64)
    mask = np.asarray(answerable, dtype=bool)
    if unanswerable_as_miss:
        values = np.where(mask, values, 0.0)
        mask = np.ones_like(mask)
    if not mask.any():
        return float("nan")
    return float(values[mask].mean() * 100.0)
