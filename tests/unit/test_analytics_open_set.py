"""Open-set figures: hand-computed cases, and an independent brute-force computation on
generated open-set data (the issue's "Done when")."""

import itertools

import numpy as np
import pytest

from services.evaluator.analytics import open_set
from services.evaluator.record import OpenSetAnalysis


def test_auroc_hand_computed_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    assert open_set.auroc(scores, positive) == pytest.approx(3.5 / 4)
    assert open_set.auroc(scores, np.ones(4, bool)) is None
    # all tied: exactly 1/2
    assert open_set.auroc(np.zeros(6), np.array([1, 0, 1, 0, 1, 0], bool)) == pytest.approx(0.5)


def test_dir_at_far_hand_computed():
    # in-catalog: (0.9 correct), (0.8 wrong), (0.6 correct); out-of-catalog: 0.7, 0.3
    scores = np.array([0.9, 0.8, 0.6, 0.7, 0.3])
    in_cat = np.array([1, 1, 1, 0, 0], bool)
    correct = np.array([1, 0, 1, 0, 0], bool)
    op = open_set.operating_points(scores, in_cat, correct)
    # FAR <= 0: t must be >= 0.7 -> accept 0.9, 0.8 -> DIR = 1/3 at t = 0.7
    assert open_set.dir_at_far(op, 0.0) == (pytest.approx(1 / 3), 0.7)
    # FAR <= 0.5: t >= 0.3 -> accept 0.9, 0.8, 0.6, 0.7 -> DIR = 2/3 at t = 0.3
    assert open_set.dir_at_far(op, 0.5) == (pytest.approx(2 / 3), 0.3)
    assert open_set.dir_at_far(op, 1.0) == (pytest.approx(2 / 3), -np.inf)


def test_threshold_for_target_precision_hand_computed():
    scores = np.array([0.9, 0.8, 0.6, 0.7, 0.3])
    in_cat = np.array([1, 1, 1, 0, 0], bool)
    correct = np.array([1, 0, 1, 0, 0], bool)
    # t = 0.8 accepts {0.9}: precision 1.0 (the loosest with precision 1)
    assert open_set.choose_threshold(scores, in_cat, correct, 1.0) == 0.8
    # precision >= 0.6: t = 0.8 only ({0.9}: 1); t = 0.7 -> {0.9, 0.8}: 1/2; t = 0.6 -> 1/3
    assert open_set.choose_threshold(scores, in_cat, correct, 0.6) == 0.8
    # precision >= 0.5: t = 0.3 accepts {0.9, 0.8, 0.7, 0.6}: 2/4, the most coverage reaching it
    assert open_set.choose_threshold(scores, in_cat, correct, 0.5) == 0.3
    assert open_set.choose_threshold(np.array([0.5]), np.array([False]), np.array([False]), 0.9) is None


def _brute_force(scores, in_cat, correct):
    """The definitions written out directly, one threshold at a time."""
    n_in, n_out = in_cat.sum(), (~in_cat).sum()
    pairs = [(a, b) for a, b in itertools.product(scores[in_cat], scores[~in_cat])]
    auroc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    thresholds = [-np.inf] + sorted(set(scores.tolist()))
    dirs = {}
    for far in (0.01, 0.05, 0.1):
        best = 0.0
        for t in thresholds:
            fa = sum(1 for s, i in zip(scores, in_cat) if not i and s > t) / n_out
            if fa <= far:
                best = max(best, sum(1 for s, i, c in zip(scores, in_cat, correct) if i and c and s > t) / n_in)
        dirs[f"{far:g}"] = best
    return auroc, dirs


@pytest.mark.parametrize("seed", range(6))
def test_open_set_equals_independent_computation(seed):
    rng = np.random.default_rng(seed)
    n_in, n_out = rng.integers(20, 120), rng.integers(5, 60)
    # scores rounded to 2 decimals: many exact ties
    scores = np.round(np.concatenate([rng.normal(0.7, 0.15, n_in), rng.normal(0.5, 0.15, n_out)]), 2)
    in_cat = np.r_[np.ones(n_in, bool), np.zeros(n_out, bool)]
    correct = in_cat & (rng.random(n_in + n_out) < 0.8)
    got = open_set.open_set_analysis(scores, in_cat, correct, target_precision=0.9)
    OpenSetAnalysis.model_validate(got)
    auroc, dirs = _brute_force(scores, in_cat, correct)
    assert got["auroc"] == pytest.approx(100 * auroc, abs=1e-4)
    for key, value in dirs.items():
        assert got["dir_at_far"][key] == pytest.approx(100 * value, abs=1e-4)
    assert got["in_catalog"] == n_in and got["out_of_catalog"] == n_out
    assert got["closed_set_top1"] == pytest.approx(100 * correct[in_cat].mean(), abs=1e-4)
    # the recommended threshold reaches the target on all queries and nothing looser does
    rec = got["recommendation"]
    if rec["threshold"] is not None:
        accepted = scores > rec["threshold"]
        assert rec["precision"] == pytest.approx(100 * correct[accepted].mean(), abs=1e-4)
        assert rec["precision"] >= 90 - 1e-9
        looser = [t for t in set(scores.tolist()) if t < rec["threshold"]]
        for t in looser:
            assert correct[scores > t].mean() < 0.9
    assert 0 <= rec["cv_coverage"] <= 100
    # curves: ends at accept-all (FAR 100, TPR 100) and accept-none (0, 0)
    assert got["roc"][0]["far"] == 100 and got["roc"][0]["tpr"] == 100
    assert got["roc"][-1]["far"] == 0 and got["roc"][-1]["tpr"] == 0


def test_cross_validation_pools_held_out_folds():
    # separable data: on all queries t = 0.2 (the top negative) gives precision 1; held out, a
    # fold whose training part lacks 0.2 picks a lower threshold and accepts that negative.
    scores = np.r_[np.linspace(0.8, 0.9, 20), np.linspace(0.1, 0.2, 10)]
    in_cat = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    rec = open_set.recommend_threshold(scores, in_cat, in_cat, target=1.0, folds=5, seed=3)
    assert rec.threshold == pytest.approx(0.2) and rec.precision == 1.0 and rec.coverage == pytest.approx(20 / 30)
    # independently: the same folds, each threshold = the largest training negative
    fold_of = np.random.default_rng(3).permutation(30) % 5
    accepted = correct = 0
    for fold in range(5):
        test = fold_of == fold
        t = scores[~test & ~in_cat].max()
        accepted += int((test & (scores > t)).sum())
        correct += int((test & (scores > t) & in_cat).sum())
    assert rec.cv_coverage == pytest.approx(accepted / 30)
    assert rec.cv_precision == pytest.approx(correct / accepted)
    assert rec.cv_precision < 1.0  # the held-out top negative was accepted in its fold


def test_no_out_of_catalog_queries_gives_none():
    assert open_set.open_set_analysis(np.ones(3), np.ones(3, bool), np.ones(3, bool)) is None
