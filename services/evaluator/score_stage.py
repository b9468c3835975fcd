"""The loop's scoring stage (Evaluation.run calls it after embedding): the vectors stored for a
dataset -> exact search -> metrics -> one RunRecord.

It reads the dataset as columns (datasets/columns.py) and the store as a StoredMatrix per split, so
a gallery of millions is never a list of Python objects: ids stay in Arrow, labels are integer
codes, vectors stream from the store in blocks (memory-mapped slices for an embedding directory)
and are normalised inside the search's reused buffers.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa

from services.common.errors import VsbenchError
from services.common.types import ModelInfo
from services.evaluator import arrow_kernels as ak
from services.evaluator.datasets.base import Dataset, ImageRecord
from services.evaluator.datasets.columns import DatasetColumns
from services.evaluator.record import (
    DatasetRecord,
    GalleryCounts,
    ItemErrorRecord,
    ModelRecord,
    ProtocolRecord,
    QueryCounts,
    RunRecord,
    UsageRecord,
)
from services.evaluator.results import RunResult, new_run_id, now_iso, write_run
from services.evaluator.scoring import iter_outcomes, protocol_record, score_topk
from services.evaluator.search import TopK, UnusableGalleryRow, exact_topk, l2_normalize, resolve_engine
from services.evaluator.stores._common import check_fingerprint
from services.evaluator.stores.base import StoredMatrix, VectorStore

if TYPE_CHECKING:
    from services.evaluator.pipeline import EmbedReport, EvaluationOptions
    from services.evaluator.sharded_search import Ranked

log = logging.getLogger(__name__)


class UnusableStoredVector(VsbenchError, ValueError):
    """A stored (or precomputed) vector that cannot be searched: NaN, inf or all zeros."""


@dataclass
class _Stored:
    """What the store holds of the dataset, as positions into the dataset's columns."""

    gallery: StoredMatrix | None
    gallery_rows: np.ndarray  # dataset gallery positions that have a vector, ascending
    query_rows: np.ndarray  # dataset query positions that have a vector, ascending
    raw_queries: np.ndarray  # (len(query_rows), dim) float32 as stored (the search normalises them)
    query_vectors: np.ndarray  # the same, L2-normalised (both filled by _read_queries)
    exclude: np.ndarray | None  # intra: per stored query, its own position among gallery_rows
    queries: StoredMatrix | None = None  # inter: the query split's vectors, read after the failure check


