"""The one evaluation loop: dataset -> embedding client -> vector store -> exact search -> metrics
-> one RunRecord. `vsbench run`, `quickstart`, `embed` (into an NPZ store) and `score` (from NPZ
files) all go through `Evaluation.run`. Everything it talks to is a seam (Dataset,
EmbeddingClient, VectorStore)."""

from __future__ import annotations

import logging
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from services.common.types import CallUsage, ErrorCode, ImageItem, InputRole, ModelInfo
from services.common.vectors import UnusableVector, unit_vector
from services.evaluator.analytics.analyses import AnalysisOptions, run_analyses
from services.evaluator.clients.base import EmbeddingClient, EmbeddingServiceError
from services.evaluator.datasets.base import Dataset, ImageRecord, Setup, Split
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
from services.evaluator.results import RunResult, new_run_id, now_iso, path_segment, write_run
from services.evaluator.scoring import LabelIndex, iter_outcomes, protocol_record, score_topk
from services.evaluator.search import TopK, exact_topk, l2_normalize, resolve_engine
from services.evaluator.stores._common import check_fingerprint
from services.evaluator.stores.base import VectorStore

log = logging.getLogger(__name__)

UPSERT_BATCH = 256
LOOKUP_BATCH = 4096


@dataclass
class EvaluationOptions:
    recall_k: Sequence[int] = (1, 5)
    map_k: Sequence[int] = (20,)
    search: str = "matmul"  # or "qdrant"
    engine: str = "auto"
    unanswerable_as_miss: bool = False
    show_progress: bool = True
    # Replace a collection whose vectors came from another model fingerprint (else: refuse).
    reembed: bool = False
    # Decision analytics (open-set, scaling, compression) into the record's `analyses`.
    analyses: AnalysisOptions = field(default_factory=AnalysisOptions)


@dataclass
class EmbedReport:
    """What one embedding pass did; errors are per image and never stop the pass."""

    requested: int = 0
    already_stored: int = 0
    embedded: int = 0
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    usage: CallUsage = field(default_factory=CallUsage)
    # Set when the embedding service failed for good part-way (what arrived is stored).
    failure: str | None = None

    @property
    def images_per_s(self) -> float | None:
        return round(self.embedded / self.seconds, 3) if self.seconds > 0 and self.embedded else None


@dataclass
class RunOutcome:
    """What `Evaluation.run` did: the embedding pass (None when not asked) and the written record
    (None when scoring was not asked). A record with status "failed" says why in `failure`."""

    report: EmbedReport | None
    result: RunResult | None

    @property
    def failed(self) -> bool:
        return (self.result is not None and not self.result.ok) or (
            self.report is not None and self.report.failure is not None
        )


DEFAULT_ROLES: Mapping[Split, InputRole | None] = {Split.GALLERY: InputRole.DOCUMENT, Split.QUERY: InputRole.QUERY}
_SPLIT_NAMES = {Split.GALLERY: "gallery", Split.QUERY: "queries"}


def _by_split(records: Sequence[ImageRecord]) -> list[tuple[Split, list[ImageRecord]]]:
    parts = {Split.GALLERY: [], Split.QUERY: []}
    for record in records:
        parts[record.split].append(record)
    return [(split, part) for split, part in parts.items() if part]


def collection_name(dataset: str, model: str) -> str:
    return f"{path_segment(dataset)}__{path_segment(model)}"


def progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=False,
    )


