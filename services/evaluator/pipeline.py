"""The one evaluation loop: dataset -> embedding client -> vector store -> exact search -> metrics
-> one RunRecord. `vsbench run`, `quickstart`, `embed` (into an NPZ file or an embedding
directory) and `score` (from either) all go through `Evaluation.run`. Everything it talks to is a
seam (Dataset, EmbeddingClient, VectorStore); the embedding stage is here, the scoring stage in
score_stage.py."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np

from services.common.types import CallUsage, ErrorCode, ImageItem, InputRole, ModelInfo
from services.common.vectors import UnusableVector, unit_vector
from services.evaluator.analytics.options import AnalysisOptions
from services.evaluator.clients.base import EmbeddingClient, EmbeddingServiceError
from services.evaluator.datasets.base import Dataset, ImageRecord, Setup, Split
from services.evaluator.results import RunResult, path_segment
from services.evaluator.score_stage import score_stage
from services.evaluator.stores.base import VectorStore

if TYPE_CHECKING:
    from services.evaluator.sharded_search import Ranked

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
    # A ranking computed elsewhere (sharded_search.read_ranked: `vsbench score --ranked`), scored
    # instead of searching; the score stage checks it was computed from these very vectors.
    ranked: "Ranked | None" = None


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
        return score_stage(
            self.store, self.results_dir, self.options, dataset, info, model_name,
            collection_name(dataset.name, model_name), report=report, missing=missing, extra=extra, out=out,
        )

    def _stored_ids(self, collection: str, image_ids: Sequence[str]) -> set[str]:
        stored: set[str] = set()
        for chunk in _chunks(image_ids, LOOKUP_BATCH):
            stored |= self.store.existing_ids(collection, chunk)
        return stored


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