def score_stage(
    store: VectorStore,
    results_dir: Path,
    options: "EvaluationOptions",
    dataset: Dataset,
    info: ModelInfo,
    model_name: str,
    collection: str,
    *,
    report: "EmbedReport | None",
    missing: Sequence[ImageRecord],
    extra: dict | None,
    out: Path | None,
) -> RunResult:
    """Score what is stored and write the run's record (status "failed" with the reason when no
    gallery image has a vector or the embedding service failed for good)."""
    opts = options
    started = time.perf_counter()
    stored_fp = store.collection_fingerprint(collection)
    if report is None and stored_fp is not None:
        check_fingerprint(collection, stored_fp, info.fingerprint)  # score-only: same model only
    columns = dataset.columns()
    stored = _stored(store, collection, columns, info.dim, exists=stored_fp is not None)
    missing_ids = {r.image_id for r in missing}
    errors = list(report.errors) if report else []
    record = RunRecord(
        run_id=new_run_id(),
        created=now_iso(),
        dataset=DatasetRecord(
            name=dataset.name, setup=dataset.setup.value, gallery_type=dataset.gallery_type.value,
            description=dataset.description, counts=columns.counts(), source=dict(dataset.source),
        ),
        model=_model_record(info, model_name),
        missing_images=sorted(missing_ids),
        errors=[ItemErrorRecord(**e) for e in errors],
        # Only services that bill per call report usage (the api_proxy); an embedder reports none.
        usage=UsageRecord(**report.usage.to_dict()) if report is not None and report.usage.reported else None,
        versions=versions(),
    )
    record = apply_extra(record, extra)
    gallery_not_stored = _split_absent(columns.gallery_ids, stored.gallery_rows, missing_ids)
    gallery_counts = GalleryCounts(
        total=len(columns.gallery_ids), indexed=len(stored.gallery_rows),
        failed_to_embed=gallery_not_stored[0], missing_files=gallery_not_stored[1],
    )
    timings: dict[str, float | int | None] = {}
    if report is not None:
        timings.update(
            embed_s=round(report.seconds, 4),
            images_embedded=report.embedded,
            images_already_stored=report.already_stored,
            images_per_s=report.images_per_s,
        )
    failure = report.failure if report is not None else None
    if failure is None and not len(stored.gallery_rows):
        failure = f"no gallery image of {dataset.name} has a stored vector from {model_name}" + (
            f" ({len(errors)} per-image errors, first: {errors[0]['code']}: {errors[0]['message']})" if errors else ""
        )
    if failure is not None:
        record = record.model_copy(update={
            "status": "failed", "failure": failure, "gallery": gallery_counts,
            "timings": {**timings, "score_total_s": round(time.perf_counter() - started, 4)},
        })
        return write_run(results_dir, record, None, path=out)

    _read_queries(stored, collection, columns, info.dim)
    gallery_codes = columns.gallery_codes[stored.gallery_rows]
    query_codes = columns.query_codes[stored.query_rows]
    depth = max(max(opts.recall_k), max(opts.map_k))
    search_started = time.perf_counter()
    if opts.ranked is not None:
        topk, search_desc = _ranked(opts.ranked, columns, stored, info.dim, depth)
    elif opts.search == "qdrant":
        topk = _search_qdrant(store, collection, columns, stored, depth)
        search_desc = "Qdrant exact search (SearchParams(exact=True), Distance.DOT)"
    else:
        engine = resolve_engine(opts.engine)
        try:
            topk = exact_topk(stored.raw_queries, stored.gallery.blocks(), depth, exclude=stored.exclude,
                              engine=engine, normalize=True)
        except UnusableGalleryRow as exc:
            row = int(stored.gallery_rows[exc.position])
            raise UnusableStoredVector(
                f"{collection}: gallery row {row} (id {columns.gallery_ids[row].as_py()!r}) {exc.why}"
            ) from None
        search_desc = f"exact blocked matmul over vectors read back from the store ({engine})"
    search_s = time.perf_counter() - search_started

    scores = score_topk(
        topk, query_codes, gallery_codes, recall_k=opts.recall_k, map_k=opts.map_k,
        query_in_gallery=stored.exclude, unanswerable_as_miss=opts.unanswerable_as_miss,
    )
    query_not_stored = _split_absent(columns.query_ids, stored.query_rows, missing_ids)
    queries_counts = QueryCounts(**scores.queries, failed_to_embed=query_not_stored[0],
                                 missing_files=query_not_stored[1])
    # Queries that never got a vector are not in `scores` at all; say so beside the total.
    queries_counts.total += sum(query_not_stored)
    gallery_counts.distractors = int((gallery_codes < 0).sum())
    timings["search_s"] = round(search_s, 4)
    timings["score_total_s"] = round(time.perf_counter() - started, 4)
    protocol = ProtocolRecord(**protocol_record(
        setup=dataset.setup.value, gallery_type=dataset.gallery_type.value, recall_k=opts.recall_k,
        map_k=opts.map_k, search=search_desc, unanswerable_as_miss=opts.unanswerable_as_miss,
    ))
    analyses = _analyses(opts, stored, topk, scores, query_codes, gallery_codes, timings)
    record = record.model_copy(update={
        "protocol": protocol, "metrics": scores.metrics, "queries": queries_counts,
        "gallery": gallery_counts, "timings": timings, "analyses": analyses,
    })
    outcomes = iter_outcomes(
        scores, topk, ak.take(columns.query_ids, stored.query_rows).to_pylist(),
        columns.query_products(stored.query_rows), _gallery_ids_at(columns, stored),
        opts.map_k,
    )
    return write_run(results_dir, record, outcomes, path=out)


