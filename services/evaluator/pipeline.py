"""The one place that wires dataset -> embedding client -> vector store -> exact search -> metrics
-> result files. Everything it talks to is a seam (Dataset, EmbeddingClient, VectorStore)."""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from services.common.types import ErrorCode, ImageItem, ModelInfo
from services.evaluator.clients.base import EmbeddingClient
from services.evaluator.datasets.base import Dataset, ImageRecord, Setup
from services.evaluator.results import RunResult, path_segment, write_run
from services.evaluator.scoring import LabelIndex, iter_outcomes, protocol_record, score_topk
from services.evaluator.search import TopK, exact_topk, resolve_engine
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


@dataclass
class EmbedReport:
    """What one embedding pass did; errors are per image and never stop the pass."""

    requested: int = 0
    already_stored: int = 0
    embedded: int = 0
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float | None:
        return round(self.embedded / self.seconds, 3) if self.seconds > 0 and self.embedded else None


def collection_name(dataset: str, model: str) -> str:
    return f"{path_segment(dataset)}__{path_segment(model)}"


def _progress(enabled: bool):
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

    # ---- embedding -----------------------------------------------------------------------
    def embed(
        self,
        dataset: Dataset,
        client: EmbeddingClient,
        model_name: str | None = None,
        records: Sequence[ImageRecord] | None = None,
    ) -> EmbedReport:
        """Embed every image of `records` (default: the whole dataset) not yet stored."""
        info = client.info()
        model_name = model_name or info.name
        collection = collection_name(dataset.name, model_name)
        self.store.ensure_collection(collection, info.dim)
        records = list(dataset.records if records is None else records)
        report = EmbedReport(requested=len(records))
        stored = self._stored_ids(collection, [r.image_id for r in records])
        todo = [r for r in records if r.image_id not in stored]
        report.already_stored = len(records) - len(todo)
        by_id = {r.image_id: r for r in todo}
        if not todo:
            return report

        def items() -> Iterator[ImageItem]:
            for record in todo:
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
            vectors = np.stack(buffer_vectors).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            payloads = [_payload(by_id[i], dataset.name, model_name) for i in buffer_ids]
            self.store.upsert(collection, list(buffer_ids), vectors, payloads)
            report.embedded += len(buffer_ids)
            buffer_ids.clear()
            buffer_vectors.clear()

        started = time.perf_counter()
        with _progress(self.options.show_progress) as progress:
            task = progress.add_task(f"embed {dataset.name} / {model_name}", total=len(todo)) if progress else None
            try:
                received: set[str] = set()
                for embedding in client.embed(items()):
                    record = by_id.get(embedding.id)
                    if record is None or embedding.id in received:
                        # Only a faulty server answers an id we did not send, or one id twice.
                        log.warning("server answered %s id %r; ignored",
                                    "an unknown" if record is None else "a repeated", embedding.id)
                        continue
                    received.add(embedding.id)
                    if embedding.error is not None:
                        report.errors.append(_error(record, embedding.error.code.name, embedding.error.message))
                    elif (invalid := _vector_problem(embedding.vector, info.dim)) is not None:
                        report.errors.append(_error(record, ErrorCode.INVALID_OUTPUT.name, invalid))
                    else:
                        buffer_ids.append(embedding.id)
                        buffer_vectors.append(embedding.vector)
                        if len(buffer_ids) >= UPSERT_BATCH:
                            flush()
                    if progress:
                        progress.advance(task)
            finally:
                # Whatever arrived is stored even when the service fails for good: a rerun resumes
                # from there instead of paying for those images again.
                flush()
                report.seconds = time.perf_counter() - started
        return report

    # ---- scoring -------------------------------------------------------------------------
    def score(
        self,
        dataset: Dataset,
        info: ModelInfo,
        model_name: str | None = None,
        *,
        embed_report: EmbedReport | None = None,
        missing: Sequence[ImageRecord] = (),
        extra: dict | None = None,
    ) -> RunResult:
        """Score what the store holds for (dataset, model) and write the run's result files."""
        opts = self.options
        started = time.perf_counter()
        model_name = model_name or info.name
        collection = collection_name(dataset.name, model_name)
        gallery_records = dataset.gallery()
        query_records = dataset.queries()

        stored = self._stored_ids(collection, [r.image_id for r in gallery_records] + (
            [] if dataset.setup is Setup.INTRA else [r.image_id for r in query_records]
        ))
        gallery = [r for r in gallery_records if r.image_id in stored]
        queries = [r for r in query_records if r.image_id in stored]
        if not gallery:
            raise RuntimeError(f"{dataset.name} / {model_name}: no gallery image has a stored vector")
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
        query_vectors = self._fetch_all(collection, [r.image_id for r in queries], info.dim)

        search_started = time.perf_counter()
        if opts.search == "qdrant":
            topk = self._search_qdrant(collection, query_vectors, queries, position, depth, dataset.setup)
            search_desc = "Qdrant exact search (SearchParams(exact=True), Distance.DOT)"
        else:
            blocks = (block.vectors for block in self.store.fetch(collection, [r.image_id for r in gallery]))
            topk = exact_topk(query_vectors, blocks, depth, exclude=exclude, engine=opts.engine)
            search_desc = f"exact blocked matmul over vectors read back from the store ({resolve_engine(opts.engine)})"
        search_s = time.perf_counter() - search_started

        scores = score_topk(
            topk, query_codes, gallery_codes, recall_k=opts.recall_k, map_k=opts.map_k,
            query_in_gallery=exclude, unanswerable_as_miss=opts.unanswerable_as_miss,
        )
        missing_ids = {r.image_id for r in missing}
        errors = list(embed_report.errors) if embed_report else []
        failed_ids = {e["image_id"] for e in errors}
        not_stored_queries = [r for r in query_records if r.image_id not in stored]
        not_stored_gallery = [r for r in gallery_records if r.image_id not in stored]
        queries_block = {
            **scores.queries,
            "failed_to_embed": sum(r.image_id not in missing_ids for r in not_stored_queries),
            "missing_files": sum(r.image_id in missing_ids for r in not_stored_queries),
        }
        # Queries that never got a vector are not in `scores` at all; say so beside the total.
        queries_block["total"] += len(not_stored_queries)
        gallery_block = {
            "total": len(gallery_records),
            "indexed": len(gallery),
            "failed_to_embed": sum(r.image_id not in missing_ids for r in not_stored_gallery),
            "missing_files": sum(r.image_id in missing_ids for r in not_stored_gallery),
            "distractors": int((gallery_codes < 0).sum()),
        }
        timings = {"search_s": round(search_s, 4)}
        if embed_report is not None:
            timings.update(
                embed_s=round(embed_report.seconds, 4),
                images_embedded=embed_report.embedded,
                images_already_stored=embed_report.already_stored,
                images_per_s=embed_report.images_per_s,
            )
        timings["score_total_s"] = round(time.perf_counter() - started, 4)
        model_record = info.to_dict()
        model_record["name"] = model_name
        usage = _usage_from_info(info)
        summary = {
            "dataset": {
                "name": dataset.name,
                "setup": dataset.setup.value,
                "gallery_type": dataset.gallery_type.value,
                "description": dataset.description,
                "counts": dataset.counts(),
                "source": dict(dataset.source),
            },
            "model": model_record,
            "protocol": protocol_record(
                setup=dataset.setup.value, gallery_type=dataset.gallery_type.value, recall_k=opts.recall_k,
                map_k=opts.map_k, search=search_desc, unanswerable_as_miss=opts.unanswerable_as_miss,
            ),
            "metrics": scores.metrics,
            "queries": queries_block,
            "gallery": gallery_block,
            "missing_images": sorted(missing_ids),
            "errors": errors,
            "timings": timings,
            "usage": usage,
            "versions": versions(),
        }
        if extra:
            for key, value in extra.items():
                if isinstance(value, dict) and isinstance(summary.get(key), dict):
                    summary[key].update(value)
                else:
                    summary[key] = value
        outcomes = iter_outcomes(
            scores, topk, [r.image_id for r in queries], [r.product_id for r in queries],
            [r.image_id for r in gallery], opts.map_k,
        )
        return write_run(self.results_dir, summary, outcomes)

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

    # ---- both ----------------------------------------------------------------------------
    def run(
        self, dataset: Dataset, client: EmbeddingClient, model_name: str | None = None, extra: dict | None = None
    ) -> RunResult:
        """Embed what is not stored yet, then score. Missing files are listed and skipped."""
        missing = dataset.missing()
        if missing:
            log.warning("%s: %d image files are missing; the run goes on without them", dataset.name, len(missing))
        missing_ids = {r.image_id for r in missing}
        report = self.embed(dataset, client, model_name, [r for r in dataset.records if r.image_id not in missing_ids])
        if hasattr(client, "refresh_info"):
            info = client.refresh_info()  # picks up usage counters from the api_proxy
        else:
            info = client.info()
        return self.score(dataset, info, model_name, embed_report=report, missing=missing, extra=extra)


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


def _vector_problem(vector: np.ndarray | None, dim: int) -> str | None:
    if vector is None:
        return "no vector"
    if vector.shape != (dim,):
        return f"vector has shape {vector.shape}, model declares dim {dim}"
    if not np.isfinite(vector).all():
        return "vector has NaN or inf values"
    if not np.any(vector):
        return "zero vector"
    return None


def _usage_from_info(info: ModelInfo) -> dict | None:
    raw = info.details.get("usage") if info.details else None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"raw": raw}
