"""The one check every vendor vector passes before it is answered or cached.

Checked in float64, so a vector whose float32 arithmetic would go wrong is caught here and not
downstream: 1e20 per value has a float32 norm of inf (normalising gives zeros), 1e-30 per value a
float32 norm of 0 (normalising gives inf). The proxy passes vectors on unnormalised, so the norm
must leave room for a float32 consumer to square and sum: anything outside [MIN_NORM, MAX_NORM]
(services/common/vectors.py, shared with the embedder and the evaluator)
is refused as INVALID_OUTPUT, like NaN, infinity, a wrong length or a non-number. Real embedding
vectors have norms between about 1e-3 and 1e3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.common.types import ErrorCode, ItemError
from services.common.vectors import MAX_NORM, MIN_NORM, vector_problem

__all__ = ["MAX_NORM", "MIN_NORM", "check_vector"]


def check_vector(values: Any, dim: int, who: str) -> np.ndarray | ItemError:
    """`values` as a float32 vector of `dim` values, or the INVALID_OUTPUT error saying why not."""

    def invalid(message: str) -> ItemError:
        return ItemError(ErrorCode.INVALID_OUTPUT, f"{who}: {message}")

    try:
        vector = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        vector = np.empty(0, dtype=object)
    # A null or string in the list gives an object array; numpy would turn None into NaN silently.
    if vector.dtype.kind not in "iuf":
        return invalid("vector holds non-numbers")
    if vector.ndim != 1 or vector.shape[0] != dim:
        return invalid(f"vector of shape {vector.shape}, expected ({dim},)")
    wide = vector.astype(np.float64)
    problem = vector_problem(wide)  # the one rule (services/common/vectors.py), in float64
    if problem is not None:
        return invalid(problem)
    # Within the bounds every value fits float32 and the largest is far above its smallest normal.
    return wide.astype(np.float32)