def _ranked(ranked: "Ranked", columns: DatasetColumns, stored: _Stored, dim: int, depth: int) -> tuple[TopK, str]:
    """A ranking searched elsewhere (`vsbench search-shard` + `search-merge`) used instead of the
    search, once it is shown to come from exactly these vectors. Its positions are over the whole
    gallery and the search here would rank only stored rows: they agree only when every row is."""
    from services.evaluator.sharded_search import RankingMismatch

    if len(stored.gallery_rows) != len(columns.gallery_ids):
        raise RankingMismatch(f"--ranked needs a vector for every gallery row: {len(columns.gallery_ids)} rows, "
                              f"{len(stored.gallery_rows)} stored")
    topk = ranked.topk_for(stored.raw_queries, stored.exclude, len(columns.gallery_ids), dim, depth)
    return topk, (f"exact sharded search merged from {ranked.shard_count} shard files ({ranked.path.name}): "
                  "blocked matmul over L2-normalised vectors, ties by gallery position")


def _stored(store: VectorStore, collection: str, columns: DatasetColumns, dim: int, *, exists: bool) -> _Stored:
    """Which gallery and query rows have vectors (no vector is read yet: a failed run needs none)."""
    empty, no_vectors = np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    if not exists:
        return _Stored(None, empty, empty, no_vectors, no_vectors, None)
    gallery = store.matrix(collection, columns.gallery_ids)
    gallery_rows = np.flatnonzero(gallery.stored)
    if columns.intra:
        positions = columns.query_positions
        query_rows = np.flatnonzero(gallery.stored[positions])
        among_stored = np.full(len(columns.gallery_ids), -1, dtype=np.int64)
        among_stored[gallery_rows] = np.arange(gallery_rows.size)
        return _Stored(gallery, gallery_rows, query_rows, no_vectors, no_vectors, among_stored[positions[query_rows]])
    queries = store.matrix(collection, columns.query_ids)
    return _Stored(gallery, gallery_rows, np.flatnonzero(queries.stored), no_vectors, no_vectors, None, queries)


def _read_queries(stored: _Stored, collection: str, columns: DatasetColumns, dim: int) -> None:
    """The stored query vectors into `stored`, checked (finite, not zero) and normalised."""
    if columns.intra:
        # The queries are gallery images: their vectors are gathered from the gallery's blocks.
        vectors = _gather(stored.gallery.blocks(), stored.exclude, dim)
    else:
        blocks = [np.asarray(b, dtype=np.float32) for b in stored.queries.blocks()]
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        at = int(stored.query_rows[row])
        why = "is a zero vector" if norms[row] == 0 else "has NaN or inf values"
        # In intra retrieval a query is a gallery image: name its gallery row.
        where = f"gallery row {int(columns.query_positions[at])}" if columns.intra else f"query row {at}"
        raise UnusableStoredVector(f"{collection}: {where} (id {columns.query_ids[at].as_py()!r}) {why}")
    stored.raw_queries, stored.query_vectors = vectors, l2_normalize(vectors)


def _gather(blocks: Iterator[np.ndarray], rows: np.ndarray, dim: int) -> np.ndarray:
    """Rows (positions in the concatenated blocks, ascending) of a stream of blocks."""
    out = np.empty((rows.size, dim), dtype=np.float32)
    offset = done = 0
    for block in blocks:
        end = offset + block.shape[0]
        upto = int(np.searchsorted(rows, end, side="left"))
        if upto > done:
            out[done:upto] = block[rows[done:upto] - offset]
        done, offset = upto, end
    return out


