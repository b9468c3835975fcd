"""The one entry point the evaluation loop calls: which analyses to compute, and into the record."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from services.evaluator.analytics import compression as compression_mod
from services.evaluator.analytics import open_set as open_set_mod
from services.evaluator.analytics import scaling as scaling_mod
from services.evaluator.analytics.options import AnalysisOptions
from services.evaluator.record import Analyses, CompressionAnalysis, OpenSetAnalysis, ScalingAnalysis
from services.evaluator.scoring import Scores
from services.evaluator.search import TopK, exact_topk

# A deep ranking of all queries x (K + every distractor) is taken in one pass up to this many
# entries; beyond it, lists start at 4K and deepen only where needed (scaling.deep_ranking).
ONE_PASS_ENTRIES = 50_000_000
COMPRESSION_METHOD = (
    "from the stored L2-normalised float32 vectors: truncation to the first d dims re-normalised "
    "(float32); float16 gallery; int8 per-dimension scalar quantisation calibrated on the gallery "
    "(min..max -> 256 levels); binary sign codes of gallery and query (dot product of +-1 codes); "
    "each quantization without and with full-precision rescoring of its top {depth}; exact search, "
    "the run's metrics and tie rule"
)


def run_analyses(
    options: AnalysisOptions,
    *,
    topk: TopK,
    scores: Scores,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    exclude: np.ndarray | None,
    query_vectors: np.ndarray,
    gallery_vectors: Callable[[], np.ndarray],
    recall_k: Sequence[int],
    map_k: Sequence[int],
    unanswerable_as_miss: bool,
    engine: str = "auto",
) -> Analyses | None:
    """The record's `analyses` block, or None when nothing was asked or applicable.

    gallery_vectors() returns the stored gallery vectors (L2-normalised float32, gallery order);
    it is called only when scaling or compression needs them (they are held in memory)."""
    result = Analyses()
    if options.open_set is not False:
        top1 = topk.scores[:, 0].astype(np.float64) if topk.scores.shape[1] else np.full(len(query_codes), -np.inf)
        computed = open_set_mod.open_set_analysis(
            top1, scores.answerable, scores.first_relevant_rank == 1,
            target_precision=options.target_precision, folds=options.folds, seed=options.seed,
        )
        if computed is not None:
            result.open_set = OpenSetAnalysis.model_validate(computed)
        elif options.open_set:
            result.skipped["open_set"] = (
                "no out-of-catalog query (every query's product is in the gallery)"
                if scores.answerable.all() else "no in-catalog query"
            )
    gallery = None
    if options.scaling or options.compression:
        gallery = np.asarray(gallery_vectors(), dtype=np.float32)
    depth = max(max(recall_k), max(map_k))
    if options.scaling:
        is_distractor = np.asarray(gallery_codes) < 0
        n_distractors = int(is_distractor.sum())
        if n_distractors == 0:
            result.skipped["scaling"] = "the gallery holds no distractors (a closed gallery)"
        else:
            def rank(rows: np.ndarray, k: int) -> TopK:
                ex = None if exclude is None else exclude[rows]
                return exact_topk(query_vectors[rows], gallery, k, exclude=ex, engine=engine)

            n_q = len(query_codes)
            start = depth + n_distractors + (1 if exclude is not None else 0)
            if start * n_q > ONE_PASS_ENTRIES:
                start = 4 * depth
            try:
                needed = scaling_mod.needed_non_distractors(is_distractor, depth, n_q, exclude)
                full = scaling_mod.deep_ranking(rank, n_q, needed, is_distractor, start)
                computed = scaling_mod.scaling_analysis(
                    full, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k, exclude=exclude,
                    unanswerable_as_miss=unanswerable_as_miss, repetitions=options.repetitions, seed=options.seed,
                )
                result.scaling = ScalingAnalysis.model_validate(computed)
            except scaling_mod.ScalingError as exc:
                result.skipped["scaling"] = str(exc)
    if options.compression:
        rows = compression_mod.compression_sweep(
            query_vectors, gallery, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
            exclude=exclude, unanswerable_as_miss=unanswerable_as_miss, engine=engine,
        )
        if options.qdrant_quantization:
            from services.evaluator.analytics import qdrant_quantized

            rows += qdrant_quantized.qdrant_rows(
                query_vectors, gallery, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
                exclude=exclude, unanswerable_as_miss=unanswerable_as_miss,
            )
        result.compression = CompressionAnalysis(
            method=COMPRESSION_METHOD.format(depth=compression_mod.RESCORE_DEPTH), rows=rows
        )
    if result.open_set is None and result.scaling is None and result.compression is None and not result.skipped:
        return None
    return result
