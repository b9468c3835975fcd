"""The reference every exact top-k test compares with: float64 scores, then the tie rule (score
descending, gallery position ascending) by a stable lexsort, one query at a time."""

from __future__ import annotations

import numpy as np


def brute_force(queries, gallery, k, exclude=None):
    """Ranked gallery positions per query; `exclude` gives per query a position to leave out (or -1)."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if exclude is not None:
        for row, col in enumerate(exclude):
            if col >= 0:
                scores[row, col] = -np.inf
    return np.array([np.lexsort((np.arange(gallery.shape[0]), -s))[:k] for s in scores])
