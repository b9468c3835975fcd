"""Metrics against hand-computed cases (docs/protocol.md)."""

import math

import numpy as np
import pytest

from services.evaluator.metrics import average_precision_at_k, first_relevant_rank, mean_percent, recall_at_k

T, F = True, False


def test_recall_is_hit_rate_not_fraction_found():
    rel = np.array([[F, T, F, T, F], [F, F, F, F, F], [T, F, F, F, F]])
    assert recall_at_k(rel, 1).tolist() == [0.0, 0.0, 1.0]
    assert recall_at_k(rel, 2).tolist() == [1.0, 0.0, 1.0]
    assert recall_at_k(rel, 5).tolist() == [1.0, 0.0, 1.0]


def test_ap_with_several_relevant_items():
    # ranks 1 and 3 relevant, 3 relevant items exist: AP@5 = (1/1 + 2/3) / min(5, 3) = 0.5556
    rel = np.array([[T, F, T, F, F]])
    assert average_precision_at_k(rel, np.array([3]), 5)[0] == pytest.approx((1 + 2 / 3) / 3)
    # AP@2 only sees rank 1: (1/1) / min(2, 3) = 0.5
    assert average_precision_at_k(rel, np.array([3]), 2)[0] == pytest.approx(0.5)


def test_ap_normalised_by_min_k_nrel_when_many_relevant():
    # 10 relevant items, K=4, ranks 2 and 4 relevant: (1/2 + 2/4) / 4 = 0.25
    rel = np.array([[F, T, F, T, F, F]])
    assert average_precision_at_k(rel, np.array([10]), 4)[0] == pytest.approx(0.25)


def test_ap_no_hit_is_zero_and_unanswerable_is_nan():
    rel = np.array([[F, F, F], [F, F, F]])
    ap = average_precision_at_k(rel, np.array([2, 0]), 3)
    assert ap[0] == 0.0
    assert math.isnan(ap[1])


def test_k_beyond_ranked_list_uses_available_ranks():
    # a gallery of 3 items, K = 20; both relevant items found at ranks 1 and 3
    rel = np.array([[T, F, T]])
    assert recall_at_k(rel, 20)[0] == 1.0
    assert average_precision_at_k(rel, np.array([2]), 20)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_perfect_ranking_is_one():
    rel = np.array([[T, T, F, F]])
    assert average_precision_at_k(rel, np.array([2]), 4)[0] == pytest.approx(1.0)


def test_first_relevant_rank_is_one_based_and_zero_when_absent():
    rel = np.array([[F, F, T], [T, F, F], [F, F, F]])
    assert first_relevant_rank(rel).tolist() == [3, 1, 0]


def test_mean_percent_excludes_or_counts_unanswerable():
    values = np.array([1.0, 0.0, 1.0, 0.0])
    answerable = np.array([T, T, T, F])
    assert mean_percent(values, answerable) == pytest.approx(200 / 3)
    assert mean_percent(values, answerable, unanswerable_as_miss=True) == pytest.approx(50.0)


def test_inconsistent_inputs_are_rejected():
    with pytest.raises(ValueError, match="more relevant items ranked"):
        average_precision_at_k(np.array([[T, T]]), np.array([1]), 2)
    with pytest.raises(ValueError, match="K must be"):
        recall_at_k(np.array([[T]]), 0)
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.array([T, F]), 1)
