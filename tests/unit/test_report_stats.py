"""Bootstrap intervals and paired tests of the report (services/evaluator/report/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.report import stats
from services.evaluator.report.data import margins


def coverage(draw, truth: float, n_datasets: int = 200, n_boot: int = 1000) -> float:
    rng = np.random.default_rng(12345)
    covered = 0
    for i in range(n_datasets):
        low, high = stats.bootstrap_ci(draw(rng), n_boot=n_boot, seed=i)
        covered += low <= truth <= high
    return covered / n_datasets


def test_bootstrap_covers_a_hit_rate_at_about_the_nominal_rate():
    # Recall@1-like 0/1 values: the multinomial-over-distinct-values path.
    rate = coverage(lambda rng: (rng.random(300) < 0.35).astype(float), truth=0.35)
    assert 0.90 <= rate <= 0.99, rate


def test_bootstrap_covers_an_ap_like_mean_at_about_the_nominal_rate():
    # AP-like values: 40% zeros, the rest Beta(2, 3) (mean 0.4) -> true mean 0.24; index resampling.
    def draw(rng):
        return np.where(rng.random(250) < 0.4, 0.0, rng.beta(2.0, 3.0, size=250))

    rate = coverage(draw, truth=0.6 * 0.4)
    assert 0.90 <= rate <= 0.99, rate


def test_bootstrap_is_seeded_and_handles_degenerate_samples():
    values = np.random.default_rng(0).random(50)
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)
    assert stats.bootstrap_ci(values, seed=3) != stats.bootstrap_ci(values, seed=4)
    assert stats.bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    binary = (np.arange(400) % 4 == 0).astype(float)  # p = 0.25
    spread = stats.bootstrap_means(binary, n_boot=4000, seed=1).std()
    assert spread == pytest.approx(math.sqrt(0.25 * 0.75 / 400), rel=0.1)
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        stats.bootstrap_ci([])


@pytest.mark.parametrize(
    ("a_only", "b_only", "expected"),
    [
        (5, 0, 2 / 2**5),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (6, 1, 2 * (1 + 7) / 2**7),  # 2 * P(X <= 1), n = 7
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # 2 * P(X <= 2), n = 12
        (3, 3, 1.0),  # capped at 1
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_known_values(a_only, b_only, expected):
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)
    assert stats.mcnemar_exact(b_only, a_only) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_stays_finite_for_large_counts():
    p = stats.mcnemar_exact(5300, 4700)  # z ~ 6 -> p ~ 2e-9
    assert 0 < p < 1e-8


def test_paired_test_on_hits_is_exact_mcnemar():
    a = [1] * 6 + [0] + [1] * 3 + [0] * 2
    b = [0] * 6 + [1] + [1] * 3 + [0] * 2
    result = stats.paired_test(a, b)
    assert result.method == "exact McNemar"
    assert (result.a_only, result.b_only, result.n) == (6, 1, 12)
    assert result.p_value == pytest.approx(0.125)
    assert result.diff == pytest.approx(5 / 12)


def test_paired_sign_flip_exact_hand_computed():
    # d = (0.3, 0.8, -0.6), sum 0.5. The 8 sign patterns give sums
    # 1.7, 0.5, 0.1, -1.1, 1.1, -0.1, -0.5, -1.7: six have |sum| >= 0.5.
    result = stats.paired_test([0.5, 0.9, 0.3], [0.2, 0.1, 0.9])
    assert result.method == "exact sign-flip"
    assert result.p_value == pytest.approx(6 / 8)
    # All four differences positive: only the all-plus and all-minus patterns reach |sum| = 2.5.
    # A tied pair (difference 0) changes nothing.
    result = stats.paired_test([0.75, 0.5, 0.85, 1.0, 0.4], [0.5, 0.0, 0.1, 0.0, 0.4])
    assert result.p_value == pytest.approx(2 / 16)
    assert (result.n, result.a_only, result.b_only) == (5, 4, 0)
    # Equal magnitudes: patterns (+,+), (+,-), (-,+), (-,-) sum to 1, 0, 0, -1 -> 2 of 4.
    assert stats.paired_test([0.75, 0.75], [0.25, 0.25]).p_value == pytest.approx(0.5)
    assert stats.paired_test([0.3, 0.6], [0.3, 0.6]).p_value == 1.0


def test_paired_sign_flip_monte_carlo_and_normal_paths():
    a = np.full(30, 0.6)
    b = np.full(30, 0.5)  # 30 equal positive differences: exact p = 2 / 2^30
    result = stats.paired_test(a, b, n_resamples=5000, seed=7)
    assert result.method == "Monte Carlo sign-flip (R=5000)"
    assert result.p_value == pytest.approx(1 / 5001)  # no resample is as extreme, +1 for the observed
    assert stats.paired_test(a, b, n_resamples=5000, seed=7) == result

    # 10,000 differences of +-0.25 with 5,100 positive: z = (200 * 0.25) / sqrt(10,000 * 0.0625) = 2.
    d = np.where(np.arange(10_000) < 5_100, 0.25, -0.25)
    result = stats.paired_test(0.5 + d, np.full(d.size, 0.5), n_resamples=10_000)
    assert result.method == "sign-flip, normal approximation"
    assert result.p_value == pytest.approx(math.erfc(2 / math.sqrt(2)), rel=1e-9)


def test_paired_sign_flip_monte_carlo_agrees_with_exact():
    rng = np.random.default_rng(5)
    a, b = rng.random(18), rng.random(18)
    exact = stats.paired_test(a, b).p_value
    saved = stats.EXACT_SIGN_FLIP_MAX
    stats.EXACT_SIGN_FLIP_MAX = 5
    try:
        approx = stats.paired_test(a, b, n_resamples=20_000, seed=1)
    finally:
        stats.EXACT_SIGN_FLIP_MAX = saved
    assert approx.method.startswith("Monte Carlo")
    assert approx.p_value == pytest.approx(exact, abs=0.01)


def test_paired_test_rejects_unpaired_input_and_adds_a_difference_interval():
    with pytest.raises(ValueError, match="paired"):
        stats.paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no paired queries"):
        stats.paired_test([], [])
    result = stats.paired_test([1, 1, 1, 0] * 25, [0, 1, 1, 0] * 25, n_boot=500)
    assert result.ci_low is not None and result.ci_low <= result.diff <= result.ci_high


def test_holm_adjust_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, previous)
    assert stats.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm_adjust([]) == []


def test_score_margins():
    margin, bound = margins(
        [[0.9, 0.8, 0.7], [0.9, 0.6, 0.5], [0.9, 0.8, 0.4], [0.9, 0.85], []],
        [[False, True, False], [True, False, False], [False, False, False], [True, True], []],
    )
    assert margin[:4] == pytest.approx([0.1, 0.3, 0.5, 0.05])
    assert bound[:4].tolist() == [False, False, True, True]
    assert math.isnan(margin[4])
