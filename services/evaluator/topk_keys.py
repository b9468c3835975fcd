"""Ranked candidates as sortable 64-bit keys, so the tie rule costs one integer sort.

A candidate (score, gallery position) becomes one uint64: the high 32 bits are the float32 score
mapped to an unsigned integer that orders *descending*, the low 32 bits the position. Ascending key
order is then exactly the tie rule (score descending, then gallery position ascending), and
`np.partition` / `np.sort` on keys (SIMD on x86) select and rank without lexsort or stable sorts.
Positions must be below 2**32 - 1 (4.29 billion gallery rows); the all-ones key marks an empty slot.
"""

from __future__ import annotations

import numpy as np

EMPTY_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
MAX_POSITION = 0xFFFF_FFFE
_SIGN = np.uint32(0x8000_0000)
_MAGNITUDE = np.int32(0x7FFF_FFFF)
_LOW32 = np.uint64(0xFFFF_FFFF)
_SHIFT = np.uint64(32)


def encode(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 keys of float32 scores (finite or -inf) at int gallery positions (same shape)."""
    # -0.0 + 0.0 == +0.0: equal scores must give equal keys, and IEEE says -0.0 == +0.0.
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    # Descending order as unsigned: negative floats keep their bits (larger magnitude, larger
    # key); non-negative ones flip all but the sign bit (larger value, smaller key).
    descending = (bits ^ (~(bits >> 31) & _MAGNITUDE)).view(np.uint32)
    return (descending.astype(np.uint64) << _SHIFT) | np.asarray(positions).astype(np.uint64)


def decode(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scores, int64 positions) of keys; empty slots give (-inf, -1)."""
    keys = np.asarray(keys, dtype=np.uint64)
    ascending = ~((keys >> _SHIFT).astype(np.uint32))
    bits = np.where(ascending & _SIGN, ascending & ~_SIGN, ~ascending)
    scores = bits.view(np.float32).copy()
    positions = (keys & _LOW32).astype(np.int64)
    empty = keys == EMPTY_KEY
    scores[empty] = -np.inf
    positions[empty] = -1
    return scores, positions


def smallest(keys: np.ndarray, k: int, ordered: bool = False) -> np.ndarray:
    """Per row, the k smallest keys (the k best candidates), ranked when `ordered`, else in any
    order; pads with empty slots."""
    n = keys.shape[1]
    if n > k:
        return np.sort(keys, axis=1)[:, :k] if ordered else np.partition(keys, k - 1, axis=1)[:, :k]
    if n < k:
        keys = np.pad(keys, ((0, 0), (0, k - n)), constant_values=EMPTY_KEY)
    return np.sort(keys, axis=1) if ordered else keys


def merge(best: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k best of two per-row key sets (either may hold empty slots)."""
    if candidates.shape[1] == 0:
        return best
    return smallest(np.concatenate([best, candidates], axis=1), k)


def kth_score(best: np.ndarray) -> np.ndarray:
    """Per row, the score of the worst of the k kept keys: -inf while a slot is still empty."""
    return decode(best.max(axis=1))[0]


def pack_rows(rows: np.ndarray, keys: np.ndarray, n_rows: int) -> np.ndarray:
    """Keys listed row by row (rows ascending) into an (n_rows, most per row) matrix, padded."""
    counts = np.bincount(rows, minlength=n_rows)
    out = np.full((n_rows, int(counts.max(initial=0))), EMPTY_KEY, dtype=np.uint64)
    if keys.size:
        starts = np.cumsum(counts) - counts
        out[rows, np.arange(keys.size) - starts[rows]] = keys
    return out