def _split_absent(ids: pa.Array, stored_rows: np.ndarray, missing_ids: set[str]) -> tuple[int, int]:
    """(failed to embed, missing file) among a split's items without a stored vector."""
    absent = len(ids) - len(stored_rows)
    if not absent:
        return 0, 0
    if not missing_ids:
        return absent, 0
    mask = np.ones(len(ids), dtype=bool)
    mask[stored_rows] = False
    not_stored = ak.filter_rows(ids, mask)
    missing = ak.count_true(ak.is_in(not_stored, pa.array(sorted(missing_ids), pa.string())))
    return absent - missing, missing


def _gallery_ids_at(columns: DatasetColumns, stored: _Stored):
    """Positions among the stored gallery rows -> their ids, as one Arrow take (not a Python
    string per gallery item)."""

    def ids_of(positions: np.ndarray) -> list[str]:
        return ak.take(columns.gallery_ids, stored.gallery_rows[positions]).to_pylist()

    return ids_of


def _search_qdrant(store: VectorStore, collection: str, columns: DatasetColumns, stored: _Stored, depth: int) -> TopK:
    """The store's own exact search (for comparison runs; small datasets: ids become Python strings)."""
    gallery_ids = ak.take(columns.gallery_ids, stored.gallery_rows).to_pylist()
    position = {image_id: n for n, image_id in enumerate(gallery_ids)}
    exclude_ids = [gallery_ids[int(i)] for i in stored.exclude] if stored.exclude is not None else None
    # tie_order: equal scores ranked by gallery position, the same tie rule as the matmul engine.
    hits = store.search_exact(
        collection, stored.query_vectors, depth, split="gallery", exclude_ids=exclude_ids, tie_order=position
    )
    n = len(stored.query_rows)
    indices = np.full((n, depth), -1, dtype=np.int64)
    scores = np.full((n, depth), -np.inf, dtype=np.float32)
    for row, ranked in enumerate(hits):
        for col, hit in enumerate(ranked[:depth]):
            indices[row, col] = position[hit.image_id]
            scores[row, col] = hit.score
    return TopK(indices=indices, scores=scores)


def _analyses(opts, stored: _Stored, topk, scores, query_codes, gallery_codes, timings):
    """The record's `analyses` block (services/evaluator/analytics) from this run's ranking and
    stored vectors (read again, whole, only by the analyses that need them); its seconds go into
    timings["analyses_s"]."""
    from services.evaluator.analytics.analyses import run_analyses

    started = time.perf_counter()

    def gallery_vectors() -> np.ndarray:
        return l2_normalize(np.concatenate([np.asarray(b, dtype=np.float32) for b in stored.gallery.blocks()]))

    analyses = run_analyses(
        opts.analyses, topk=topk, scores=scores, query_codes=query_codes, gallery_codes=gallery_codes,
        exclude=stored.exclude, query_vectors=stored.query_vectors, gallery_vectors=gallery_vectors,
        recall_k=opts.recall_k, map_k=opts.map_k, unanswerable_as_miss=opts.unanswerable_as_miss, engine=opts.engine,
    )
    if analyses is not None:
        timings["analyses_s"] = round(time.perf_counter() - started, 4)
    return analyses


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("vsbench", "numpy", "torch", "grpcio", "qdrant-edge-py", "qdrant-client", "transformers", "onnxruntime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def _model_record(info: ModelInfo, model_name: str) -> ModelRecord:
    data = info.to_dict()
    served_as = data.pop("name")
    return ModelRecord(name=model_name, served_as=served_as, **data)


def apply_extra(record: RunRecord, extra: dict | None) -> RunRecord:
    """Merge caller facts (leaderboard groups, dataset source details) into the record's sections;
    validated again, so a misspelt key is refused rather than written."""
    if not extra:
        return record
    data = record.model_dump(by_alias=True)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return RunRecord.model_validate(data)