def _chunks(values: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("vsbench", "numpy", "torch", "grpcio", "qdrant-edge-py", "qdrant-client", "transformers", "onnxruntime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


class Evaluation:
    def __init__(self, store: VectorStore, results_dir: Path, options: EvaluationOptions | None = None) -> None:
        self.store = store
        self.results_dir = Path(results_dir)
        self.options = options or EvaluationOptions()

    # ---- the loop ------------------------------------------------------------------------
    def run(
        self,
        dataset: Dataset,
        client: EmbeddingClient,
        model_name: str | None = None,
        *,
        embed: bool = True,
        score: bool = True,
        records: Sequence[ImageRecord] | None = None,
        extra: dict | None = None,
        out: Path | None = None,
        roles: Mapping[Split, InputRole | None] | None = None,
    ) -> RunOutcome:
        """Embed what is not stored yet (missing files are listed and skipped), then score and
        write one RunRecord (to `out` when given, else under results_dir).

        `records` limits the embedding pass (a shard); scoring always covers the whole dataset.
        `roles`: the input role each split is embedded with (default: gallery images as documents,
        queries as queries; services that do not distinguish roles ignore them). In an intra
        dataset every image is a gallery image, so every image is embedded as a document.
        A service that fails for good part-way, or a run in which no gallery image got a vector,
        still writes a record: status "failed", the per-image errors, and why."""
        info = client.info()
        model_name = model_name or info.name
        roles = DEFAULT_ROLES if roles is None else roles
        missing = dataset.missing(records)
        if missing:
            log.warning("%s: %d image files are missing; the run goes on without them", dataset.name, len(missing))
        report = None
        if embed:
            missing_ids = {r.image_id for r in missing}
            todo = [r for r in (dataset.records if records is None else records) if r.image_id not in missing_ids]
            report = self._embed(dataset, client, info, model_name, todo, roles)
        if not score:
            return RunOutcome(report, None)
        if records is not None:  # a shard was embedded; the record covers the whole dataset
            missing = dataset.missing()
        roles_used = {_SPLIT_NAMES[split]: (role.value if role else "unspecified") for split, role in roles.items()
                      if split is Split.GALLERY or dataset.setup is Setup.INTER}
        extra = {**(extra or {}), "model": {**(extra or {}).get("model", {}), "input_roles": roles_used}}
        result = self._score(dataset, info, model_name, report=report, missing=missing, extra=extra, out=out)
        return RunOutcome(report, result)

    # ---- embedding -----------------------------------------------------------------------
    def _open_collection(self, dataset: Dataset, info: ModelInfo, model_name: str) -> str:
        collection = collection_name(dataset.name, model_name)
        if self.options.reembed:
            log.warning("%s: --reembed: dropping stored vectors and embedding afresh", collection)
            self.store.drop_collection(collection)
        # Refuses (FingerprintMismatch) when the stored vectors came from another model.
        self.store.ensure_collection(collection, info.dim, info.fingerprint)
        return collection

    def _embed(
        self,
        dataset: Dataset,
        client: EmbeddingClient,
        info: ModelInfo,
        model_name: str,
        records: Sequence[ImageRecord],
        roles: Mapping[Split, InputRole | None],
    ) -> EmbedReport:
        collection = self._open_collection(dataset, info, model_name)
        report = EmbedReport(requested=len(records))
        stored = self._stored_ids(collection, [r.image_id for r in records])
        todo = [r for r in records if r.image_id not in stored]
        report.already_stored = len(records) - len(todo)
        by_id = {r.image_id: r for r in todo}
        if not todo:
            return report

        def items(part: Sequence[ImageRecord]) -> Iterator[ImageItem]:
            for record in part:
                try:
                    data = dataset.read(record)
                except OSError as exc:
                    report.errors.append(_error(record, "READ_ERROR", f"cannot read {record.location}: {exc.strerror or exc}"))
                    continue
                yield ImageItem(id=record.image_id, data=data)

        buffer_ids: list[str] = []
        buffer_vectors: list[np.ndarray] = []

        def flush() -> None:
            if not buffer_ids:
                return
            payloads = [_payload(by_id[i], dataset.name, model_name) for i in buffer_ids]
            self.store.upsert(collection, list(buffer_ids), np.stack(buffer_vectors), payloads)
            report.embedded += len(buffer_ids)
            buffer_ids.clear()
            buffer_vectors.clear()

        started = time.perf_counter()
        with progress_bar(self.options.show_progress) as progress:
            task = progress.add_task(f"embed {dataset.name} / {model_name}", total=len(todo)) if progress else None
            try:
                received: set[str] = set()
                answers = (
                    embedding
                    # Gallery images and queries go in separate passes, each with its role.
                    for split, part in _by_split(todo)
                    for embedding in client.embed(items(part), usage=report.usage, role=roles.get(split))
                )
                for embedding in answers:
                    record = by_id.get(embedding.id)
                    if record is None or embedding.id in received:
                        # Only a faulty server answers an id we did not send, or one id twice.
                        log.warning("server answered %s id %r; ignored",
                                    "an unknown" if record is None else "a repeated", embedding.id)
                        continue
                    received.add(embedding.id)
                    if embedding.error is not None:
                        report.errors.append(_error(record, embedding.error.code.name, embedding.error.message))
                    else:
                        vector, problem = normalized_vector(embedding.vector, info.dim)
                        if problem is not None:
                            report.errors.append(_error(record, ErrorCode.INVALID_OUTPUT.name, problem))
                        else:
                            buffer_ids.append(embedding.id)
                            buffer_vectors.append(vector)
                            if len(buffer_ids) >= UPSERT_BATCH:
                                flush()
                    if progress:
                        progress.advance(task)
            except EmbeddingServiceError as exc:
                # What arrived is stored below; a rerun resumes from there instead of paying again.
                report.failure = str(exc)
            finally:
                flush()
                report.seconds = time.perf_counter() - started
        return report

    # ---- scoring -------------------------------------------------------------------------
    def _score(
        self,
        dataset: Dataset,
        info: ModelInfo,
        model_name: str,
        *,
        report: EmbedReport | None,
        missing: Sequence[ImageRecord],
        extra: dict | None,
        out: Path | None,
    ) -> RunResult:
        opts = self.options
        started = time.perf_counter()
        collection = collection_name(dataset.name, model_name)
        stored_fp = self.store.collection_fingerprint(collection)
        if report is None and stored_fp is not None:
            check_fingerprint(collection, stored_fp, info.fingerprint)  # score-only: same model only
        gallery_records = dataset.gallery()
        query_records = dataset.queries()
        if stored_fp is None:
            stored: set[str] = set()
        else:
            stored = self._stored_ids(collection, [r.image_id for r in gallery_records] + (
                [] if dataset.setup is Setup.INTRA else [r.image_id for r in query_records]
            ))
        gallery = [r for r in gallery_records if r.image_id in stored]
        queries = [r for r in query_records if r.image_id in stored]
        missing_ids = {r.image_id for r in missing}
        errors = list(report.errors) if report else []
        not_stored_queries = [r for r in query_records if r.image_id not in stored]
        not_stored_gallery = [r for r in gallery_records if r.image_id not in stored]
        record = RunRecord(
            run_id=new_run_id(),
            created=now_iso(),
            dataset=DatasetRecord(
                name=dataset.name, setup=dataset.setup.value, gallery_type=dataset.gallery_type.value,
                description=dataset.description, counts=dataset.counts(), source=dict(dataset.source),
            ),
            model=_model_record(info, model_name),
            missing_images=sorted(missing_ids),
            errors=[ItemErrorRecord(**e) for e in errors],
            # Only services that bill per call report usage (the api_proxy); an embedder reports none.
            usage=UsageRecord(**report.usage.to_dict()) if report is not None and report.usage.reported else None,
            versions=versions(),
        )
        record = _apply_extra(record, extra)
        gallery_counts = GalleryCounts(
            total=len(gallery_records),
            indexed=len(gallery),
            failed_to_embed=sum(r.image_id not in missing_ids for r in not_stored_gallery),
            missing_files=sum(r.image_id in missing_ids for r in not_stored_gallery),
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
        if failure is None and not gallery:
            failure = f"no gallery image of {dataset.name} has a stored vector from {model_name}" + (
                f" ({len(errors)} per-image errors, first: {errors[0]['code']}: {errors[0]['message']})" if errors else ""
            )
        if failure is not None:
            record = record.model_copy(update={
                "status": "failed", "failure": failure, "gallery": gallery_counts,
                "timings": {**timings, "score_total_s": round(time.perf_counter() - started, 4)},
            })
            return write_run(self.results_dir, record, None, path=out)

        position = {r.image_id: i for i, r in enumerate(gallery)}
        labels = LabelIndex()
        gallery_codes = labels.encode([r.product_id for r in gallery])
        query_codes = labels.encode([r.product_id for r in queries])
        exclude = (
            np.array([position[r.image_id] for r in queries], dtype=np.int64)
            if dataset.setup is Setup.INTRA
            else None
        )
        depth = max(max(opts.recall_k), max(opts.map_k))
        query_vectors = l2_normalize(self._fetch_all(collection, [r.image_id for r in queries], info.dim))

        search_started = time.perf_counter()
        if opts.search == "qdrant":
            topk = self._search_qdrant(collection, query_vectors, queries, position, depth, dataset.setup)
            search_desc = "Qdrant exact search (SearchParams(exact=True), Distance.DOT)"
        else:
            blocks = (l2_normalize(block.vectors) for block in self.store.fetch(collection, [r.image_id for r in gallery]))
            topk = exact_topk(query_vectors, blocks, depth, exclude=exclude, engine=opts.engine)
            search_desc = f"exact blocked matmul over vectors read back from the store ({resolve_engine(opts.engine)})"
        search_s = time.perf_counter() - search_started

        scores = score_topk(
            topk, query_codes, gallery_codes, recall_k=opts.recall_k, map_k=opts.map_k,
            query_in_gallery=exclude, unanswerable_as_miss=opts.unanswerable_as_miss,
        )
        queries_counts = QueryCounts(
            **scores.queries,
            failed_to_embed=sum(r.image_id not in missing_ids for r in not_stored_queries),
            missing_files=sum(r.image_id in missing_ids for r in not_stored_queries),
        )
        # Queries that never got a vector are not in `scores` at all; say so beside the total.
        queries_counts.total += len(not_stored_queries)
        gallery_counts.distractors = int((gallery_codes < 0).sum())
        timings["search_s"] = round(search_s, 4)
        timings["score_total_s"] = round(time.perf_counter() - started, 4)
        protocol = ProtocolRecord(**protocol_record(
            setup=dataset.setup.value, gallery_type=dataset.gallery_type.value, recall_k=opts.recall_k,
            map_k=opts.map_k, search=search_desc, unanswerable_as_miss=opts.unanswerable_as_miss,
        ))
        analyses = _analyses(
            self, collection, gallery, topk, scores, query_codes, gallery_codes, exclude, query_vectors, timings
        )
        record = record.model_copy(update={
            "protocol": protocol, "metrics": scores.metrics, "queries": queries_counts,
            "gallery": gallery_counts, "timings": timings, "analyses": analyses,
        })
        outcomes = iter_outcomes(
            scores, topk, [r.image_id for r in queries], [r.product_id for r in queries],
            [r.image_id for r in gallery], opts.map_k,
        )
        return write_run(self.results_dir, record, outcomes, path=out)

    def _stored_ids(self, collection: str, image_ids: Sequence[str]) -> set[str]:
        stored: set[str] = set()
        for chunk in _chunks(image_ids, LOOKUP_BATCH):
            stored |= self.store.existing_ids(collection, chunk)
        return stored

    def _fetch_all(self, collection: str, image_ids: Sequence[str], dim: int) -> np.ndarray:
        blocks = [b.vectors for b in self.store.fetch(collection, image_ids)]
        return np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)

    def _search_qdrant(self, collection, query_vectors, queries, position, depth, setup) -> TopK:
        exclude_ids = [r.image_id for r in queries] if setup is Setup.INTRA else None
        # tie_order: equal scores ranked by gallery position, the same tie rule as the matmul engine.
        hits = self.store.search_exact(
            collection, query_vectors, depth, split="gallery", exclude_ids=exclude_ids, tie_order=position
        )
        indices = np.full((len(queries), depth), -1, dtype=np.int64)
        scores = np.full((len(queries), depth), -np.inf, dtype=np.float32)
        for row, ranked in enumerate(hits):
            for col, hit in enumerate(ranked[:depth]):
                indices[row, col] = position[hit.image_id]
                scores[row, col] = hit.score
        return TopK(indices=indices, scores=scores)


def _analyses(evaluation, collection, gallery, topk, scores, query_codes, gallery_codes, exclude, query_vectors, timings):
    """The record's `analyses` block (services/evaluator/analytics) from this run's ranking and
    stored vectors; its seconds go into timings["analyses_s"]."""
    opts = evaluation.options
    started = time.perf_counter()
    analyses = run_analyses(
        opts.analyses, topk=topk, scores=scores, query_codes=query_codes, gallery_codes=gallery_codes,
        exclude=exclude, query_vectors=query_vectors,
        gallery_vectors=lambda: l2_normalize(
            evaluation._fetch_all(collection, [r.image_id for r in gallery], query_vectors.shape[1])
        ),
        recall_k=opts.recall_k, map_k=opts.map_k, unanswerable_as_miss=opts.unanswerable_as_miss, engine=opts.engine,
    )
    if analyses is not None:
        timings["analyses_s"] = round(time.perf_counter() - started, 4)
    return analyses


def normalized_vector(vector: np.ndarray | None, dim: int) -> tuple[np.ndarray | None, str | None]:
    """(unit float32 vector, None) or (None, why it is unusable): the one rule of
    services/common/vectors.py (float64 norm, finite, within [MIN_NORM, MAX_NORM])."""
    if vector is None:
        return None, "no vector"
    if vector.shape != (dim,):
        return None, f"vector has shape {vector.shape}, model declares dim {dim}"
    try:
        return unit_vector(vector), None
    except UnusableVector as exc:
        return None, str(exc)


def _model_record(info: ModelInfo, model_name: str) -> ModelRecord:
    data = info.to_dict()
    served_as = data.pop("name")
    return ModelRecord(name=model_name, served_as=served_as, **data)


def _apply_extra(record: RunRecord, extra: dict | None) -> RunRecord:
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


def _payload(record: ImageRecord, dataset: str, model: str) -> dict:
    return {
        "image_id": record.image_id,
        "product_id": record.product_id,
        "split": record.split.value,
        "dataset": dataset,
        "model": model,
    }


def _error(record: ImageRecord, code: str, message: str) -> dict:
    return {"image_id": record.image_id, "split": record.split.value, "code": code, "message": message}
