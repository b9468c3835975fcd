"""NPZ files as a VectorStore: the format `vsbench score` reads and `vsbench embed` writes.

A collection is two files, `<stem>.npz` (the gallery split; everything for an intra dataset) and
`<stem>.queries.npz` (the query split, only when there is one), with the keys `embeddings`
(N x D float32), `ids`, `labels` ("" = distractor) and, when vsbench wrote them, `fingerprint`.

Writes never rewrite a growing file: each upsert lands as one chunk file in `<stem>.partial/`
(written under a temporary name, then renamed), so a killed `vsbench embed` keeps everything that
arrived and a rerun resumes from it. `close()` (or `flush()`) merges the chunks into the final
files, again through temporary names, and removes the chunk folder.

The search is exact (services.evaluator.search), with the protocol's tie rule; the whole
collection is held in memory while open, which is what the format implies.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.evaluator.stores._common import (
    StoreError,
    check_batch,
    check_fingerprint,
    check_name,
    exact_hits,
    matrix_by_lookup,
)
from services.evaluator.stores.base import Hit, StoredMatrix, StoredVectors

QUERIES_SUFFIX = ".queries.npz"
_PARTIAL_META = "collection.json"


def queries_path_for(gallery_path: Path) -> Path:
    """`emb.npz` -> `emb.queries.npz`: where the query split of a collection lies."""
    gallery_path = Path(gallery_path)
    return gallery_path.with_name(gallery_path.name.removesuffix(".npz") + QUERIES_SUFFIX)


@dataclass
class _Collection:
    dim: int
    fingerprint: str
    ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # image id -> index into ids / vectors
    vectors: list[np.ndarray] = field(default_factory=list)
    payloads: list[dict] = field(default_factory=list)
    unflushed_chunks: int = 0

    def put(self, image_id: str, vector: np.ndarray, payload: dict) -> None:
        row = self.rows.get(image_id)
        if row is None:
            self.rows[image_id] = len(self.ids)
            self.ids.append(image_id)
            self.vectors.append(vector)
            self.payloads.append(payload)
        else:  # upsert replaces
            self.vectors[row] = vector
            self.payloads[row] = payload


class NpzStore:
    """`NpzStore(folder)`: collection NAME lives in `folder/NAME.npz`. `NpzStore.single(path)`:
    one collection, whatever its name, in `path` (+ `path` with .queries.npz): `vsbench embed --out`."""

    def __init__(
        self,
        folder: str | Path,
        *,
        file_for: Callable[[str], Path] | None = None,
        queries_file: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        self._file_for = file_for or (lambda name: self.folder / f"{check_name(name)}.npz")
        self._queries_file = queries_file
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        self._chunk_counter = 0

    @classmethod
    def single(cls, path: str | Path, queries: str | Path | None = None) -> "NpzStore":
        """One collection in `path`, its query split in `queries` (default: path's .queries.npz)."""
        path = Path(path)
        return cls(path.parent, file_for=lambda name: path, queries_file=Path(queries) if queries else None)

    def __repr__(self) -> str:
        return f"NpzStore({str(self.folder)!r})"

    def __enter__(self) -> "NpzStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths ---------------------------------------------------------------------------------
    def gallery_path(self, name: str) -> Path:
        return self._file_for(name)

    def queries_path(self, name: str) -> Path:
        return self._queries_file or queries_path_for(self._file_for(name))

    def _partial_dir(self, name: str) -> Path:
        gallery = self._file_for(name)
        return gallery.with_name(gallery.name.removesuffix(".npz") + ".partial")

    # -- loading -------------------------------------------------------------------------------
    def _load(self, name: str) -> _Collection | None:
        """The collection from disk (final files + unmerged chunks), or None if there is none."""
        if name in self._collections:
            return self._collections[name]
        check_name(name)
        collection: _Collection | None = None
        for path, split in ((self.gallery_path(name), "gallery"), (self.queries_path(name), "query")):
            if not path.is_file():
                continue
            data = _read_npz(path)
            vectors = np.asarray(data["embeddings"], dtype=np.float32)
            if vectors.ndim != 2:
                raise StoreError(f"{path}: embeddings must be 2-D, got shape {vectors.shape}")
            fingerprint = str(data["fingerprint"]) if "fingerprint" in data.files else ""
            if collection is None:
                collection = _Collection(dim=vectors.shape[1], fingerprint=fingerprint)
            elif vectors.shape[1] != collection.dim:
                raise StoreError(f"{path}: {vectors.shape[1]}-d vectors beside {collection.dim}-d ones")
            labels = data["labels"].tolist() if "labels" in data.files else [""] * len(vectors)
            for image_id, label, vector in zip(data["ids"].tolist(), labels, vectors):
                image_id = str(image_id)
                collection.put(image_id, vector, {"image_id": image_id, "product_id": str(label or ""), "split": split})
        partial = self._partial_dir(name)
        meta_file = partial / _PARTIAL_META
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if collection is None:
                collection = _Collection(dim=int(meta["dim"]), fingerprint=str(meta.get("fingerprint", "")))
            elif int(meta["dim"]) != collection.dim or meta.get("fingerprint", "") != collection.fingerprint:
                raise StoreError(
                    f"{partial} holds unmerged vectors of another model than {self.gallery_path(name)}; "
                    "remove one of them"
                )
            for chunk in sorted(partial.glob("chunk-*.npz")):
                data = _read_npz(chunk)
                payloads = json.loads(str(data["payloads"]))
                for image_id, vector, payload in zip(data["ids"].tolist(), data["embeddings"], payloads):
                    collection.put(str(image_id), np.asarray(vector, dtype=np.float32), payload)
                collection.unflushed_chunks += 1
        if collection is not None:
            self._collections[name] = collection
        return collection

    def _require(self, name: str) -> _Collection:
        collection = self._load(name)
        if collection is None:
            raise StoreError(f"collection {name!r} does not exist at {self.gallery_path(name)} (ensure_collection creates it)")
        return collection

    # -- collections ---------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int, fingerprint: str = "") -> None:
        dim = int(dim)
        if dim < 1:
            raise StoreError(f"collection {name!r}: dim must be >= 1, got {dim}")
        with self._lock:
            existing = self._load(name)
            if existing is not None:
                if existing.dim != dim:
                    raise StoreError(
                        f"collection {name!r} in {self.gallery_path(name)} holds {existing.dim}-d vectors, asked for {dim}-d"
                    )
                check_fingerprint(name, existing.fingerprint, fingerprint)
                return
            partial = self._partial_dir(name)
            partial.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(partial / _PARTIAL_META, json.dumps({"dim": dim, "fingerprint": fingerprint}))
            self._collections[name] = _Collection(dim=dim, fingerprint=fingerprint)

    def collection_fingerprint(self, name: str) -> str | None:
        collection = self._load(name)
        return None if collection is None else collection.fingerprint

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._collections.pop(name, None)
            for path in (self.gallery_path(name), self.queries_path(name)):
                path.unlink(missing_ok=True)
            shutil.rmtree(self._partial_dir(name), ignore_errors=True)

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, name: str, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        with self._lock:
            collection = self._require(name)
            ids, arr, full = check_batch(name, collection.dim, image_ids, vectors, payloads)
            if not ids:
                return
            partial = self._partial_dir(name)
            if not (partial / _PARTIAL_META).is_file():  # collection loaded from final files only
                partial.mkdir(parents=True, exist_ok=True)
                _atomic_write_text(
                    partial / _PARTIAL_META, json.dumps({"dim": collection.dim, "fingerprint": collection.fingerprint})
                )
            self._chunk_counter += 1
            chunk = partial / f"chunk-{os.getpid()}-{self._chunk_counter:08d}.npz"
            _atomic_savez(chunk, embeddings=arr, ids=np.array(ids), payloads=np.array(json.dumps(full)))
            for image_id, row, payload in zip(ids, arr, full):
                collection.put(image_id, row, payload)
            collection.unflushed_chunks += 1

    def flush(self) -> None:
        """Merge every collection's chunks into its final .npz files."""
        with self._lock:
            for name, collection in self._collections.items():
                if collection.unflushed_chunks:
                    self._write_final(name, collection)

    def _write_final(self, name: str, collection: _Collection) -> None:
        vectors = np.stack(collection.vectors).astype(np.float32) if collection.vectors else np.zeros((0, collection.dim), np.float32)
        splits = np.array([p.get("split", "gallery") for p in collection.payloads])
        parts = {self.gallery_path(name): splits != "query", self.queries_path(name): splits == "query"}
        for path, mask in parts.items():
            rows = np.flatnonzero(mask)
            if rows.size == 0:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_savez(
                path,
                embeddings=vectors[rows],
                ids=np.array([collection.ids[i] for i in rows]),
                labels=np.array([collection.payloads[i].get("product_id", "") or "" for i in rows]),
                fingerprint=np.array(collection.fingerprint),
            )
        shutil.rmtree(self._partial_dir(name), ignore_errors=True)
        collection.unflushed_chunks = 0

    # -- reads ---------------------------------------------------------------------------------
    def existing_ids(self, name: str, image_ids: Sequence[str]) -> set[str]:
        collection = self._require(name)
        return {str(i) for i in image_ids if str(i) in collection.rows}

    def fetch(self, name: str, image_ids: Sequence[str], batch_size: int = 4096) -> Iterator[StoredVectors]:
        collection = self._require(name)
        asked = [str(i) for i in image_ids]
        batch_size = max(1, int(batch_size))
        # Blocks follow the asked ids (as the Qdrant stores read them), missing ids skipped.
        for start in range(0, len(asked), batch_size):
            block = [i for i in asked[start : start + batch_size] if i in collection.rows]
            if not block:
                continue
            rows = [collection.rows[i] for i in block]
            yield StoredVectors(
                image_ids=block,
                vectors=np.stack([collection.vectors[r] for r in rows]).astype(np.float32, copy=False),
                payloads=[dict(collection.payloads[r]) for r in rows],
            )

    def search_exact(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        split: str | None = "gallery",
        exclude_ids: Sequence[str | None] | None = None,
        tie_order: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Exact dot-product search; equal scores by `tie_order` (default: image id), as the
        Qdrant stores do."""
        collection = self._require(name)
        candidates = [i for i, p in zip(collection.ids, collection.payloads) if split is None or p.get("split") == split]
        return exact_hits(
            name, collection.dim, queries, k, candidates,
            lambda ids: np.stack([collection.vectors[collection.rows[i]] for i in ids]).astype(np.float32),
            exclude_ids, tie_order,
        )

    def matrix(self, name: str, image_ids) -> StoredMatrix:
        return matrix_by_lookup(self, name, image_ids)

    def count(self, name: str) -> int:
        return len(self._require(name).ids)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._collections.clear()


def _read_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a damaged file
        raise StoreError(f"{path} is not a readable .npz: {exc}") from None


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    # np.savez appends .npz to names without it; the temporary name keeps that suffix.
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
