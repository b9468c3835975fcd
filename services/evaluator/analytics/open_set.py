"""Open-set rejection: telling out-of-catalog queries from in-catalog ones by the top-1 score.

A query is in-catalog when its product has at least one relevant gallery image (after the intra
self-match removal), out-of-catalog otherwise. s(q) is the query's top-1 score; a deployment
accepts the top-1 answer when s(q) > t and answers "not in the catalog" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.evaluator.analytics.options import DEFAULT_FOLDS, DEFAULT_TARGET_PRECISION  # noqa: F401 - the defaults live with the options

FAR_TARGETS: tuple[float, ...] = (0.01, 0.05, 0.10)
MAX_CURVE_POINTS = 200


def far_key(far: float) -> str:
    """0.01 -> "0.01", 0.1 -> "0.1" (the record's keys)."""
    return f"{far:g}"


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """P(s_pos > s_neg) + 1/2 P(s_pos == s_neg), in [0, 1]; None without both classes.

    Computed from mid-ranks (Mann-Whitney U), so ties count 1/2 exactly."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Mid-rank of each tie group: the mean of the 1-based positions it spans.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every threshold that changes the accepted set (accept s > t): -inf (accept all) and each
    distinct score (accept those above it), descending by strictness last."""
    s = np.asarray(scores, dtype=np.float64)
    return np.concatenate([[-np.inf], np.unique(s[np.isfinite(s)])])


@dataclass(frozen=True)
class Operating:
    """Counts at each candidate threshold (accept s > t)."""

    thresholds: np.ndarray
    accepted_in: np.ndarray  # in-catalog queries accepted
    accepted_correct: np.ndarray  # in-catalog accepted with a correct top-1
    accepted_out: np.ndarray  # out-of-catalog accepted (false accepts)
    n_in: int
    n_out: int


def operating_points(scores: np.ndarray, in_catalog: np.ndarray, correct: np.ndarray) -> Operating:
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(in_catalog, dtype=bool)
    ok = np.asarray(correct, dtype=bool) & inc
    thresholds = candidate_thresholds(s)

    def above(values: np.ndarray) -> np.ndarray:  # per threshold: how many values > t
        ordered = np.sort(values)
        return len(ordered) - np.searchsorted(ordered, thresholds, side="right")

    return Operating(
        thresholds=thresholds,
        accepted_in=above(s[inc]),
        accepted_correct=above(s[ok]),
        accepted_out=above(s[~inc]),
        n_in=int(inc.sum()),
        n_out=int((~inc).sum()),
    )


def dir_at_far(op: Operating, far: float) -> tuple[float | None, float | None]:
    """(best DIR in [0, 1], the threshold giving it) over thresholds with FAR <= far."""
    if op.n_in == 0 or op.n_out == 0:
        return None, None
    far_values = op.accepted_out / op.n_out
    allowed = far_values <= far + 1e-12
    if not allowed.any():  # cannot happen: the strictest threshold accepts nothing
        return None, None
    dir_values = np.where(allowed, op.accepted_correct / op.n_in, -1.0)
    best = int(np.argmax(dir_values))
    return float(dir_values[best]), float(op.thresholds[best])


def precision_coverage(op: Operating) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: precision of accepted answers (correct top-1 among all accepted; NaN when
    nothing is accepted) and coverage (accepted share of all queries)."""
    accepted = op.accepted_in + op.accepted_out
    total = op.n_in + op.n_out
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(accepted > 0, op.accepted_correct / np.maximum(accepted, 1), np.nan)
    coverage = accepted / total if total else np.zeros_like(accepted, dtype=np.float64)
    return precision, coverage


def choose_threshold(scores: np.ndarray, in_catalog: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The loosest threshold (most coverage) whose precision of accepted answers is >= target;
    None when no threshold that accepts anything reaches it."""
    op = operating_points(scores, in_catalog, correct)
    precision, coverage = precision_coverage(op)
    good = np.flatnonzero(np.nan_to_num(precision, nan=-1.0) >= target - 1e-12)
    if good.size == 0:
        return None
    best = good[np.argmax(coverage[good])]
    return float(op.thresholds[best])


@dataclass(frozen=True)
class CrossValidated:
    threshold: float | None  # chosen on all queries
    precision: float | None  # on all queries, at that threshold
    coverage: float | None
    cv_precision: float | None  # pooled over the held-out folds (each fold's threshold from the rest)
    cv_coverage: float | None
    folds: int


def recommend_threshold(
    scores: np.ndarray,
    in_catalog: np.ndarray,
    correct: np.ndarray,
    target: float = DEFAULT_TARGET_PRECISION,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> CrossValidated:
    """A threshold for `target` precision of accepted answers, with k-fold cross-validated
    precision and coverage: each fold is scored at the threshold chosen on the other folds, and
    the accepted / correct counts are pooled over folds (a fold with no threshold accepts none)."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(in_catalog, dtype=bool)
    ok = np.asarray(correct, dtype=bool) & inc
    n = len(s)
    threshold = choose_threshold(s, inc, ok, target)
    precision = coverage = None
    if threshold is not None and n:
        accepted = s > threshold
        coverage = float(accepted.mean())
        precision = float(ok[accepted].mean()) if accepted.any() else None
    folds = max(2, min(int(folds), n)) if n >= 2 else 0
    cv_precision = cv_coverage = None
    if folds:
        fold_of = np.random.default_rng(seed).permutation(n) % folds
        accepted_total = correct_total = 0
        for fold in range(folds):
            test = fold_of == fold
            t = choose_threshold(s[~test], inc[~test], ok[~test], target)
            if t is None:
                continue
            accepted = test & (s > t)
            accepted_total += int(accepted.sum())
            correct_total += int((accepted & ok).sum())
        cv_coverage = accepted_total / n
        cv_precision = correct_total / accepted_total if accepted_total else None
    return CrossValidated(threshold, precision, coverage, cv_precision, cv_coverage, folds)


def thin(count: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most `limit` points spread over `count`, always keeping both ends."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def _pct(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value) * 100.0, 4)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def open_set_analysis(
    top1_scores: np.ndarray,
    in_catalog: np.ndarray,
    correct_top1: np.ndarray,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> dict | None:
    """Every open-set figure as a plain dict (the record's OpenSetAnalysis), percentages in %.

    top1_scores: per query, the top-1 score (-inf when nothing was ranked);
    in_catalog: the query's product has a relevant gallery image; correct_top1: the top-1 is one.
    None when there is no out-of-catalog or no in-catalog query."""
    s = np.asarray(top1_scores, dtype=np.float64)
    inc = np.asarray(in_catalog, dtype=bool)
    ok = np.asarray(correct_top1, dtype=bool) & inc
    if not inc.any() or inc.all():
        return None
    op = operating_points(s, inc, ok)
    dirs = {far_key(f): dir_at_far(op, f) for f in FAR_TARGETS}
    precision, coverage = precision_coverage(op)
    far_curve = op.accepted_out / op.n_out
    tpr_curve = op.accepted_in / op.n_in
    dir_curve = op.accepted_correct / op.n_in
    keep = thin(len(op.thresholds))
    rec = recommend_threshold(s, inc, ok, target_precision, folds, seed)
    return {
        "score": "top-1 similarity (dot product of L2-normalised vectors, after the intra self-match removal)",
        "in_catalog": op.n_in,
        "out_of_catalog": op.n_out,
        "auroc": _pct(auroc(s, inc)),
        "dir_at_far": {k: _pct(v) for k, (v, _) in dirs.items()},
        "dir_thresholds": {k: (None if t is None else _finite(t)) for k, (_, t) in dirs.items()},
        "closed_set_top1": _pct(ok[inc].mean()),
        "recommendation": {
            "target_precision": _pct(target_precision),
            "threshold": None if rec.threshold is None else _finite(rec.threshold),
            "accept_all": rec.threshold is not None and not np.isfinite(rec.threshold),
            "precision": _pct(rec.precision),
            "coverage": _pct(rec.coverage),
            "cv_precision": _pct(rec.cv_precision),
            "cv_coverage": _pct(rec.cv_coverage),
            "folds": rec.folds,
            "seed": seed,
        },
        "roc": [
            {"threshold": _finite(op.thresholds[i]), "far": _pct(far_curve[i]), "tpr": _pct(tpr_curve[i]),
             "dir": _pct(dir_curve[i])}
            for i in keep
        ],
        "accuracy_rejection": [
            {"threshold": _finite(op.thresholds[i]), "coverage": _pct(coverage[i]), "precision": _pct(precision[i])}
            for i in keep
            if np.isfinite(precision[i])
        ],
    }
