"""Exact top-k over vectors scored AS STORED, the way the official ILIAS search scores them.

The official search (knn_search/search.py) casts stored features to float32 and takes inner
products with faiss, with no re-normalisation: a float16 vector of norm 1.0007 keeps its larger
scores. Here each score is accumulated in float64 from the float32 values and rounded to float32
(faiss's output type): identical vectors then get bit-identical scores wherever they sit in the
gallery, so exact ties stay ties (a float32 matrix product may round them apart by position).
The ranked list orders by score descending, then gallery position ascending; which members of
a tie group straddling the k-th place are kept is not defined by the official code (faiss heap),
here the lower gallery positions are.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from services.evaluator.search import TopK

# Per gallery block the float64 score tile is queries x rows x 8 bytes; bounded to this.
DEFAULT_TILE_BYTES = 256 * 1024 * 1024


def as_stored_scores(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """float32 inner products of float32-cast vectors, accumulated in float64."""
    q = np.asarray(queries).astype(np.float32).astype(np.float64)
    g = np.asarray(block).astype(np.float32).astype(np.float64)
    return (q @ g.T).astype(np.float32)


def _block_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row of one block by (score desc, column asc): (scores, columns), both (n, k)."""
    n_rows, n_cols = scores.shape
    if n_cols <= k:
        columns = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
        return scores, np.array(columns, dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, 1).min(axis=1)[:, None]
    above = scores > kth
    equal = scores == kth
    # Of the items tied with the k-th score, the lowest columns fill the remaining places.
    room = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1, dtype=np.int32) <= room))
    columns = np.nonzero(keep)[1].reshape(n_rows, k).astype(np.int64)
    return np.take_along_axis(scores, columns, 1), columns


def _ordered(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((positions, -scores.astype(np.float64)), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(positions, order, 1)


def as_stored_topk(
    queries: np.ndarray,
    gallery_blocks: Iterable[np.ndarray],
    k: int,
    *,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    progress: Callable[[int], None] | None = None,
) -> TopK:
    """Top-k gallery positions per query over blocks streamed in gallery order.

    Blocks larger than the tile are split, so memory stays bounded whatever the file size.
    Positions are -1 (score -inf) where the gallery holds fewer than k items.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.asarray(queries)
    if q.ndim != 2:
        raise ValueError(f"queries must be 2-D, got shape {q.shape}")
    n_q, dim = q.shape
    best_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    best_i = np.full((n_q, k), -1, dtype=np.int64)
    rows_per_tile = max(k + 1, tile_bytes // (8 * max(1, n_q)))
    offset = 0
    for block in gallery_blocks:
        if block.shape[0] == 0:
            continue
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(f"gallery block of shape {block.shape} does not match {dim}-d queries")
        for start in range(0, block.shape[0], rows_per_tile):
            tile = block[start : start + rows_per_tile]
            cand_s, cand_c = _block_topk(as_stored_scores(q, tile), k)
            best_s, best_i = _ordered(
                np.concatenate([best_s, cand_s], axis=1),
                np.concatenate([best_i, cand_c + offset + start], axis=1),
                k,
            )
        offset += block.shape[0]
        if progress is not None:
            progress(block.shape[0])
    best_i = np.where(np.isneginf(best_s), -1, best_i)
    return TopK(indices=best_i, scores=best_s)
