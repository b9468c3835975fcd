"""From ranked lists to metrics and per-query outcomes: the protocol in code (docs/protocol.md).

Shared by `vsbench score` (precomputed embeddings) and the pipeline (embedded datasets), so both
compute every number the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from services.evaluator import metrics
from services.evaluator.search import TIE_RULE, TopK

if TYPE_CHECKING:
    from services.evaluator.results import QueryOutcome

NORMALIZATION = "L2-normalised float32 before indexing (also when the model already normalises)"


def protocol_record(
    *, setup: str, gallery_type: str, recall_k: Sequence[int], map_k: Sequence[int], search: str,
    unanswerable_as_miss: bool,
) -> dict:
    """How the numbers were computed, written into every result file."""
    return {
        "mode": "vsbench",
        "setup": setup,
        "gallery_type": gallery_type,
        "recall_k": list(recall_k),
        "recall_definition": "hit rate: 1 if any relevant item is in the top K (SOP evaluate_recall)",
        "map_k": list(map_k),
        "map_definition": "AP@K = (1/min(K, n_rel)) * sum_{i<=K} P(i) rel(i), mean over queries (GLDv2/ILIAS)",
        "tie_rule": TIE_RULE,
        "normalization": NORMALIZATION,
        "similarity": "dot product",
        "search": search,
        "self_match": "the query image itself is removed by image identity (intra only)",
        "distractors": "never relevant to any query",
        "unanswerable": "scored as misses" if unanswerable_as_miss else "excluded from means, counted",
    }


def metric_names(recall_k: Sequence[int], map_k: Sequence[int]) -> list[str]:
    return [f"recall@{k}" for k in recall_k] + [f"map@{k}" for k in map_k]


@dataclass
class LabelIndex:
    """Product labels as integer codes (-1 = distractor), so a 5M gallery costs 20 MB, not GBs of str."""

    codes: dict[str, int] = field(default_factory=dict)

    def encode(self, labels: Sequence[str]) -> np.ndarray:
        out = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            if label == "":
                out[i] = -1
            else:
                out[i] = self.codes.setdefault(label, len(self.codes))
        return out


@dataclass
class Scores:
    metrics: dict[str, float | None]
    queries: dict[str, int]
    per_query: dict[str, np.ndarray]  # per metric name, NaN for unanswerable
    first_relevant_rank: np.ndarray
    n_relevant: np.ndarray
    answerable: np.ndarray
    relevance: np.ndarray  # (Q, L) bool over the ranked list


def score_topk(
    topk: TopK,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    *,
    recall_k: Sequence[int],
    map_k: Sequence[int],
    query_in_gallery: np.ndarray | None = None,
    unanswerable_as_miss: bool = False,
) -> Scores:
    """Metrics for ranked lists.

    query_codes / gallery_codes: product codes (-1 = distractor, never relevant).
    query_in_gallery: per query its own gallery position in intra (-1 otherwise); that image is
    not counted in n_relevant (self-match removal) and must already be excluded from `topk`.
    """
    depth = max(max(recall_k), max(map_k))
    if topk.indices.shape[1] < depth:
        raise ValueError(f"ranked lists hold {topk.indices.shape[1]} items; K up to {depth} needs that many")
    indices = topk.indices[:, :depth]
    valid = indices >= 0
    ranked_codes = np.where(valid, gallery_codes[np.where(valid, indices, 0)], -2)
    relevance = (ranked_codes == query_codes[:, None]) & (query_codes[:, None] >= 0) & valid

    product_sizes = np.bincount(gallery_codes[gallery_codes >= 0], minlength=int(query_codes.max(initial=-1)) + 1)
    n_rel = np.where(
        query_codes >= 0,
        product_sizes[np.clip(query_codes, 0, None)] if product_sizes.size else 0,
        0,
    ).astype(np.int64)
    if query_in_gallery is not None:
        n_rel = n_rel - (np.asarray(query_in_gallery) >= 0).astype(np.int64)
    answerable = n_rel > 0

    per_query: dict[str, np.ndarray] = {}
    results: dict[str, float | None] = {}
    for k in recall_k:
        values = metrics.recall_at_k(relevance, k)
        per_query[f"recall@{k}"] = np.where(answerable, values, np.nan)
        results[f"recall@{k}"] = _finite_or_none(metrics.mean_percent(values, answerable, unanswerable_as_miss))
    for k in map_k:
        values = metrics.average_precision_at_k(relevance, n_rel, k)
        per_query[f"map@{k}"] = values
        results[f"map@{k}"] = _finite_or_none(
            metrics.mean_percent(np.nan_to_num(values, nan=0.0), answerable, unanswerable_as_miss)
        )
    counts = {
        "total": int(len(query_codes)),
        "scored": int(len(query_codes) if unanswerable_as_miss else answerable.sum()),
        "unanswerable": int((~answerable).sum()),
    }
    return Scores(
        metrics=results,
        queries=counts,
        per_query=per_query,
        first_relevant_rank=metrics.first_relevant_rank(relevance),
        n_relevant=n_rel,
        answerable=answerable,
        relevance=relevance,
    )


def _finite_or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def iter_outcomes(
    scores: Scores,
    topk: TopK,
    query_ids: Sequence[str],
    query_labels: Sequence[str],
    gallery_ids: Sequence[str] | Callable[[np.ndarray], list[str]],
    map_k: Sequence[int],
) -> Iterator["QueryOutcome"]:
    """Per-query outcomes. gallery_ids: the gallery's ids (indexable by position), or a function
    from an array of positions to their ids (columnar galleries: only the ranked ones become
    Python strings). Everything per row is converted in bulk: 1,000 queries x K = 1000 is a
    million ranked entries."""
    from services.evaluator.results import QueryOutcome

    depth = scores.relevance.shape[1]
    indices = topk.indices[:, :depth]
    valid = indices >= 0
    flat = indices[valid]
    names = gallery_ids(flat) if callable(gallery_ids) else [gallery_ids[i] for i in flat.tolist()]
    ends = np.cumsum(valid.sum(axis=1)).tolist()
    rounded = np.round(topk.scores[:, :depth].astype(np.float64), 6)
    ap_rows = {str(k): scores.per_query[f"map@{k}"].tolist() for k in map_k}
    n_relevant, answerable = scores.n_relevant.tolist(), scores.answerable.tolist()
    first = scores.first_relevant_rank.tolist()
    start = 0
    for q, query_id in enumerate(query_ids):
        keep = valid[q]
        end = ends[q]
        yield QueryOutcome(
            query_id=query_id,
            product_id=query_labels[q],
            n_relevant=n_relevant[q],
            answerable=answerable[q],
            first_relevant_rank=first[q],
            ap={k: values[q] for k, values in ap_rows.items()},
            top_ids=names[start:end],
            top_scores=rounded[q][keep].tolist(),
            top_relevant=scores.relevance[q][keep].tolist(),
        )
        start = end
