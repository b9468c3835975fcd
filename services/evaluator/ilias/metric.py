"""ILIAS's own AP@k, oracle and breakdown groups, as pure functions (docs/protocol.md, "ILIAS official mode").

The official evaluation (ilias-vrg/ilias evaluation/src/dataset.py) takes a query's top-k list
by score, marks which items are in the query object's ground truth, and computes scikit-learn's
``average_precision_score`` on those k scores, then multiplies it by (hits in the top k) /
min(k, |gt|). scikit-learn's AP is sum_n (R_n - R_{n-1}) P_n over the DISTINCT score thresholds,
so items with equal scores form one threshold: every positive of a tie group gets the precision
measured at the group's end. Written out, with groups g in descending score order::

    AP@k = (1 / min(k, |gt|)) * sum_g  positives_in(g) * precision_at_end_of(g)

|gt| counts every positive listed in positive_ids.txt for the object, also those missing from
the features. Without ties this is exactly vsbench's AP@K; with ties it differs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Boundaries from the official evaluation: a positive belongs to [low, high).
CLUTTER_GROUPS: tuple[tuple[float, float], ...] = ((0, 18), (18, 33), (33, 53), (53, math.inf))
SCALE_GROUPS: tuple[tuple[float, float], ...] = (
    (0, 0.06880213760855043),
    (0.06880213760855043, 0.13526567164179104),
    (0.13526567164179104, 0.2729876723163842),
    (0.2729876723163842, math.inf),
)


def group_label(low: float, high: float) -> str:
    """The official report's key for a group, e.g. ``0-18`` or ``0.2729876723163842-inf``."""
    return f"{_official_number(low)}-{_official_number(high)}"


def _official_number(value: float) -> str:
    # The official keys are Python's str() of the bounds as written there (ints stay ints).
    if math.isinf(value):
        return "inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check(ranked_scores: np.ndarray, ranked_relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(ranked_scores)
    relevant = np.asarray(ranked_relevant, dtype=bool)
    if scores.ndim != 1 or scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevance {relevant.shape} must be equal-length 1-D arrays")
    if scores.size > 1 and (np.diff(scores.astype(np.float64)) > 0).any():
        raise ValueError("ranked_scores must be in descending order")
    return scores[:k], relevant[:k]


def official_average_precision(
    ranked_scores: np.ndarray, ranked_relevant: np.ndarray, n_ground_truth: int, k: int
) -> float:
    """AP@k of one query, the official way (see the module docstring).

    ranked_scores: the ranked list's scores, descending (as stored scores: float32 from the
    search); ranked_relevant: whether each item is in the query's ground truth; n_ground_truth:
    |gt| from positive_ids.txt (listed positives, present in the features or not). 0.0 when no
    positive is in the top k.
    """
    scores, relevant = _check(ranked_scores, ranked_relevant, k)
    if not relevant.any():
        return 0.0
    if n_ground_truth < int(relevant.sum()):
        raise ValueError(f"{int(relevant.sum())} positives ranked but only {n_ground_truth} in the ground truth")
    # The last index of each run of equal scores closes one threshold.
    group_ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    hits_at_end = np.cumsum(relevant)[group_ends]
    positives_in_group = np.diff(np.concatenate(([0], hits_at_end)))
    precision_at_end = hits_at_end / (group_ends + 1.0)
    return float((positives_in_group * precision_at_end).sum() / min(k, n_ground_truth))


def official_oracle(ranked_relevant: np.ndarray, n_ground_truth: int, k: int) -> float:
    """The official "oracle": (hits in the top k / length of that list) * k / |gt|; 0.0 without a hit.

    With a full list of k items it is the share of the ground truth found in the top k.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = np.asarray(ranked_relevant, dtype=bool)[:k]
    if not top.any():
        return 0.0
    return float(top.mean() * (k / n_ground_truth))


def breakdown_ap(
    ranked_scores: np.ndarray,
    ranked_relevant: np.ndarray,
    ranked_positive_values: np.ndarray,
    listed_values: Sequence[float],
    groups: Sequence[tuple[float, float]],
    k: int,
) -> dict[str, float]:
    """AP@k of one query per scale or clutter group, the official way.

    For a group, the object's positives outside it are removed from the ranked list (before the
    top-k cut) and from the ground truth; a group the object has no positive in is left out.
    ranked_positive_values: per ranked item, the scale/clutter of the query object's positive
    there (NaN for anything else); listed_values: that value for every positive listed for the
    object. Returns {group label: AP}.
    """
    values = np.asarray(ranked_positive_values, dtype=np.float64)
    listed = np.asarray(listed_values, dtype=np.float64)
    relevant = np.asarray(ranked_relevant, dtype=bool)
    scores = np.asarray(ranked_scores)
    out: dict[str, float] = {}
    for low, high in groups:
        in_group = (listed >= low) & (listed < high)
        if not in_group.any():
            continue
        own_outside = relevant & ~((values >= low) & (values < high))
        keep = ~own_outside
        out[group_label(low, high)] = official_average_precision(
            scores[keep], relevant[keep], int(in_group.sum()), k
        )
    return out
