"""Precomputed embeddings: the `vsbench score` contract other tools rely on.

Each split (gallery, and optionally queries) is either an embedding directory (embeddings.npy,
memory-mapped, + items.parquet with `id`, `label`; embedding_files.py) or an .npz with the keys
`embeddings` (N x D float), `ids` (N unique strings), `labels` (N strings; "" = distractor).
Without a query split it is intra retrieval over the gallery (every labelled gallery image queries
the rest). Ids, labels and shapes are checked here, columnar; the vectors are checked (finite, not
zero) as the one loop (Evaluation.run) streams them into the search, which L2-normalises like
every other run. Nothing here holds a Python object per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from services.common.errors import VsbenchError
from services.common.types import CallUsage, Embedding, ErrorCode, ImageItem, InputRole, ModelInfo
from services.evaluator import arrow_kernels as ak
from services.evaluator.datasets.base import Dataset, GalleryType, ImageRecord, Setup, Split
from services.evaluator.datasets.columns import DatasetColumns, inter_columns, intra_columns
from services.evaluator.stores._common import StoreError
from services.evaluator.embedding_files import SPLIT_DIRS, EmbeddingSplit, read_split
from services.evaluator.stores.embedding_dir import EmbeddingDirStore


class InputError(VsbenchError, ValueError):
    """Bad precomputed input; the message is one line naming the problem and the row."""


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


@dataclass
class PrecomputedDataset(Dataset):
    """Ids and labels of precomputed files, held as columns: there are no image files and no
    per-image records (`gallery()` / `queries()` build records on demand, for small uses only)."""

    precomputed: DatasetColumns | None = field(default=None, repr=False)

    def columns(self) -> DatasetColumns:
        return self.precomputed

    def gallery(self) -> list[ImageRecord]:
        c = self.precomputed
        labels = ak.take(c.products, np.maximum(c.gallery_codes, 0)).to_pylist()
        return [
            ImageRecord(i, i, label if code >= 0 else "", Split.GALLERY)
            for i, label, code in zip(c.gallery_ids.to_pylist(), labels, c.gallery_codes)
        ]

    def queries(self) -> list[ImageRecord]:
        c = self.precomputed
        split = Split.GALLERY if c.intra else Split.QUERY
        return [ImageRecord(i, i, p, split) for i, p in zip(c.query_ids.to_pylist(), c.query_products())]

    def missing(self, records=None) -> list[ImageRecord]:
        return []

    def validate(self) -> None:
        return None  # checked when opened

    def read(self, record: ImageRecord) -> bytes:
        raise InputError(f"{record.image_id}: precomputed embeddings have no image to read")


@dataclass
class PrecomputedInputs:
    """`vsbench score` inputs made ready for the one loop: a dataset of the files' ids and
    labels, a read-only store over the same files, and the client describing the vectors."""

    dataset: PrecomputedDataset
    store: EmbeddingDirStore
    client: PrecomputedClient
    model_name: str


def open_precomputed_inputs(
    gallery_path: Path, queries_path: Path | None, *, dataset_name: str | None = None, model_name: str | None = None
) -> PrecomputedInputs:
    """Open and check the splits (one-line InputError naming the row) and describe them for the
    loop. Without queries it is intra retrieval over the gallery."""
    gallery = _open(gallery_path, "gallery")
    if queries_path is None:
        setup, queries = Setup.INTRA, None
        if ak.all_true(ak.equal(gallery.labels, "")):
            raise InputError("gallery: no row has a label, so intra retrieval has no queries")
        columns = intra_columns(gallery.ids, gallery.labels)
    else:
        setup, queries = Setup.INTER, _open(queries_path, "queries")
        empty = _first(ak.equal(queries.labels, ""))
        if empty is not None:
            raise InputError(f"queries: row {empty} (id {queries.ids[empty].as_py()!r}) is a query with an empty label")
        if queries.dim != gallery.dim:
            raise InputError(f"dimension mismatch: queries have {queries.dim} dims, gallery has {gallery.dim}")
        # Inter splits must not overlap: a query also in the gallery would be its own top match.
        # (The hash set is built of the queries, the small side, and the gallery probed against it.)
        shared = _first(ak.is_in(gallery.ids, queries.ids))
        if shared is not None:
            raise InputError(
                f"queries: id {gallery.ids[shared].as_py()!r} is also a gallery id; inter retrieval needs disjoint "
                "splits (omit --queries for intra retrieval over one set)"
            )
        columns = inter_columns(gallery.ids, gallery.labels, queries.ids, queries.labels)
    name = dataset_name or _default_name(gallery_path)
    dataset = PrecomputedDataset(
        name=name,
        setup=setup,
        gallery_type=GalleryType.OPEN if (columns.gallery_codes < 0).any() else GalleryType.CLOSED,
        records=[],
        description="precomputed embeddings",
        source={
            "format": "embedding-dir" if gallery_path.is_dir() else "npz",
            "gallery": str(gallery_path), "queries": str(queries_path) if queries_path else "",
            "embeddings_dtype": str(gallery.vectors.dtype),
        },
        precomputed=columns,
    )
    store = EmbeddingDirStore.reader(gallery, queries)
    info = ModelInfo(
        name=model_name or gallery.model or name,
        dim=gallery.dim,
        preprocessing="unknown: embeddings computed before scoring",
        normalized=False,
        revision="",
        max_batch=0,
        backend="precomputed",
        fingerprint=store.collection_fingerprint(name) or "",
    )
    return PrecomputedInputs(dataset=dataset, store=store, client=PrecomputedClient(info),
                             model_name=model_name or name)


def _open(path: Path, role: str) -> EmbeddingSplit:
    try:
        return read_split(path, role)
    except StoreError as exc:
        raise InputError(str(exc)) from None


def _first(mask: pa.Array) -> int | None:
    """Index of the first true value, or None."""
    if not ak.any_true(mask):
        return None
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _default_name(gallery_path: Path) -> str:
    """`emb.npz` -> emb; `out/gallery` (what `vsbench embed --out out` writes) -> out."""
    if gallery_path.is_dir() and gallery_path.name in SPLIT_DIRS.values():
        return gallery_path.resolve().parent.name
    return gallery_path.name.removesuffix(".npz")
