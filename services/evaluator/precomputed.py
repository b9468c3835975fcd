"""Scoring precomputed embeddings: the `vsbench score` contract other tools rely on.

NPZ keys: `embeddings` (N x D float), `ids` (N unique strings), `labels` (N strings; "" = distractor).
Without a query file it is intra retrieval over the gallery (every labelled gallery image queries
the rest). Inputs are L2-normalised here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.common.errors import VsbenchError
from services.evaluator.scoring import LabelIndex, iter_outcomes, protocol_record, score_topk
from services.evaluator.search import exact_topk, l2_normalize, resolve_engine


class InputError(VsbenchError, ValueError):
    """Bad precomputed input; the message is one line naming the problem and the row."""


@dataclass
class EmbeddingSet:
    name: str
    vectors: np.ndarray
    ids: list[str]
    labels: list[str]


def load_npz(path: Path, role: str) -> EmbeddingSet:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{role} file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise InputError(f"{role} file {path} is not a readable .npz: {exc}") from None
    missing = [key for key in ("embeddings", "ids", "labels") if key not in data.files]
    if missing:
        raise InputError(f"{role} file {path} lacks key(s) {', '.join(missing)} (has {', '.join(data.files)})")
    vectors = data["embeddings"]
    ids = [str(x) for x in data["ids"].tolist()]
    labels = ["" if x is None else str(x) for x in data["labels"].tolist()]
    return EmbeddingSet(name=role, vectors=vectors, ids=ids, labels=labels)


def validate_set(emb: EmbeddingSet, *, labels_required: bool) -> np.ndarray:
    """Checks one set and returns its float32 L2-normalised vectors."""
    where = emb.name
    vectors = np.asarray(emb.vectors)
    if vectors.ndim != 2:
        raise InputError(f"{where}: embeddings must be 2-D (N x D), got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number):
        raise InputError(f"{where}: embeddings must be numeric, got dtype {vectors.dtype}")
    n = vectors.shape[0]
    if n == 0:
        raise InputError(f"{where}: no embeddings")
    if len(emb.ids) != n or len(emb.labels) != n:
        raise InputError(
            f"{where}: mismatched lengths: {n} embeddings, {len(emb.ids)} ids, {len(emb.labels)} labels"
        )
    vectors = vectors.astype(np.float32, copy=False)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{where}: row {row} (id {emb.ids[row]!r}) has NaN or inf values")
    norms = np.linalg.norm(vectors, axis=1)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms == 0)[0])
        raise InputError(f"{where}: row {row} (id {emb.ids[row]!r}) is a zero vector")
    seen: dict[str, int] = {}
    for row, image_id in enumerate(emb.ids):
        if image_id in seen:
            raise InputError(f"{where}: duplicate id {image_id!r} at rows {seen[image_id]} and {row}")
        seen[image_id] = row
    if labels_required:
        for row, label in enumerate(emb.labels):
            if label == "":
                raise InputError(f"{where}: row {row} (id {emb.ids[row]!r}) is a query with an empty label")
    return l2_normalize(vectors)


def score_sets(
    gallery: EmbeddingSet,
    queries: EmbeddingSet | None,
    *,
    recall_k: Sequence[int] = (1, 5),
    map_k: Sequence[int] = (20,),
    unanswerable_as_miss: bool = False,
    engine: str = "auto",
):
    """Validate, search exactly, score. Returns (summary dict, outcome iterator factory)."""
    started = time.perf_counter()
    gallery_vectors = validate_set(gallery, labels_required=False)
    labels = LabelIndex()
    gallery_codes = labels.encode(gallery.labels)
    if queries is None:
        setup = "intra"
        query_rows = np.flatnonzero(gallery_codes >= 0)
        if query_rows.size == 0:
            raise InputError("gallery: no row has a label, so intra retrieval has no queries")
        query_vectors = gallery_vectors[query_rows]
        query_ids = [gallery.ids[i] for i in query_rows]
        query_labels = [gallery.labels[i] for i in query_rows]
        exclude = query_rows.astype(np.int64)
    else:
        setup = "inter"
        query_vectors = validate_set(queries, labels_required=True)
        if query_vectors.shape[1] != gallery_vectors.shape[1]:
            raise InputError(
                f"dimension mismatch: queries have {query_vectors.shape[1]} dims, gallery has {gallery_vectors.shape[1]}"
            )
        query_ids, query_labels = queries.ids, queries.labels
        # Inter splits must not overlap: a query also in the gallery would be its own top match.
        gallery_id_set = set(gallery.ids)
        shared = next((i for i in query_ids if i in gallery_id_set), None)
        if shared is not None:
            raise InputError(
                f"queries: id {shared!r} is also a gallery id; inter retrieval needs disjoint splits "
                "(omit --queries for intra retrieval over one set)"
            )
        exclude = None
    query_codes = labels.encode(query_labels)
    depth = max(max(recall_k), max(map_k))
    search_started = time.perf_counter()
    topk = exact_topk(query_vectors, gallery_vectors, depth, exclude=exclude, engine=engine)
    search_s = time.perf_counter() - search_started
    scores = score_topk(
        topk, query_codes, gallery_codes, recall_k=recall_k, map_k=map_k,
        query_in_gallery=exclude, unanswerable_as_miss=unanswerable_as_miss,
    )
    gallery_type = "open" if (gallery_codes < 0).any() else "closed"
    summary = {
        "metrics": scores.metrics,
        "queries": scores.queries,
        "protocol": protocol_record(
            setup=setup, gallery_type=gallery_type, recall_k=recall_k, map_k=map_k,
            search=f"exact blocked matmul ({resolve_engine(engine)})", unanswerable_as_miss=unanswerable_as_miss,
        ),
        "gallery": {"total": len(gallery.ids), "indexed": len(gallery.ids), "distractors": int((gallery_codes < 0).sum())},
        "timings": {"search_s": round(search_s, 4), "total_s": round(time.perf_counter() - started, 4)},
    }
    def outcomes():
        return iter_outcomes(scores, topk, query_ids, query_labels, gallery.ids, map_k)

    return summary, outcomes


def score_ilias_features(
    directory: Path,
    *,
    recall_k: Sequence[int] = (1, 5),
    map_k: Sequence[int] = (20, 1000),
    max_distractors: int | None = None,
    selected_ids: Path | None = None,
    distractor_files: int | None = None,
    engine: str = "auto",
):
    """Score ILIAS's official HDF5 features (image queries vs positives + distractors).

    The distractors stream from their files in blocks, so a 5M-image gallery never sits in memory
    as one array; only ids and integer labels are kept for the ranked lists.
    """
    from services.evaluator.datasets.ilias import iter_ilias_distractor_features, load_ilias_features

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
        "dataset": {"name": "ilias", "source": {"format": "ilias-features", "path": str(directory),
                                                "max_distractors": str(max_distractors),
                                                "selected_ids": str(selected_ids) if selected_ids else ""}},
        "metrics": scores.metrics,
        "queries": scores.queries,
        "protocol": protocol_record(
            setup="inter", gallery_type="open", recall_k=recall_k, map_k=map_k,
            search=f"exact blocked matmul, streamed distractor files ({resolve_engine(engine)})",
            unanswerable_as_miss=False,
        ),
        "gallery": {"total": len(gallery_ids), "indexed": len(gallery_ids),
                    "distractors": int((gallery_codes < 0).sum())},
        "timings": {"search_s": round(search_s, 4), "total_s": round(time.perf_counter() - started, 4)},
    }

    def outcomes():
        return iter_outcomes(scores, topk, query_ids, query_labels, gallery_ids, map_k)

    return summary, outcomes
