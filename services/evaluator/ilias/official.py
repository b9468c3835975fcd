"""`vsbench score-ilias --protocol ilias`: the official ILIAS evaluation on its HDF5 features.

Reproduces ilias-vrg/ilias knn_search/search.py followed by evaluation/evaluate.py: vectors
scored as stored, the gallery = the positives file then the distractor files in order (optionally
the first N files, ``--total_distractors``, and an id list, ``--selected_ids``), AP@k as the
official metric (ties form one threshold), ground truth from ``image_ids/positive_ids.txt``,
every query counted in the mean. Image and text queries are scored separately; scale, clutter and
category breakdowns and the oracle are computed as the official report computes them.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from services.evaluator.datasets.base import DatasetError
from services.evaluator.datasets.ilias_features import (
    find_ilias_feature_files,
    iter_ilias_distractor_features,
    load_labelled_features,
)
from services.evaluator.ilias.ground_truth import (
    TAXONOMY_FILE,
    IliasGroundTruth,
    read_ground_truth,
    read_taxonomy,
)
from services.evaluator.ilias.metric import (
    CLUTTER_GROUPS,
    SCALE_GROUPS,
    breakdown_ap,
    official_average_precision,
    official_oracle,
)
from services.evaluator.ilias.search import as_stored_topk
from services.evaluator.search import TopK

PROTOCOL_NAME = "ilias"
REFERENCE = "ilias-vrg/ilias knn_search/search.py + evaluation/evaluate.py (evaluation/src/dataset.py)"


def official_protocol_record(*, recall_k: Sequence[int], map_k: Sequence[int], gallery_type: str) -> dict:
    """How `--protocol ilias` computes its numbers, written into the result file."""
    return {
        "mode": PROTOCOL_NAME,
        "reference": REFERENCE,
        "setup": "inter",
        "gallery_type": gallery_type,
        "recall_k": list(recall_k),
        "recall_definition": "hit rate: 1 if a ground-truth positive is in the top K of the ranked list",
        "map_k": list(map_k),
        "map_definition": (
            "official ILIAS AP@k: scikit-learn average_precision_score over the top-k scores (tied "
            "scores form one threshold), times hits in the top k / min(k, |gt|); mean over queries"
        ),
        "tie_rule": (
            "tied scores share one threshold in AP; ranked lists and the top-k cut order by score "
            "descending, then gallery position ascending"
        ),
        "normalization": "none: vectors scored as stored (cast to float32), as the official search",
        "similarity": "dot product, accumulated in float64 and rounded to float32 (faiss's output type)",
        "search": "exact, streamed feature files (positives, then distractor files in order)",
        "ground_truth": "image_ids/positive_ids.txt; listed positives missing from the features count in |gt|",
        "self_match": "does not arise: queries are a separate set (inter)",
        "distractors": "never relevant to any query",
        "unanswerable": "none excluded: every query counts, AP 0 without a hit (the official mean)",
    }


@dataclass
class _Gallery:
    """What the ranked lists need of the gallery, without its vectors."""

    ids: list[str]
    object_codes: np.ndarray  # per row: the listed positive's object code, -1 otherwise
    scales: np.ndarray  # per row: the listed positive's scale, NaN otherwise
    clutters: np.ndarray


@dataclass
class QuerySetResult:
    """One query set (image or text): per-query values, means and breakdowns."""

    ids: list[str]
    objects: list[str]
    topk: TopK
    ap: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    oracle: dict[int, np.ndarray]
    breakdowns: dict[str, dict]


def _object_codes(truth: IliasGroundTruth) -> dict[str, int]:
    return {obj: code for code, obj in enumerate(truth.positives)}


def _score_query_set(
    ids: list[str],
    topk: TopK,
    gallery: _Gallery,
    truth: IliasGroundTruth,
    *,
    recall_k: Sequence[int],
    map_k: Sequence[int],
    taxonomy: dict[str, str] | None,
) -> QuerySetResult:
    codes = _object_codes(truth)
    objects = [truth.object_of(i) for i in ids]
    unknown = sorted({o for o in objects if o not in codes})
    if unknown:
        raise DatasetError(
            f"{len(unknown)} query object(s) have no positive in {truth.source} (e.g. {unknown[0]!r}); "
            "are the features and image_ids from the same ILIAS release?"
        )
    ap = {k: np.zeros(len(ids)) for k in map_k}
    oracle = {k: np.zeros(len(ids)) for k in map_k}
    recall = {k: np.zeros(len(ids)) for k in recall_k}
    scale: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in map_k}
    clutter: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in map_k}
    by_object: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in map_k}
    for q, obj in enumerate(objects):
        valid = topk.indices[q] >= 0
        ranked = topk.indices[q][valid]
        scores = topk.scores[q][valid]
        relevant = gallery.object_codes[ranked] == codes[obj]
        listed = truth.positives[obj]
        n_gt = len(listed)
        if int(relevant.sum()) > n_gt:
            raise DatasetError(f"query {ids[q]!r}: a listed positive appears more than once in the gallery")
        for k in recall_k:
            recall[k][q] = float(relevant[:k].any())
        for k in map_k:
            ap[k][q] = official_average_precision(scores, relevant, n_gt, k)
            oracle[k][q] = official_oracle(relevant, n_gt, k)
            by_object[k][obj].append(ap[k][q])
            for groups, values, listed_values, out in (
                (SCALE_GROUPS, gallery.scales, [p.scale for p in listed], scale[k]),
                (CLUTTER_GROUPS, gallery.clutters, [p.clutter for p in listed], clutter[k]),
            ):
                ranked_values = np.where(relevant, values[ranked], np.nan)
                for label, value in breakdown_ap(scores, relevant, ranked_values, listed_values, groups, k).items():
                    out[label].append(value)
    breakdowns = {
        f"map@{k}": {
            "oracle": _percent(oracle[k].mean()),
            "scale": {label: _percent(np.mean(v)) for label, v in scale[k].items()},
            "clutter": {label: _percent(np.mean(v)) for label, v in clutter[k].items()},
            **(_categories(by_object[k], taxonomy) if taxonomy is not None else {}),
        }
        for k in map_k
    }
    return QuerySetResult(ids, objects, topk, ap, recall, oracle, breakdowns)


def _categories(per_object: dict[str, list[float]], taxonomy: dict[str, str]) -> dict[str, dict[str, float]]:
    """Official: per (sub)category, the mean over its objects of each object's mean AP."""
    missing = sorted(o for o in per_object if o not in taxonomy)
    if missing:
        raise DatasetError(f"object {missing[0]!r} (and {len(missing) - 1} more) not in the taxonomy")
    categories: dict[str, list[float]] = defaultdict(list)
    subcategories: dict[str, list[float]] = defaultdict(list)
    for obj, values in per_object.items():
        categories[taxonomy[obj].split("-")[0]].append(float(np.mean(values)))
        subcategories[taxonomy[obj]].append(float(np.mean(values)))
    return {
        "categories": {c: _percent(np.mean(v)) for c, v in sorted(categories.items())},
        "subcategories": {c: _percent(np.mean(v)) for c, v in sorted(subcategories.items())},
    }


