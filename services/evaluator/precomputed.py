"""Precomputed embeddings: the `vsbench score` contract other tools rely on.

NPZ keys: `embeddings` (N x D float), `ids` (N unique strings), `labels` (N strings; "" = distractor).
Without a query file it is intra retrieval over the gallery (every labelled gallery image queries
the rest). The files are checked here, then scored by the one loop (Evaluation.run) through an
NpzStore, which L2-normalises like every other run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from services.common.errors import VsbenchError
from services.common.types import CallUsage, Embedding, ErrorCode, ImageItem, InputRole, ModelInfo
from services.evaluator.datasets.base import Dataset, GalleryType, ImageRecord, Setup, Split
from services.evaluator.stores.npz import NpzStore
from services.evaluator.search import l2_normalize


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


class PrecomputedClient:
    """The EmbeddingClient of vectors computed elsewhere: it describes them and embeds nothing
    (every image it could be asked for is already in the files)."""

    def __init__(self, info: ModelInfo) -> None:
        self._info = info

    def info(self) -> ModelInfo:
        return self._info

    def embed(
        self, items: Iterable[ImageItem], usage: CallUsage | None = None, role: InputRole | None = None
    ) -> Iterator[Embedding]:
        for item in items:
            yield Embedding.failed(item.id, ErrorCode.INVALID_IMAGE, "not in the precomputed embedding files")

    def close(self) -> None:
        return None


class PrecomputedDataset(Dataset):
    """Ids and labels of precomputed files: there are no image files behind the records."""

    def missing(self, records=None) -> list[ImageRecord]:
        return []

    def read(self, record: ImageRecord) -> bytes:
        raise InputError(f"{record.image_id}: precomputed embeddings have no image to read")


@dataclass
class NpzInputs:
    """`vsbench score` inputs made ready for the one loop: a dataset of the files' ids and
    labels, an NpzStore over the same files, and the client describing the vectors."""

    dataset: Dataset
    store: NpzStore
    client: PrecomputedClient
    model_name: str


def open_npz_inputs(
    gallery_path: Path, queries_path: Path | None, *, dataset_name: str | None = None, model_name: str | None = None
) -> NpzInputs:
    """Validate the files (one-line InputError naming the row) and describe them for the loop.
    Without queries it is intra retrieval over the gallery (every labelled image queries the rest)."""
    gallery = load_npz(gallery_path, "gallery")
    validate_set(gallery, labels_required=False)
    records = [ImageRecord(i, i, label, Split.GALLERY) for i, label in zip(gallery.ids, gallery.labels)]
    if queries_path is None:
        setup = Setup.INTRA
        if not any(gallery.labels):
            raise InputError("gallery: no row has a label, so intra retrieval has no queries")
    else:
        setup = Setup.INTER
        queries = load_npz(queries_path, "queries")
        validate_set(queries, labels_required=True)
        if queries.vectors.shape[1] != gallery.vectors.shape[1]:
            raise InputError(
                f"dimension mismatch: queries have {queries.vectors.shape[1]} dims, gallery has {gallery.vectors.shape[1]}"
            )
        # Inter splits must not overlap: a query also in the gallery would be its own top match.
        gallery_ids = set(gallery.ids)
        shared = next((i for i in queries.ids if i in gallery_ids), None)
        if shared is not None:
            raise InputError(
                f"queries: id {shared!r} is also a gallery id; inter retrieval needs disjoint splits "
                "(omit --queries for intra retrieval over one set)"
            )
        records += [ImageRecord(i, i, label, Split.QUERY) for i, label in zip(queries.ids, queries.labels)]
    name = dataset_name or gallery_path.name.removesuffix(".npz")
    dataset = PrecomputedDataset(
        name=name,
        setup=setup,
        gallery_type=GalleryType.OPEN if "" in gallery.labels else GalleryType.CLOSED,
        records=records,
        description="precomputed embeddings",
        source={"format": "npz", "gallery": str(gallery_path), "queries": str(queries_path) if queries_path else ""},
    )
    store = NpzStore.single(gallery_path, queries_path)
    fingerprint = store.collection_fingerprint(name) or ""
    info = ModelInfo(
        name=model_name or name,
        dim=int(gallery.vectors.shape[1]),
        preprocessing="unknown: embeddings computed before scoring",
        normalized=False,
        revision="",
        max_batch=0,
        backend="precomputed",
        fingerprint=fingerprint,
    )
    return NpzInputs(dataset=dataset, store=store, client=PrecomputedClient(info), model_name=model_name or name)
