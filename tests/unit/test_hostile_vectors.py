"""services.common.vectors: the one rule for usable vectors and their float64 normalisation,
probed with the values that broke the pipeline (issue 11 item 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.vectors import (
    MAX_NORM,
    MIN_NORM,
    UnusableVector,
    row_problems,
    unit_rows,
    unit_vector,
    vector_problem,
)

DIM = 1024


def test_normal_vector_is_normalised_exactly():
    vector = np.array([3.0, 4.0], dtype=np.float32)
    unit = unit_vector(vector)
    assert unit.dtype == np.float32
    assert unit.tolist() == pytest.approx([0.6, 0.8], abs=1e-7)
    assert vector_problem(vector) is None


def test_huge_values_that_overflow_float32_norms_are_refused():
    vector = np.full(DIM, 1e20, dtype=np.float32)
    # The bug this guards: float32 arithmetic makes the norm inf and the "unit" vector zeros.
    with np.errstate(over="ignore"):
        assert np.isinf(np.linalg.norm(vector))
    problem = vector_problem(vector)
    assert problem is not None and "exceeds" in problem
    # The norm in the message is the true one: 1e20 * sqrt(1024) = 3.2e21.
    assert "3.2e+21" in problem
    with pytest.raises(UnusableVector, match="exceeds"):
        unit_vector(vector)


def test_values_past_float64_squares_are_still_reported_as_too_large():
    problem = vector_problem(np.full(8, 1e200))
    assert problem is not None and "exceeds" in problem


def test_tiny_values_that_underflow_float32_are_refused():
    vector = np.full(DIM, 1e-30, dtype=np.float32)
    with np.errstate(under="ignore"):
        assert np.linalg.norm(vector) == 0.0  # float32: the squares underflow, normalising gives inf
    problem = vector_problem(vector)
    assert problem is not None and "below" in problem and "3.2e-29" in problem


def test_zero_vector_is_refused():
    assert vector_problem(np.zeros(DIM)) == "vector is all zeros (norm 0)"
    with pytest.raises(UnusableVector, match="all zeros"):
        unit_vector([0.0, 0.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad):
    vector = np.ones(DIM)
    vector[7] = bad
    assert vector_problem(vector) == "vector has 1 non-finite value (NaN or inf)"


def test_bounds_are_inclusive_and_configurable():
    assert vector_problem([MIN_NORM]) is None
    assert vector_problem([MAX_NORM]) is None
    assert vector_problem([2.0], max_norm=1.0) == "vector norm 2 exceeds 1"
    assert vector_problem([0.5], min_norm=1.0) == "vector norm 0.5 is below 1"


def test_unit_rows_keeps_good_rows_and_zeros_bad_ones():
    matrix = np.stack(
        [
            np.full(4, 2.0),
            np.full(4, 1e20),
            np.full(4, 1e-30),
            np.zeros(4),
            np.array([1.0, np.nan, 0.0, 0.0]),
            np.array([0.0, 0.0, 0.0, 5.0]),
        ]
    )
    units, problems = unit_rows(matrix)
    assert units.dtype == np.float32 and units.shape == (6, 4)
    assert [p is None for p in problems] == [True, False, False, False, False, True]
    assert units[0].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert units[5].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert not units[1:5].any()
    assert np.isfinite(units).all()


def test_float64_normalisation_of_large_but_legal_values_is_finite():
    # 1e14 per value: legal (norm 3.2e15 > MAX_NORM? no: sqrt(4) * 1e14 = 2e14 <= 1e15).
    units, problems = unit_rows(np.full((1, 4), 1e14, dtype=np.float32))
    assert problems == [None]
    assert units[0].tolist() == pytest.approx([0.5] * 4)


def test_row_problems_refuses_non_matrix_input():
    with pytest.raises(ValueError, match="2-D"):
        row_problems(np.zeros(3))
