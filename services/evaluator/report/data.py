"""Per-query data of a run as arrays, and the numbers the site derives from it.

A result's per-query file (results.QueryOutcome per line) is read once into `RunQueries`: the
ranks, APs and scores as numpy arrays, plus each query's top-5 for the galleries. Everything the
site shows beyond the summary metrics (intervals, paired tests, Recall@K curves, failures) comes
from here, so it is computed one way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from services.common.errors import VsbenchError
from services.evaluator.report import stats
from services.evaluator.results import RunResult
from services.evaluator.tables import metric_k

TOP_SHOWN = 5


def unanswerable_scored_as_miss(run: RunResult) -> bool:
    """The run's protocol says whether unanswerable queries entered the means as misses."""
    text = str(run.data.get("protocol", {}).get("unanswerable", "")).lower()
    return "miss" in text and "exclud" not in text


@dataclass
class RunQueries:
    """Per-query arrays of one run, in file order."""

    query_ids: list[str]
    product_ids: list[str]
    answerable: np.ndarray
    scored: np.ndarray  # queries that enter the means
    first_rank: np.ndarray  # 1-based, 0 = not in the top list
    n_relevant: np.ndarray
    ap: dict[int, np.ndarray]  # K -> AP@K, NaN for unanswerable
    depth: int  # longest top list: ranks beyond it are unknown
    top_ids: list[list[str]]
    top_scores: list[list[float]]
    top_relevant: list[list[bool]]
    top1_score: np.ndarray  # NaN when the list is empty
    margin: np.ndarray  # see `margins`
    margin_is_bound: np.ndarray  # margin is a lower bound (no relevant item in the list)
    unanswerable_as_miss: bool = False
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {q: i for i, q in enumerate(self.query_ids)}

    def __len__(self) -> int:
        return len(self.query_ids)

    def hits_at(self, k: int) -> np.ndarray:
        return (self.first_rank >= 1) & (self.first_rank <= k)

    def per_query(self, metric: str) -> np.ndarray | None:
        """Values in [0, 1] for every query (NaN where not scored), or None when the per-query file
        cannot give this metric (K beyond the stored list, or an AP@K that was not stored)."""
        kind, _, _ = metric.partition("@")
        k = metric_k(metric)
        if k is None:
            return None
        if kind == "recall":
            if k > self.depth:
                return None
            values = self.hits_at(k).astype(np.float64)
        elif kind == "map":
            if k not in self.ap:
                return None
            values = np.nan_to_num(self.ap[k], nan=0.0) if self.unanswerable_as_miss else self.ap[k].copy()
        else:
            return None
        return np.where(self.scored, values, np.nan)

    def scored_values(self, metric: str) -> np.ndarray | None:
        values = self.per_query(metric)
        if values is None:
            return None
        values = values[self.scored]
        return values if np.isfinite(values).all() else None

    def recall_curve(self, max_k: int = 20) -> list[tuple[int, float]]:
        """(K, Recall@K in %) for K = 1..min(max_k, depth) over the scored queries."""
        n = int(self.scored.sum())
        if n == 0:
            return []
        return [
            (k, float(self.hits_at(k)[self.scored].mean() * 100))
            for k in range(1, min(max_k, self.depth) + 1)
        ]


