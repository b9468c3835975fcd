"""Pareto view across models on one dataset: accuracy vs $/1k images vs images/s vs bytes/vector.

A model is Pareto-optimal when no other model is at least as good on every objective and strictly
better on one. Objectives are compared only where every model of the dataset has a value (a
self-hosted model has no price, a reused run no throughput), and the record says which were used,
as the leaderboard's average says which datasets it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

# name -> True when larger is better
OBJECTIVES: dict[str, bool] = {
    "accuracy": True,
    "cost_per_1k": False,
    "images_per_s": True,
    "bytes_per_vector": False,
}
OBJECTIVE_LABELS = {
    "accuracy": "R@1 (%)",
    "cost_per_1k": "USD per 1k images",
    "images_per_s": "images/s",
    "bytes_per_vector": "bytes per vector",
}


@dataclass
class ParetoPoint:
    model: str
    values: dict[str, float | None]
    optimal: bool = False
    dominated_by: list[str] = field(default_factory=list)


def _usable(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def objectives_shared(points: Sequence[Mapping[str, float | None]]) -> list[str]:
    """The objectives every point has a finite value for (accuracy first)."""
    return [name for name in OBJECTIVES if points and all(_usable(p.get(name)) for p in points)]


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and strictly better on one."""
    better = False
    for name in objectives:
        x, y = (a[name], b[name]) if OBJECTIVES[name] else (-a[name], -b[name])
        if x < y:
            return False
        better |= x > y
    return better


def pareto_front(values: Mapping[str, Mapping[str, float | None]]) -> tuple[list[ParetoPoint], list[str]]:
    """(points with `optimal` and `dominated_by` set, the objectives compared). values: model ->
    objective -> value. With no shared objective every model is marked optimal (nothing to compare)."""
    models = sorted(values)
    shared = objectives_shared([values[m] for m in models])
    points = [ParetoPoint(m, dict(values[m])) for m in models]
    for p in points:
        p.dominated_by = [q.model for q in points if q is not p and shared and dominates(q.values, p.values, shared)]
        p.optimal = not p.dominated_by
    return points, shared
