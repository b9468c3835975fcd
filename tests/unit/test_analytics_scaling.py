"""Gallery scaling: subset rankings equal fresh searches over the subset gallery; the end points
equal the closed-gallery and full-gallery scores exactly."""

import numpy as np
import pytest

from services.evaluator.analytics import scaling
from services.evaluator.record import ScalingAnalysis
from services.evaluator.scoring import score_topk
from services.evaluator.search import TopK, exact_topk, l2_normalize

RK, MK = (1, 5), (10,)


def _data(seed, intra=False, n_products=12, n_distractors=150, dim=16):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_products, dim))
    labels = np.repeat(np.arange(n_products), 3)
    gallery = np.r_[centers[labels] + 0.9 * rng.standard_normal((len(labels), dim)),
                    rng.standard_normal((n_distractors, dim))]
    # round so some scores tie exactly
    gallery = l2_normalize(np.round(gallery, 1))
    codes = np.r_[labels, -np.ones(n_distractors, np.int64)]
    order = rng.permutation(len(codes))  # distractors interleaved in gallery order
    gallery, codes = gallery[order], codes[order]
    if intra:
        q_pos = np.flatnonzero(codes >= 0)
        return gallery[q_pos], gallery, codes[q_pos], codes, q_pos
    qlab = rng.integers(0, n_products + 3, 40)  # a few out-of-catalog products
    queries = l2_normalize(np.r_[centers, rng.standard_normal((3, dim))][qlab] + 0.9 * rng.standard_normal((40, dim)))
    return queries, gallery, np.where(qlab < n_products, qlab, 100 + qlab), codes, None


def _full(queries, gallery, codes, exclude):
    depth = max(max(RK), max(MK))
    is_d = codes < 0
    needed = scaling.needed_non_distractors(is_d, depth, len(queries), exclude)
    rank = lambda rows, k: exact_topk(queries[rows], gallery, k, exclude=None if exclude is None else exclude[rows],
                                      engine="numpy")
    return scaling.deep_ranking(rank, len(queries), needed, is_d, start_depth=depth)


def _score(topk, qc, gc, exclude):
    return score_topk(topk, qc, gc, recall_k=RK, map_k=MK, query_in_gallery=exclude).metrics


def test_distractor_sizes():
    assert scaling.distractor_sizes(0) == [0]
    sizes = scaling.distractor_sizes(1000, 4)
    assert sizes == [0, 1, 10, 100, 1000]


@pytest.mark.parametrize("intra", [False, True])
def test_subset_ranking_equals_search_over_the_subset(intra):
    queries, gallery, qc, gc, exclude = _data(1, intra)
    full = _full(queries, gallery, gc, exclude)
    rng = np.random.default_rng(5)
    distractors = np.flatnonzero(gc < 0)
    for size in (0, 7, 60, len(distractors)):
        keep = gc >= 0
        keep[rng.permutation(distractors)[:size]] = True
        sub = scaling.subset_topk(full, keep, 10)
        # independent: search only the kept gallery rows, map positions back
        kept = np.flatnonzero(keep)
        remap = None if exclude is None else np.searchsorted(kept, exclude)
        direct = exact_topk(queries, gallery[kept], 10, exclude=remap, engine="numpy")
        direct_idx = np.where(direct.indices >= 0, kept[np.maximum(direct.indices, 0)], -1)
        np.testing.assert_array_equal(sub.indices, direct_idx)
        assert _score(sub, qc, gc, exclude) == _score(TopK(direct_idx, direct.scores), qc, gc, exclude)


@pytest.mark.parametrize("intra", [False, True])
def test_end_points_equal_closed_and_full_scores(intra):
    queries, gallery, qc, gc, exclude = _data(2, intra)
    full = _full(queries, gallery, gc, exclude)
    result = scaling.scaling_analysis(full, qc, gc, recall_k=RK, map_k=MK, exclude=exclude, repetitions=3, seed=1)
    ScalingAnalysis.model_validate(result)
    points = result["points"]
    assert points[0]["distractors"] == 0 and points[-1]["distractors"] == int((gc < 0).sum())
    # full gallery: the plain evaluation
    plain = _score(exact_topk(queries, gallery, 10, exclude=exclude, engine="numpy"), qc, gc, exclude)
    assert points[-1]["metrics"] == plain
    # closed gallery: the plain evaluation with the distractors removed
    closed = np.flatnonzero(gc >= 0)
    remap = None if exclude is None else np.searchsorted(closed, exclude)
    closed_scores = _score(exact_topk(queries, gallery[closed], 10, exclude=remap, engine="numpy"), qc, gc[closed], remap)
    assert points[0]["metrics"] == closed_scores
    assert all(p["subsets"] == 3 for p in points[1:-1]) and points[0]["subsets"] == 1
    for p in points:
        for name, spread in p["spread"].items():
            assert spread["min"] <= p["metrics"][name] + 1e-9 <= spread["max"] + 2e-9


def test_fit_is_least_squares_on_log_distractors():
    fit = scaling.fit_log_model([(0, 90.0), (1, 80.0), (10, 70.0), (100, 60.0)], total=100)
    assert fit["slope"] == pytest.approx(-10.0) and fit["intercept"] == pytest.approx(80.0)
    assert fit["extrapolation"] == {"distractors": 1000, "value": pytest.approx(50.0)}
    assert fit["fitted_on"] == [1, 10, 100]
    assert scaling.fit_log_model([(0, 1.0), (5, 2.0)], total=5) is None


def test_closed_gallery_has_no_scaling():
    topk = TopK(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.float32))
    assert scaling.scaling_analysis(topk, np.array([0]), np.array([0]), recall_k=(1,), map_k=(1,)) is None


def test_deep_ranking_deepens_only_short_rows():
    # query 0 sees 5 distractors above every product image: depth 2 is not enough for it
    gallery = l2_normalize(np.array([[1, 0]] * 5 + [[0.6, 0.8], [0.5, 0.86]], dtype=np.float32))
    codes = np.array([-1] * 5 + [0, 1])
    queries = l2_normalize(np.array([[1, 0.01], [0, 1]], dtype=np.float32))
    calls = []

    def rank(rows, k):
        calls.append((list(rows), k))
        return exact_topk(queries[rows], gallery, k, engine="numpy")

    full = scaling.deep_ranking(rank, 2, np.array([2, 2]), codes < 0, start_depth=2)
    assert calls[0] == ([0, 1], 2) and all(rows == [0] for rows, _ in calls[1:])
    assert scaling.non_distractors_ranked(full.indices, codes < 0).tolist() == [2, 2]
