"""Uncertainty for the report: bootstrap intervals per cell and paired tests between two models.

Pure numpy and seedable, so a rebuilt site shows the same intervals. Inputs are per-query values
in [0, 1] (a Recall@K hit or an AP@K); callers scale to percent.

- `bootstrap_ci`: percentile bootstrap of the mean over queries. Resampling n values with
  replacement is the same as drawing multinomial counts over the *distinct* values, which is how it
  is done when there are few of them (a hit-rate has two): exact, and fast on 60k-query sets.
- `paired_test`: two models scored on the same queries. For 0/1 values it is the exact McNemar
  test (binomial on the discordant pairs), which is also the exact sign-flip test for 0/1 data.
  Otherwise a paired sign-flip permutation test on the mean difference: exact enumeration for few
  non-zero differences, Monte Carlo beyond, and the normal approximation of the same permutation
  distribution when Monte Carlo would be too costly. The result says which was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Above this many non-zero differences exact enumeration (2^m sign patterns) is replaced.
EXACT_SIGN_FLIP_MAX = 20
# Monte Carlo sign-flip costs m * n_resamples; beyond this budget use the normal approximation.
MONTE_CARLO_BUDGET = 50_000_000
# Chunk of bootstrap replicates drawn at once when resampling indices (bounds memory).
_INDEX_CHUNK_CELLS = 4_000_000


def _as_values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} hold NaN or infinite entries; drop unanswerable queries first")
    return array


def bootstrap_means(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`n_boot` bootstrap replicates of the mean of `values`."""
    x = _as_values(values)
    n = x.size
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    distinct, counts = np.unique(x, return_counts=True)
    if distinct.size == 1:
        return np.full(n_boot, distinct[0])
    if distinct.size <= max(2, n // 4):
        # Multinomial counts over distinct values: cost n_boot * n_distinct, exact same law.
        draws = rng.multinomial(n, counts / n, size=n_boot)
        return draws @ distinct / n
    out = np.empty(n_boot)
    step = max(1, _INDEX_CHUNK_CELLS // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (1 - alpha) for the mean of per-query values.

    With very few queries or a mean at 0 or 1 the percentile interval is too narrow (it can be a
    single point); the report shows n beside every interval so a reader can judge.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    means = bootstrap_means(values, n_boot=n_boot, seed=seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTestResult:
    """A vs B on the same n queries. diff = mean(a) - mean(b); p is two-sided."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    p_value: float
    method: str  # "exact McNemar", "exact sign-flip", "Monte Carlo sign-flip (R=...)", ...
    a_only: int  # queries where a > b
    b_only: int  # queries where b > a
    ci_low: float | None = None  # paired bootstrap interval of diff, when asked for
    ci_high: float | None = None


def _log_binomial_pmf_half(n: int) -> np.ndarray:
    """log P(X = k) for X ~ Binomial(n, 1/2), k = 0..n."""
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))
    k = np.arange(n + 1)
    return log_fact[n] - log_fact[k] - log_fact[n - k] - n * math.log(2.0)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2), capped at 1."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    m = a_only + b_only
    if m == 0:
        return 1.0
    log_pmf = _log_binomial_pmf_half(m)
    smaller = min(a_only, b_only)
    top = log_pmf[: smaller + 1]
    peak = top.max()
    tail = math.exp(peak) * float(np.exp(top - peak).sum())
    return min(1.0, 2.0 * tail)


def _sign_flip_exact(d: np.ndarray) -> float:
    m = d.size
    observed = abs(d.sum())
    # Every sign pattern as rows of a (2^m, m) matrix would be large at m=20; go in blocks.
    patterns = np.arange(2**m, dtype=np.int64)
    bits = np.arange(m, dtype=np.int64)
    tolerance = 1e-9 * max(1.0, float(np.abs(d).sum()))
    extreme = 0
    for start in range(0, patterns.size, 1 << 16):
        block = patterns[start : start + (1 << 16)]
        signs = 1.0 - 2.0 * ((block[:, None] >> bits) & 1)
        sums = np.abs(signs @ d)
        extreme += int((sums >= observed - tolerance).sum())
    return extreme / 2**m


def _sign_flip_monte_carlo(d: np.ndarray, n_resamples: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    observed = abs(d.sum())
    tolerance = 1e-9 * max(1.0, float(np.abs(d).sum()))
    extreme = 0
    step = max(1, _INDEX_CHUNK_CELLS // d.size)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        signs = rng.integers(0, 2, size=(rows, d.size), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d) >= observed - tolerance).sum())
    # The observed labelling counts as one of the resamples (never a p of exactly 0).
    return (extreme + 1) / (n_resamples + 1)


def _sign_flip_normal(d: np.ndarray) -> float:
    # Under H0 the signs are independent fair coins: E[sum] = 0, Var[sum] = sum d_i^2.
    z = abs(d.sum()) / math.sqrt(float((d * d).sum()))
    return min(1.0, math.erfc(z / math.sqrt(2.0)))


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    n_boot: int = 0,
    alpha: float = 0.05,
) -> PairedTestResult:
    """Two-sided test of mean(a) == mean(b) for per-query values of two models on the same queries.

    0/1 values (Recall@K hits): exact McNemar. Other values (AP): paired sign-flip permutation test
    of the mean difference (exact for <= EXACT_SIGN_FLIP_MAX non-zero differences). With n_boot > 0
    a paired percentile bootstrap interval of the difference is added.
    """
    x = _as_values(a, "a")
    y = _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("no paired queries to compare")
    d = x - y
    a_only = int((d > 0).sum())
    b_only = int((d < 0).sum())
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    nonzero = d[d != 0]
    if binary:
        p, method = mcnemar_exact(a_only, b_only), "exact McNemar"
    elif nonzero.size == 0:
        p, method = 1.0, "exact sign-flip"
    elif nonzero.size <= EXACT_SIGN_FLIP_MAX:
        p, method = _sign_flip_exact(nonzero), "exact sign-flip"
    elif nonzero.size * n_resamples <= MONTE_CARLO_BUDGET:
        p, method = (
            _sign_flip_monte_carlo(nonzero, n_resamples, seed),
            f"Monte Carlo sign-flip (R={n_resamples})",
        )
    else:
        p, method = _sign_flip_normal(nonzero), "sign-flip, normal approximation"
    ci_low = ci_high = None
    if n_boot > 0:
        ci_low, ci_high = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    return PairedTestResult(
        n=int(x.size),
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=float(d.mean()),
        p_value=float(p),
        method=method,
        a_only=a_only,
        b_only=b_only,
        ci_low=ci_low,
        ci_high=ci_high,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over many pairwise tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
