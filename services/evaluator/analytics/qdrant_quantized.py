"""Qdrant's own quantization (scalar int8, binary, product), measured in the Qdrant engine.

Each quantization gets a temporary Qdrant Edge shard (qdrant-edge-py, the engine behind the
qdrant-edge store and the same segment code as a Qdrant server) holding the run's gallery vectors
with that quantization config, optimised so the quantized codes are built (indexing threshold 1 KB,
`m=0`: no HNSW graph, and a full-scan threshold above any gallery, so a search is a full scan over
the quantized codes: exact over the codes, no graph approximation). Queries search with
`exact=False` (exact=True would bypass the codes and score the originals) and
QuantizationSearchParams(rescore=False), or rescore=True with oversampling so the top
RESCORE_DEPTH candidates are re-scored with the original vectors, as a Qdrant deployment would.
Whatever store the run used, the rows name the engine "qdrant-edge".
"""

from __future__ import annotations

import tempfile
from typing import Sequence

import numpy as np

from services.evaluator.analytics.compression import RESCORE_DEPTH
from services.evaluator.scoring import score_topk
from services.evaluator.search import TopK

_BATCH = 256
# Qdrant's product quantization compression ratio used here: 16x smaller than float32.
PRODUCT_RATIO = 16


def _configs(q):
    return {
        "qdrant-scalar": (q.ScalarQuantizationConfig(type=q.ScalarType.Int8, always_ram=True), lambda d: float(d)),
        "qdrant-binary": (q.BinaryQuantizationConfig(always_ram=True), lambda d: d / 8.0),
        "qdrant-product": (
            q.ProductQuantizationConfig(compression=q.CompressionRatio.X16, always_ram=True),
            lambda d: 4.0 * d / PRODUCT_RATIO,
        ),
    }


def qdrant_rows(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    *,
    recall_k: Sequence[int],
    map_k: Sequence[int],
    exclude: np.ndarray | None = None,
    unanswerable_as_miss: bool = False,
) -> list[dict]:
    """Rows for Qdrant's scalar / binary / product quantization, each without and with rescore.
    Without qdrant-edge-py installed, one row per quantization says so (no metrics)."""
    dim = int(gallery.shape[1])
    try:
        import qdrant_edge as q
    except ImportError:
        return [
            _row(dim, name, rescored, None, {}, "qdrant-edge-py is not installed: not measured")
            for name in ("qdrant-scalar", "qdrant-binary", "qdrant-product")
            for rescored in (False, True)
        ]
    depth = max(max(recall_k), max(map_k))
    rows = []
    for name, (config, size) in _configs(q).items():
        with tempfile.TemporaryDirectory(prefix="vsbench-qdrant-quant-") as folder:
            shard = q.EdgeShard.create(folder, q.EdgeConfig(
                vectors=q.EdgeVectorParams(size=dim, distance=q.Distance.Dot),
                quantization_config=config,
                optimizers=q.EdgeOptimizersConfig(indexing_threshold=1, default_segment_number=1),
                hnsw_config=q.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=2**62),
            ))
            try:
                for start in range(0, len(gallery), 1024):
                    shard.update(q.UpdateOperation.upsert_points(
                        [q.Point(start + i, row.tolist(), {}) for i, row in enumerate(gallery[start : start + 1024])]
                    ))
                shard.optimize()
                for rescored in (False, True):
                    topk = _search(q, shard, queries, depth, exclude, rescored)
                    metrics = score_topk(
                        topk, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
                        query_in_gallery=exclude, unanswerable_as_miss=unanswerable_as_miss,
                    ).metrics
                    note = ("quantized codes only" if not rescored else
                            f"top {max(depth, RESCORE_DEPTH)} by the codes re-scored with the original vectors")
                    rows.append(_row(dim, name, rescored, size(dim), metrics, note,
                                     max(depth, RESCORE_DEPTH) if rescored else None))
            finally:
                shard.close()
    return rows


def _search(q, shard, queries: np.ndarray, depth: int, exclude: np.ndarray | None, rescored: bool) -> TopK:
    limit = depth + (1 if exclude is not None else 0)  # room for the intra self-match, dropped below
    oversampling = max(1.0, max(depth, RESCORE_DEPTH) / limit) if rescored else None
    params = q.SearchParams(
        exact=False, quantization=q.QuantizationSearchParams(rescore=rescored, oversampling=oversampling)
    )
    indices = np.full((len(queries), depth), -1, dtype=np.int64)
    scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
    for start in range(0, len(queries), _BATCH):
        requests = [
            q.QueryRequest(limit=limit, query=q.Query.Nearest(v.tolist()), params=params)
            for v in queries[start : start + _BATCH]
        ]
        for offset, points in enumerate(shard.query_batch(q.QueryBatchRequest(requests))):
            row = start + offset
            own = int(exclude[row]) if exclude is not None else -1
            # Qdrant orders equal scores its own way; re-order them by gallery position (our tie rule).
            hits = sorted(((float(p.score), int(p.id)) for p in points if int(p.id) != own),
                          key=lambda h: (-h[0], h[1]))[:depth]
            for col, (score, position) in enumerate(hits):
                indices[row, col], scores[row, col] = position, score
    return TopK(indices=indices, scores=scores)


def _row(dim, name, rescored, size, metrics, note, rescore_depth=None) -> dict:
    return {
        "dims": dim,
        "quantization": name,
        "rescore": rescored,
        "rescore_depth": rescore_depth,
        "bytes_per_vector": size,
        "engine": "qdrant-edge",
        "metrics": metrics,
        "note": note,
    }
