"""`vsbench index`: embed a catalog's gallery through an embedding server into a CatalogIndex.

Incremental by image id: images already stored with the same product and location are kept,
new or changed ones are embedded (as DOCUMENT) and upserted, images no longer in the catalog are
deleted. The collection's model fingerprint must equal the serving model's; otherwise nothing is
touched unless `reembed` (then the collection is rebuilt from scratch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from services.common.errors import VsbenchError
from services.common.fingerprint import short
from services.common.vectors import UnusableVector, unit_vector
from services.common.types import CallUsage, Embedding, ImageItem, InputRole, ModelInfo
from services.evaluator.datasets.base import Dataset, ImageRecord
from services.search.index import CatalogIndex, CatalogIndexError, CollectionMeta, IndexParams

log = logging.getLogger(__name__)
_EMBED_CHUNK = 256  # images read, embedded and upserted per round


class Embedder(Protocol):
    def info(self) -> ModelInfo: ...
    def embed(self, items: Iterable[ImageItem], usage: CallUsage | None = None,
              role: InputRole | None = None) -> Iterator[Embedding]: ...


class ThresholdError(VsbenchError, ValueError):
    """A run record that cannot supply the open-set threshold for this model."""


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float | None  # None: the run recommends accepting everything
    source: str  # "<run id> <path>"
    fingerprint: str


def threshold_from_record(path: Path) -> ThresholdChoice:
    """The recommended open-set threshold of a benchmark run record (analyses.open_set)."""
    from pydantic import ValidationError

    from services.evaluator.record import RunRecord

    try:
        record = RunRecord.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThresholdError(f"cannot read the run record {path}: {exc}") from None
    except ValidationError as exc:
        raise ThresholdError(f"{path} is not a vsbench run record: {exc.errors()[0]['msg']}") from None
    if record.status != "ok":
        raise ThresholdError(f"{path}: run {record.run_id} failed ({record.failure}); it measured no threshold")
    open_set = record.analyses.open_set if record.analyses else None
    if open_set is None:
        raise ThresholdError(
            f"{path}: run {record.run_id} has no open-set analysis (needs out-of-catalog queries, "
            "e.g. the quickstart's open variant)"
        )
    rec = open_set.recommendation
    if rec.threshold is None and not rec.accept_all:
        raise ThresholdError(
            f"{path}: no threshold of run {record.run_id} reaches the target precision {rec.target_precision}%"
        )
    if not record.model.fingerprint:
        raise ThresholdError(f"{path}: run {record.run_id} recorded no model fingerprint; its threshold "
                             "cannot be tied to a model")
    return ThresholdChoice(threshold=rec.threshold, source=f"{record.run_id} {path}", fingerprint=record.model.fingerprint)


@dataclass
class IndexReport:
    collection: str
    fingerprint: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    points: int = 0
    rebuilt: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image id, reason)
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {
            "collection": self.collection, "fingerprint": self.fingerprint, "added": self.added,
            "updated": self.updated, "removed": self.removed, "unchanged": self.unchanged,
            "points": self.points, "rebuilt": self.rebuilt, "threshold": self.threshold,
            "failed": [{"image_id": i, "reason": r} for i, r in self.failed],
        }


def query_vector(vector, dim: int) -> np.ndarray:
    """The unit float32 vector the index stores and searches with (the evaluator's rule:
    services/common/vectors.py); raises UnusableVector."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.shape != (dim,):
        raise UnusableVector(f"vector has shape {arr.shape}, the collection holds {dim}-d vectors")
    return unit_vector(arr)


def _payload(dataset: Dataset, record: ImageRecord) -> dict:
    return {"image_id": record.image_id, "product_id": record.product_id, "location": record.location,
            "dataset": dataset.name}


