"""Compression: what smaller vectors cost in accuracy, from the stored float32 vectors.

Rows (each scored with the evaluation's exact search and metrics):
- truncation to the first d dims, re-normalised (Matryoshka-style), "float32";
- "float16": the gallery stored as float16 (queries stay float32);
- "int8": per-dimension scalar quantisation calibrated on the gallery (min..max of each dim
  mapped to 256 levels), dequantised to score against float32 queries;
- "binary": sign bits of gallery and query, scored as the dot product of +-1 vectors (equivalent
  to ranking by Hamming distance);
each of the last three with and without rescoring: the top RESCORE_DEPTH by the compressed score
re-scored with the full float32 vectors and re-ranked (tie rule as everywhere).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from services.evaluator.scoring import score_topk
from services.evaluator.search import TopK, exact_topk, l2_normalize

RESCORE_DEPTH = 100
RESCORE_BLOCK_BYTES = 256 * 1024 * 1024
QUANTIZATIONS = ("float16", "int8", "binary")


def truncation_dims(dim: int) -> list[int]:
    """32, 64, 128, ... below dim, then dim itself."""
    dims, d = [], 32
    while d < dim:
        dims.append(d)
        d *= 2
    return dims + [dim]


def truncate(vectors: np.ndarray, dims: int) -> np.ndarray:
    return l2_normalize(np.asarray(vectors, dtype=np.float32)[:, :dims])


def int8_calibration(gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (offset, step): level = round((x - offset) / step), 0..255."""
    low = gallery.min(axis=0).astype(np.float32)
    high = gallery.max(axis=0).astype(np.float32)
    step = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    return low, step


def int8_roundtrip(vectors: np.ndarray, offset: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Quantise to uint8 levels and back (values outside the calibration range are clipped)."""
    levels = np.clip(np.round((vectors - offset) / step), 0, 255).astype(np.uint8)
    return (levels.astype(np.float32) * step + offset).astype(np.float32)


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """+1 / -1 per dimension (a zero counts as +1), as float32 for the dot product."""
    return np.where(np.asarray(vectors) >= 0, 1.0, -1.0).astype(np.float32)


def bytes_per_vector(dims: int, quantization: str) -> float:
    return {"float32": 4.0 * dims, "float16": 2.0 * dims, "int8": 1.0 * dims, "binary": dims / 8.0}[quantization]


def rescore(candidates: TopK, queries: np.ndarray, gallery: np.ndarray, depth: int) -> TopK:
    """Re-score each query's candidates with full-precision vectors; rank by score desc, then
    gallery position asc; keep `depth`."""
    idx = candidates.indices
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    scores = np.empty(idx.shape, dtype=np.float32)
    # Blocks of queries: the gathered candidates are (queries x depth x dim) floats.
    rows = max(1, RESCORE_BLOCK_BYTES // max(1, 4 * idx.shape[1] * gallery.shape[1]))
    for start in range(0, len(idx), rows):
        block = slice(start, start + rows)
        scores[block] = np.einsum("qd,qkd->qk", queries[block], gallery[safe[block]])
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    sort_index = np.where(valid, idx, np.iinfo(np.int64).max)
    order = np.lexsort((sort_index, -scores.astype(np.float64)), axis=1)[:, :depth]
    out_i = np.take_along_axis(idx, order, 1)
    out_s = np.take_along_axis(scores, order, 1)
    return TopK(indices=np.where(np.isneginf(out_s), -1, out_i), scores=out_s)


Scorer = Callable[[TopK], dict]


def compression_sweep(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    *,
    recall_k: Sequence[int],
    map_k: Sequence[int],
    exclude: np.ndarray | None = None,
    unanswerable_as_miss: bool = False,
    dims: Sequence[int] | None = None,
    quantizations: Sequence[str] = QUANTIZATIONS,
    rescore_depth: int = RESCORE_DEPTH,
    engine: str = "auto",
) -> list[dict]:
    """The compression rows (the record's CompressionRow dicts). queries / gallery: the stored
    L2-normalised float32 vectors, gallery in gallery order."""
    queries = np.asarray(queries, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    full_dim = gallery.shape[1]
    depth = max(max(recall_k), max(map_k))

    def metrics_of(topk: TopK) -> dict:
        return score_topk(
            topk, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
            query_in_gallery=exclude, unanswerable_as_miss=unanswerable_as_miss,
        ).metrics

    def search(q: np.ndarray, g: np.ndarray, k: int) -> TopK:
        return exact_topk(q, g, k, exclude=exclude, engine=engine)

    rows = []
    for d in dims if dims is not None else truncation_dims(full_dim):
        if not 1 <= d <= full_dim:
            raise ValueError(f"truncation to {d} dims: the vectors have {full_dim}")
        rows.append(_row(d, "float32", False, metrics_of(search(truncate(queries, d), truncate(gallery, d), depth))))
    for quantization in quantizations:
        if quantization == "float16":
            g, q = gallery.astype(np.float16).astype(np.float32), queries
        elif quantization == "int8":
            offset, step = int8_calibration(gallery)
            g, q = int8_roundtrip(gallery, offset, step), queries
        elif quantization == "binary":
            g, q = binary_codes(gallery), binary_codes(queries)
        else:
            raise ValueError(f"unknown quantization {quantization!r}: use {', '.join(QUANTIZATIONS)}")
        k_deep = max(depth, rescore_depth)
        coarse = search(q, g, k_deep)
        cut = TopK(indices=coarse.indices[:, :depth], scores=coarse.scores[:, :depth])
        rows.append(_row(full_dim, quantization, False, metrics_of(cut)))
        rows.append(_row(full_dim, quantization, True, metrics_of(rescore(coarse, queries, gallery, depth)),
                         rescore_depth=k_deep))
    return rows


def _row(dims: int, quantization: str, rescored: bool, metrics: dict, rescore_depth: int | None = None) -> dict:
    return {
        "dims": int(dims),
        "quantization": quantization,
        "rescore": rescored,
        "rescore_depth": rescore_depth,
        "bytes_per_vector": bytes_per_vector(dims, quantization),
        "engine": "vsbench",
        "metrics": metrics,
        "note": "",
    }
