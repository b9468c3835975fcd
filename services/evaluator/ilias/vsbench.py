"""`vsbench score-ilias --protocol vsbench`: ILIAS features under vsbench's own protocol.

Moved here from precomputed.py: vectors L2-normalised in float32, ranked by score then gallery
position, AP@K over that ranking (docs/protocol.md). The ground truth is the object of each id
in the features files. The distractors stream from their files in blocks, so a 5M-image gallery
never sits in memory as one array; only ids and integer labels are kept for the ranked lists.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from services.evaluator.datasets.ilias_features import iter_ilias_distractor_features, load_ilias_features
from services.evaluator.scoring import LabelIndex, iter_outcomes, protocol_record, score_topk
from services.evaluator.search import exact_topk, resolve_engine


def score_ilias_vsbench(
    directory: Path,
    *,
    recall_k: Sequence[int] = (1, 5),
    map_k: Sequence[int] = (20, 1000),
    max_distractors: int | None = None,
    selected_ids: Path | None = None,
    distractor_files: int | None = None,
    engine: str = "auto",
):
    """Score ILIAS's official HDF5 features (image queries vs positives + distractors)."""
    started = time.perf_counter()
    core = load_ilias_features(directory, include_distractors=False, dtype=np.float32)
    query_ids = [str(x) for x in core.query_ids]
    query_labels = [str(x) for x in core.query_labels]
    labels = LabelIndex()
    gallery_ids: list[str] = [str(x) for x in core.gallery_ids]
    code_blocks = [labels.encode([str(x) for x in core.gallery_labels])]
    query_codes = labels.encode(query_labels)

    def blocks():
        yield core.gallery_vectors
        for block in iter_ilias_distractor_features(
            directory, max_distractors=max_distractors, selected_ids=selected_ids,
            distractor_files=distractor_files, dtype=np.float32, dim=core.query_vectors.shape[1],
        ):
            gallery_ids.extend(str(x) for x in block.ids)
            code_blocks.append(np.full(len(block.ids), -1, dtype=np.int64))
            yield block.vectors

    depth = max(max(recall_k), max(map_k))
    search_started = time.perf_counter()
    topk = exact_topk(core.query_vectors, blocks(), depth, engine=engine, normalize=True)
    search_s = time.perf_counter() - search_started
    gallery_codes = np.concatenate(code_blocks)
    scores = score_topk(topk, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k)
    summary = {
        "model": {"dim": int(core.query_vectors.shape[1]),
                  "preprocessing": "as in the official feature files (L2-normalised here)"},
        "dataset": {"name": "ilias", "source": {"format": "ilias-features", "path": str(directory),
                                                "max_distractors": str(max_distractors),
                                                "selected_ids": str(selected_ids) if selected_ids else "",
                                                "total_distractors": "all" if distractor_files is None
                                                else str(distractor_files)}},
        "metrics": scores.metrics,
        "queries": scores.queries,
        "protocol": protocol_record(
            setup="inter", gallery_type="open", recall_k=recall_k, map_k=map_k,
            search=f"exact blocked matmul, streamed distractor files ({resolve_engine(engine)})",
            unanswerable_as_miss=False,
        ) | {"mode": "vsbench"},
        "gallery": {"total": len(gallery_ids), "indexed": len(gallery_ids),
                    "distractors": int((gallery_codes < 0).sum())},
        "timings": {"search_s": round(search_s, 4), "total_s": round(time.perf_counter() - started, 4)},
    }

    def outcomes():
        return iter_outcomes(scores, topk, query_ids, query_labels, gallery_ids, map_k)

    return summary, outcomes