def build_index(
    dataset: Dataset,
    embedder: Embedder,
    index: CatalogIndex,
    *,
    params: IndexParams | None = None,
    threshold: ThresholdChoice | None = None,
    reembed: bool = False,
) -> IndexReport:
    """Bring `index` in line with the dataset's gallery split; see the module doc. `reembed` rebuilds
    a collection of another fingerprint or other parameters from scratch."""
    info = embedder.info()
    if not info.fingerprint:
        raise CatalogIndexError(f"the embedding server serving {info.name!r} reports no model fingerprint; "
                                "a served collection must be tied to one")
    if threshold is not None and threshold.fingerprint != info.fingerprint:
        raise ThresholdError(
            f"the threshold of run {threshold.source} was measured with model fingerprint "
            f"{short(threshold.fingerprint)}, but the embedding server answers with {short(info.fingerprint)}"
        )
    report = IndexReport(collection=index.collection, fingerprint=info.fingerprint)
    meta = index.meta()
    if meta is not None and meta.fingerprint != info.fingerprint:
        if not reembed:
            raise CatalogIndexError(
                f"collection {index.collection!r} holds vectors of model fingerprint {short(meta.fingerprint)} "
                f"but the embedding server answers with {short(info.fingerprint)}; rerun with --reembed to "
                "rebuild it with the new model"
            )
        index.drop()
        meta, report.rebuilt = None, True
    params = params or (meta.params if meta is not None else IndexParams())
    if meta is not None and params != meta.params:
        if not reembed:
            raise CatalogIndexError(
                f"collection {index.collection!r} was built with {meta.params}; changing the index parameters "
                "needs a fresh collection (another --collection, or --reembed to rebuild this one)"
            )
        index.drop()
        meta, report.rebuilt = None, True
    if threshold is not None:
        chosen, source = threshold.threshold, threshold.source
    elif meta is not None:
        chosen, source = meta.threshold, meta.threshold_source
    else:
        chosen, source = None, ""
    new_meta = CollectionMeta(
        fingerprint=info.fingerprint, model=info.to_dict(), dim=info.dim, params=params, threshold=chosen,
        threshold_source=source, dataset={"name": dataset.name, "source": dict(dataset.source)},
    )
    if meta is None:
        index.create(new_meta)
        stored: dict[str, dict] = {}
    else:
        stored = index.payloads()

    gallery = dataset.gallery()
    wanted = {r.image_id: r for r in gallery}
    stale = [i for i in stored if i not in wanted]
    todo: list[ImageRecord] = []
    for record in gallery:
        have = stored.get(record.image_id)
        if have is None:
            todo.append(record)
        elif have.get("product_id") != record.product_id or have.get("location") != record.location:
            todo.append(record)
            report.updated += 1
        else:
            report.unchanged += 1
    report.added = len(todo) - report.updated
    index.delete(stale)
    report.removed = len(stale)
    for start in range(0, len(todo), _EMBED_CHUNK):
        _embed_chunk(dataset, todo[start : start + _EMBED_CHUNK], embedder, index, info, report)
    if report.failed:
        failed = {i for i, _ in report.failed}
        # A changed image that failed to embed must not keep its old vector under the new payload.
        index.delete([i for i in failed if i in stored])
        report.added -= sum(1 for i in failed if i not in stored)
        report.updated -= sum(1 for i in failed if i in stored)
    index.optimize()
    index.write_meta(new_meta)
    report.points = index.count()
    report.threshold = chosen
    return report


def _embed_chunk(dataset: Dataset, records: list[ImageRecord], embedder: Embedder, index: CatalogIndex,
                 info: ModelInfo, report: IndexReport) -> None:
    items: list[ImageItem] = []
    by_id = {}
    for record in records:
        try:
            items.append(ImageItem(record.image_id, dataset.read(record)))
            by_id[record.image_id] = record
        except OSError as exc:
            report.failed.append((record.image_id, f"unreadable: {exc}"))
    ids, vectors, payloads = [], [], []
    for result in embedder.embed(items, role=InputRole.DOCUMENT):
        if result.error is not None:
            report.failed.append((result.id, str(result.error)))
            continue
        try:
            vector = query_vector(result.vector, info.dim)
        except UnusableVector as exc:
            report.failed.append((result.id, f"unusable vector: {exc}"))
            continue
        ids.append(result.id)
        vectors.append(vector)
        payloads.append(_payload(dataset, by_id[result.id]))
    if ids:
        index.upsert(ids, np.stack(vectors), payloads)
