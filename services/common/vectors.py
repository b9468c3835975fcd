"""Is this vector usable, and its unit vector: the one rule for the embedder, the api_proxy and the
evaluator pipeline.

A vector is usable when every value is finite and its L2 norm, computed in float64, lies within
[MIN_NORM, MAX_NORM]. The bounds keep downstream float32 arithmetic exact enough to mean something:
- MAX_NORM = 1e15: the sum of squares (1e30) stays far below float32's 3.4e38, so code that
  normalises in float32 cannot overflow to inf and then store zeros.
- MIN_NORM = 1e-12: the squares of the largest component (>= MIN_NORM / sqrt(dim)) stay far above
  float32's smallest normal number (1.2e-38) for any dimension in use, so the norm does not
  underflow to 0 and normalising does not divide by zero. Real embeddings have norms of ~1 to ~1e3.
Normalising itself happens in float64 and the result is cast to float32 (finite by construction).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_NORM = 1e-12
MAX_NORM = 1e15


class UnusableVector(ValueError):
    """A vector that must not be stored or compared; the message says why (per-item INVALID_OUTPUT)."""


def _row_problems(
    matrix: np.ndarray, norms: np.ndarray, min_norm: float, max_norm: float
) -> list[str | None]:
    finite = np.isfinite(matrix).all(axis=1)
    problems: list[str | None] = []
    for row in range(matrix.shape[0]):
        norm = float(norms[row])
        if not finite[row]:
            bad = int((~np.isfinite(matrix[row])).sum())
            problems.append(f"vector has {bad} non-finite value{'s' if bad != 1 else ''} (NaN or inf)")
        elif norm == 0.0:
            problems.append("vector is all zeros (norm 0)")
        elif not np.isfinite(norm) or norm > max_norm:
            problems.append(f"vector norm {norm:.3g} exceeds {max_norm:g}")
        elif norm < min_norm:
            problems.append(f"vector norm {norm:.3g} is below {min_norm:g}")
        else:
            problems.append(None)
    return problems


def _as_matrix(vectors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"expected real numbers, got dtype {matrix.dtype}")
    return matrix.astype(np.float64, copy=False)


def _norms(matrix: np.ndarray) -> np.ndarray:
    # Scaled by each row's largest magnitude first: the squares of 1e200 would overflow even
    # float64, and a vector of huge but finite values must be reported as too large, not as inf.
    with np.errstate(invalid="ignore", over="ignore"):
        peak = np.max(np.abs(matrix), axis=1, initial=0.0)
        safe_peak = np.where((peak > 0) & np.isfinite(peak), peak, 1.0)
        scaled = matrix / safe_peak[:, None]
        return np.sqrt(np.einsum("ij,ij->i", scaled, scaled)) * safe_peak


def row_problems(
    vectors: np.ndarray | Sequence[Sequence[float]], *, min_norm: float = MIN_NORM, max_norm: float = MAX_NORM
) -> list[str | None]:
    """Per row: why it is unusable, or None when it is fine."""
    matrix = _as_matrix(vectors)
    return _row_problems(matrix, _norms(matrix), min_norm, max_norm)


def unit_rows(
    vectors: np.ndarray | Sequence[Sequence[float]], *, min_norm: float = MIN_NORM, max_norm: float = MAX_NORM
) -> tuple[np.ndarray, list[str | None]]:
    """L2-normalise each row in float64; returns (float32 unit rows, per-row problem or None).

    Rows with a problem are all zeros in the returned array and must be dropped by the caller
    (reported as that item's INVALID_OUTPUT); the others have norm 1 within float32 rounding.
    """
    matrix = _as_matrix(vectors)
    norms = _norms(matrix)
    problems = _row_problems(matrix, norms, min_norm, max_norm)
    usable = np.array([p is None for p in problems], dtype=bool)
    out = np.zeros(matrix.shape, dtype=np.float32)
    if usable.any():
        out[usable] = (matrix[usable] / norms[usable, None]).astype(np.float32)
    return out, problems


def vector_problem(vector: np.ndarray | Sequence[float], **bounds: float) -> str | None:
    """Why this one vector is unusable, or None."""
    return row_problems(np.asarray(vector).reshape(1, -1), **bounds)[0]


def unit_vector(vector: np.ndarray | Sequence[float], **bounds: float) -> np.ndarray:
    """The float32 unit vector of `vector` (computed in float64); raises UnusableVector."""
    out, problems = unit_rows(np.asarray(vector).reshape(1, -1), **bounds)
    if problems[0] is not None:
        raise UnusableVector(problems[0])
    return out[0]