def _percent(value: float) -> float:
    return round(float(value) * 100.0, 6)


def _metrics(result: QuerySetResult, recall_k: Sequence[int], map_k: Sequence[int]) -> dict[str, float]:
    out = {f"recall@{k}": _percent(result.recall[k].mean()) for k in recall_k}
    out.update({f"map@{k}": _percent(result.ap[k].mean()) for k in map_k})
    return out


def _find_dataset_dir(features: Path, dataset_dir: Path | None) -> Path:
    if dataset_dir is not None:
        return dataset_dir
    for candidate in (features, features.parent):
        if (candidate / "image_ids" / "positive_ids.txt").is_file():
            return candidate
    raise DatasetError(
        f"{features}: the ilias protocol needs image_ids/positive_ids.txt; pass the ILIAS folder "
        "(--ilias-dir) or score with --protocol vsbench"
    )


def score_ilias_official(
    features: str | os.PathLike,
    *,
    dataset_dir: str | os.PathLike | None = None,
    recall_k: Sequence[int] = (1, 5),
    map_k: Sequence[int] = (20, 1000),
    text_queries: bool = False,
    total_distractors: int | None = None,
    max_distractors: int | None = None,
    selected_ids: str | os.PathLike | None = None,
    taxonomy: str | os.PathLike | None = None,
    prefix: str = "features",
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, Callable[[], Iterator]]:
    """Score official ILIAS features the official way. Returns (summary dict, outcomes factory).

    total_distractors: use the first N distractor files (official ``--total_distractors``; all
    present when None); selected_ids: keep only the listed distractors (e.g. mini-ILIAS);
    text_queries: also score ``<prefix>_text_queries.hdf5``; taxonomy: the official
    misc/taxonomy.json for category breakdowns (``<dataset_dir>/taxonomy.json`` when present).
    """
    started = time.perf_counter()
    features_dir = Path(features)
    root = _find_dataset_dir(features_dir, Path(dataset_dir) if dataset_dir is not None else None)
    truth = read_ground_truth(root)
    taxonomy_path = Path(taxonomy) if taxonomy is not None else root / TAXONOMY_FILE
    object_taxonomy = read_taxonomy(taxonomy_path) if (taxonomy is not None or taxonomy_path.is_file()) else None
    files = find_ilias_feature_files(features_dir, prefix=prefix)
    if text_queries and files.text_queries is None:
        raise DatasetError(f"{features_dir}: {prefix}_text_queries.hdf5 not found (drop --text-queries)")
    if total_distractors is not None and total_distractors < 0:
        raise DatasetError(f"total_distractors must be >= 0, got {total_distractors}")

    image_queries = load_labelled_features(files.queries)
    query_sets = [("image", image_queries)]
    if text_queries:
        query_sets.append(("text", load_labelled_features(files.text_queries)))
    positives = load_labelled_features(files.positives)
    dim = image_queries.vectors.shape[1]
    for _, block in query_sets[1:] + [(None, positives)]:
        if block.vectors.shape[1] != dim:
            raise DatasetError(f"{features_dir}: vectors of {block.vectors.shape[1]} and {dim} dimensions mixed")

    codes = _object_codes(truth)
    listed = {p.image_id: (codes[obj], p) for obj, ps in truth.positives.items() for p in ps}
    gallery_ids: list[str] = []
    code_parts: list[np.ndarray] = []
    scale_parts: list[np.ndarray] = []
    clutter_parts: list[np.ndarray] = []

    def remember(ids: Sequence[str]) -> None:
        gallery_ids.extend(ids)
        found = [listed.get(i) for i in ids]
        code_parts.append(np.array([f[0] if f else -1 for f in found], dtype=np.int64))
        scale_parts.append(np.array([f[1].scale if f else np.nan for f in found], dtype=np.float64))
        clutter_parts.append(np.array([f[1].clutter if f else np.nan for f in found], dtype=np.float64))

    def blocks() -> Iterator[np.ndarray]:
        remember([str(i) for i in positives.ids])
        yield positives.vectors
        if total_distractors == 0:
            return
        for block in iter_ilias_distractor_features(
            features_dir, max_distractors=max_distractors, selected_ids=selected_ids,
            distractor_files=total_distractors, prefix=prefix, dim=dim,
        ):
            remember([str(i) for i in block.ids])
            yield block.vectors

    depth = max(max(recall_k), max(map_k))
    all_queries = np.concatenate([b.vectors for _, b in query_sets], axis=0)
    search_started = time.perf_counter()
    topk = as_stored_topk(all_queries, blocks(), depth, progress=progress)
    search_s = time.perf_counter() - search_started
    gallery = _Gallery(
        gallery_ids, np.concatenate(code_parts), np.concatenate(scale_parts), np.concatenate(clutter_parts)
    )

    results: dict[str, QuerySetResult] = {}
    start = 0
    for name, block in query_sets:
        rows = slice(start, start + len(block.ids))
        start = rows.stop
        results[name] = _score_query_set(
            [str(i) for i in block.ids], TopK(topk.indices[rows], topk.scores[rows]), gallery, truth,
            recall_k=recall_k, map_k=map_k, taxonomy=object_taxonomy,
        )
    image = results["image"]
    n_distractors = int(len(gallery_ids) - len(positives.ids))
    listed_missing = len(listed) - int((gallery.object_codes >= 0).sum())
    summary: dict = {
        "dataset": {
            "name": "ilias",
            "source": {
                "format": "ilias-features",
                "path": str(features_dir),
                "ground_truth": truth.source,
                "total_distractors": "all" if total_distractors is None else str(total_distractors),
                "max_distractors": str(max_distractors),
                "selected_ids": str(selected_ids) if selected_ids else "",
                "stored_dtype": str(positives.vectors.dtype),
                "taxonomy": str(taxonomy_path) if object_taxonomy is not None else "",
            },
        },
        "model": {"dim": int(dim), "dtype": str(positives.vectors.dtype),
                  "preprocessing": "as in the official feature files (scored as stored)"},
        "metrics": _metrics(image, recall_k, map_k),
        "queries": {"total": len(image.ids), "scored": len(image.ids), "unanswerable": 0},
        "protocol": official_protocol_record(
            recall_k=recall_k, map_k=map_k, gallery_type="open" if n_distractors else "closed"
        ),
        "gallery": {
            "total": len(gallery_ids), "indexed": len(gallery_ids), "distractors": n_distractors,
            "listed_positives": len(listed), "listed_positives_missing": listed_missing,
        },
        "breakdowns": {name: r.breakdowns for name, r in results.items()},
        "timings": {"search_s": round(search_s, 4), "total_s": round(time.perf_counter() - started, 4)},
    }
    if "text" in results:
        text = results["text"]
        summary["text_queries"] = {
            "metrics": _metrics(text, recall_k, map_k),
            "queries": {"total": len(text.ids), "scored": len(text.ids), "unanswerable": 0},
        }

    def outcomes():
        return _iter_outcomes(results, gallery, truth, map_k)

    return summary, outcomes


def _iter_outcomes(results: dict[str, QuerySetResult], gallery: _Gallery, truth: IliasGroundTruth, map_k):
    from services.evaluator.results import QueryOutcome

    codes = _object_codes(truth)
    for result in results.values():
        for q, query_id in enumerate(result.ids):
            obj = result.objects[q]
            valid = result.topk.indices[q] >= 0
            ranked = result.topk.indices[q][valid]
            relevant = gallery.object_codes[ranked] == codes[obj]
            hits = np.flatnonzero(relevant)
            yield QueryOutcome(
                query_id=query_id,
                product_id=obj,
                n_relevant=len(truth.positives[obj]),
                answerable=True,
                first_relevant_rank=int(hits[0] + 1) if hits.size else 0,
                ap={str(k): float(result.ap[k][q]) for k in map_k},
                top_ids=[gallery.ids[i] for i in ranked],
                top_scores=[float(s) for s in result.topk.scores[q][valid]],
                top_relevant=[bool(r) for r in relevant],
            )