def margins(top_scores: list[list[float]], top_relevant: list[list[bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Score margin per query. For a miss at rank 1: top-1 score minus the first relevant item's
    score (how far the right answer trails); with no relevant item in the list: top-1 minus the last
    listed score, a lower bound. For a hit: top-1 minus the best irrelevant score (how safely it won;
    a lower bound when none is listed)."""
    margin = np.full(len(top_scores), np.nan)
    bound = np.zeros(len(top_scores), dtype=bool)
    for i, (scores, relevant) in enumerate(zip(top_scores, top_relevant)):
        if not scores:
            continue
        if relevant[0]:
            others = [s for s, r in zip(scores, relevant) if not r]
            margin[i] = scores[0] - (others[0] if others else scores[-1])
            bound[i] = not others
        elif any(relevant):
            margin[i] = scores[0] - scores[relevant.index(True)]
        else:
            margin[i] = scores[0] - scores[-1]
            bound[i] = True
    return margin, bound


class PerQueryError(VsbenchError, ValueError):
    """A per-query file that cannot be read; the site shows the run without per-query views."""


def load_run_queries(run: RunResult) -> RunQueries | None:
    """The run's per-query arrays, None when it has no per-query file; PerQueryError when unreadable."""
    path = run.per_query_path()
    if path is None:
        return None
    query_ids, product_ids, answerable, first_rank, n_relevant = [], [], [], [], []
    ap_rows: list[dict[str, float]] = []
    top_ids, top_scores, top_relevant, top1 = [], [], [], []
    depth = 0
    all_scores: list[list[float]] = []
    all_relevant: list[list[bool]] = []
    try:
        for outcome in run.queries():
            query_ids.append(outcome.query_id)
            product_ids.append(outcome.product_id)
            answerable.append(outcome.answerable)
            first_rank.append(outcome.first_relevant_rank)
            n_relevant.append(outcome.n_relevant)
            ap_rows.append(outcome.ap)
            depth = max(depth, len(outcome.top_ids))
            top_ids.append(outcome.top_ids[:TOP_SHOWN])
            top_scores.append(outcome.top_scores[:TOP_SHOWN])
            top_relevant.append(outcome.top_relevant[:TOP_SHOWN])
            top1.append(outcome.top_scores[0] if outcome.top_scores else math.nan)
            all_scores.append(outcome.top_scores)
            all_relevant.append(outcome.top_relevant)
    except FileNotFoundError as exc:
        raise PerQueryError(f"{path}: per-query file is missing") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PerQueryError(f"{path}: unreadable per-query line ({exc})") from exc
    margin, bound = margins(all_scores, all_relevant)
    del all_scores, all_relevant
    ks = sorted({int(k) for row in ap_rows for k in row if str(k).isdigit()})
    ap = {k: np.array([row.get(str(k), math.nan) for row in ap_rows], dtype=np.float64) for k in ks}
    answerable_arr = np.array(answerable, dtype=bool)
    as_miss = unanswerable_scored_as_miss(run)
    return RunQueries(
        query_ids=query_ids,
        product_ids=product_ids,
        answerable=answerable_arr,
        scored=np.ones_like(answerable_arr) if as_miss else answerable_arr.copy(),
        first_rank=np.array(first_rank, dtype=np.int64),
        n_relevant=np.array(n_relevant, dtype=np.int64),
        ap=ap,
        depth=depth,
        top_ids=top_ids,
        top_scores=top_scores,
        top_relevant=top_relevant,
        top1_score=np.array(top1, dtype=np.float64),
        margin=margin,
        margin_is_bound=bound,
        unanswerable_as_miss=as_miss,
    )


@dataclass(frozen=True)
class CellStats:
    """One leaderboard number and its interval, in %."""

    value: float | None  # from the run summary
    mean: float | None  # recomputed from the per-query file
    low: float | None
    high: float | None
    n: int

    @property
    def agrees(self) -> bool:
        if self.value is None or self.mean is None:
            return True
        return abs(self.value - self.mean) < 0.05


def cell_stats(
    summary_value: float | None,
    queries: RunQueries | None,
    metric: str,
    *,
    n_boot: int,
    alpha: float,
    seed: int,
) -> CellStats:
    values = queries.scored_values(metric) if queries is not None else None
    if values is None or values.size == 0:
        return CellStats(summary_value, None, None, None, 0)
    low, high = stats.bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
    return CellStats(summary_value, float(values.mean() * 100), low * 100, high * 100, int(values.size))


@dataclass(frozen=True)
class PairComparison:
    a: str
    b: str
    metric: str
    result: stats.PairedTestResult
    p_holm: float

    def significant(self, alpha: float) -> bool:
        return self.p_holm < alpha


def align(qa: RunQueries, qb: RunQueries) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in qa, in qb) of the query ids both runs hold, in qa's order."""
    if qa.query_ids == qb.query_ids:  # the usual case: same dataset, same query order
        every = np.arange(len(qa), dtype=np.int64)
        return every, every
    pairs = [(i, qb.index[q]) for i, q in enumerate(qa.query_ids) if q in qb.index]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ia, ib = zip(*pairs)
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def paired_values(qa: RunQueries, qb: RunQueries, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Both models' values on the queries both scored (matched by query id)."""
    va, vb = qa.per_query(metric), qb.per_query(metric)
    if va is None or vb is None:
        return None
    ia, ib = align(qa, qb)
    x, y = va[ia], vb[ib]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def right_wrong(qa: RunQueries, qb: RunQueries) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions in qa of queries a gets right at rank 1 and b wrong, the same in qb for b right and
    a wrong, number of queries both scored), among the answerable queries both scored."""
    ia, ib = align(qa, qb)
    both = qa.scored[ia] & qa.answerable[ia] & qb.scored[ib] & qb.answerable[ib]
    a_hit, b_hit = qa.first_rank[ia] == 1, qb.first_rank[ib] == 1
    return ia[both & a_hit & ~b_hit], ib[both & b_hit & ~a_hit], int(both.sum())


def pairwise(
    per_model: dict[str, RunQueries], metric: str, *, n_resamples: int, seed: int
) -> dict[tuple[str, str], PairComparison]:
    """Every pair of models on one dataset and metric, Holm-adjusted over the pairs. Keyed both
    ways; for (b, a) the result is mirrored (diff negated)."""
    raw: list[tuple[str, str, stats.PairedTestResult]] = []
    for a, b in combinations(sorted(per_model), 2):
        pair = paired_values(per_model[a], per_model[b], metric)
        if pair is None or pair[0].size == 0:
            continue
        raw.append((a, b, stats.paired_test(pair[0], pair[1], n_resamples=n_resamples, seed=seed)))
    adjusted = stats.holm_adjust([r.p_value for _, _, r in raw])
    out: dict[tuple[str, str], PairComparison] = {}
    for (a, b, result), p_holm in zip(raw, adjusted):
        out[(a, b)] = PairComparison(a, b, metric, result, p_holm)
        mirrored = stats.PairedTestResult(
            n=result.n,
            mean_a=result.mean_b,
            mean_b=result.mean_a,
            diff=-result.diff,
            p_value=result.p_value,
            method=result.method,
            a_only=result.b_only,
            b_only=result.a_only,
        )
        out[(b, a)] = PairComparison(b, a, metric, mirrored, p_holm)
    return out


def missed_at_1(queries: RunQueries) -> np.ndarray:
    """Indices of scored, answerable queries whose top-1 is wrong, most confident mistakes first."""
    mask = queries.scored & queries.answerable & (queries.first_rank != 1)
    idx = np.flatnonzero(mask)
    margin = np.nan_to_num(queries.margin[idx], nan=-np.inf)
    return idx[np.lexsort((idx, -margin))]


def hub_images(queries: RunQueries, limit: int = 8) -> list[tuple[str, int]]:
    """Gallery images that are the wrong top-1 of at least two missed queries, most often first."""
    counts: dict[str, int] = {}
    for i in missed_at_1(queries):
        if queries.top_ids[i]:
            counts[queries.top_ids[i][0]] = counts.get(queries.top_ids[i][0], 0) + 1
    ranked = sorted(((c, g) for g, c in counts.items() if c >= 2), key=lambda t: (-t[0], t[1]))
    return [(g, c) for c, g in ranked[:limit]]


def oracle_summary(per_model: dict[str, RunQueries]) -> tuple[int, list[str], float | None]:
    """(queries every model scored, ids missed at rank 1 by every model, oracle R@1 in %): the
    queries no model solves are the dataset's hard core; the oracle bounds what combining could do."""
    runs = list(per_model.values())
    if not runs:
        return 0, [], None
    first = runs[0]
    common = first.scored & first.answerable
    missed_by_all = first.first_rank != 1
    for other in runs[1:]:
        ia, ib = align(first, other)
        scored = np.zeros(len(first), dtype=bool)
        scored[ia] = other.scored[ib] & other.answerable[ib]
        missed = np.zeros(len(first), dtype=bool)
        missed[ia] = other.first_rank[ib] != 1
        common &= scored
        missed_by_all &= missed
    n_common = int(common.sum())
    if n_common == 0:
        return 0, [], None
    hard = [first.query_ids[i] for i in np.flatnonzero(common & missed_by_all)]
    return n_common, hard, 100.0 * (n_common - len(hard)) / n_common


def cost_per_1k(run: RunResult) -> float | None:
    """Estimated USD per 1,000 images from the run's usage record, when there is one."""
    usage = run.data.get("usage") or {}
    if not isinstance(usage, dict):
        return None
    cost, images = usage.get("cost_usd"), usage.get("billed_images")
    if not isinstance(cost, (int, float)) or not isinstance(images, (int, float)) or images <= 0:
        return None
    return float(cost) / float(images) * 1000.0


def images_per_second(run: RunResult) -> float | None:
    timings = run.data.get("timings") or {}
    if not isinstance(timings, dict):
        return None
    rate = timings.get("images_per_s")
    if isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate):
        return float(rate)
    images, seconds = timings.get("images_embedded"), timings.get("embed_s")
    if isinstance(images, (int, float)) and isinstance(seconds, (int, float)) and seconds > 0 and images > 0:
        return float(images) / float(seconds)
    return None
