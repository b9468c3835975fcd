"""The VectorStore over embedding directories (format: services/evaluator/embedding_files.py).

`EmbeddingDirStore(path)` is the store behind `vsbench embed --out DIR`: the collection's gallery
goes to DIR/gallery/, its query split (if any) to DIR/queries/ (with `part=i`: their part-<i>/
subdirectories). Writes land as chunk files in DIR/.partial/ (temporary name, then rename), so a
killed embed keeps what arrived; `close()` merges chunks and any earlier final files into new final
files one chunk at a time (bounded memory, whatever the gallery's size), then removes the chunks.
Rows keep arrival order (as the NPZ format does); an id written twice keeps its last vector.

`EmbeddingDirStore.reader(gallery, queries)` serves splits already on disk (a directory or an
.npz file each) read-only: `matrix()` over the whole gallery in file order is the memmap itself,
sliced per part; everything else goes through an id -> row map built on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from services.evaluator import arrow_kernels as ak
from services.evaluator.datasets.columns import string_column
from services.evaluator.embedding_files import (
    EMBEDDING_DTYPES,
    BLOCK_ROWS,
    EMBEDDINGS_FILE,
    SPLIT_DIRS,
    EmbeddingSplit,
    SplitWriter,
    is_embedding_dir,
    matrix_blocks,
    part_dirs,
    part_name,
    read_split,
)
from services.evaluator.stores._common import (
    StoreError,
    check_batch,
    check_fingerprint,
    check_name,
    exact_hits,
    matrix_by_lookup,
)
from services.evaluator.stores.base import Hit, StoredMatrix, StoredVectors

_PARTIAL = ".partial"
_PARTIAL_META = "collection.json"
_SPLIT_CODES = {"gallery": 0, "query": 1}  # a byte per row, not a string


@dataclass
class _Segment:
    """Rows from one source, in order: a final split file or one chunk. A chunk's vectors stay in
    its file (`chunk`) and are read when needed, so an embed of any size holds none of them."""

    vectors: np.ndarray | None  # None: read from `chunk` on use
    ids: pa.Array
    labels: pa.Array
    splits: np.ndarray  # uint8 per row: _SPLIT_CODES
    chunk: Path | None = None

    def matrix(self):
        if self.vectors is not None:
            return self.vectors
        with np.load(self.chunk, allow_pickle=False) as data:
            return data["embeddings"]


def _latest_rows(segments: list[_Segment]) -> list[np.ndarray]:
    """Per segment, a mask of the rows holding the last vector written for their id, found by a
    stable sort of all ids (columnar: no Python object per id, whatever the collection's size)."""
    keep = [np.ones(len(segment.ids), dtype=bool) for segment in segments]
    sizes = [len(segment.ids) for segment in segments]
    if sum(sizes) < 2:
        return keep
    ids = pa.concat_arrays([segment.ids for segment in segments])
    order, repeats = ak.sorted_repeats(ids)  # equal ids stay in write order
    superseded = np.flatnonzero(repeats)
    if superseded.size:
        mask = np.concatenate(keep)
        mask[order[superseded]] = False  # a later row of the same id follows it
        keep = np.split(mask, np.cumsum(sizes)[:-1])
    return keep


class EmbeddingDirStore:
    """VectorStore over embedding directories; see the module docstring. One collection, whatever
    its name (as NpzStore.single)."""

    def __init__(self, path: str | Path, *, dtype: str = "float32", model: str = "", part: int | None = None) -> None:
        """`part`: write (and resume) only DIR/gallery/part-<part>/ and DIR/queries/part-<part>/,
        one pod's share of a split written in parts (`vsbench embed --part i/N`)."""
        self.path = Path(path)
        if part is not None and (isinstance(part, bool) or not isinstance(part, int) or part < 0):
            raise StoreError(f"part must be an integer >= 0, got {part!r}")
        self.part = part
        self.dtype = np.dtype(dtype)
        if self.dtype not in EMBEDDING_DTYPES:
            raise StoreError(f"embedding directories hold float16 or float32, not {dtype}")
        self.model = model
        self._splits: dict[str, EmbeddingSplit] | None = None  # set by reader()
        self._lock = threading.Lock()
        self._segments: list[_Segment] | None = None
        self._meta: dict | None = None
        self._rows: dict[str, tuple[int, int]] | None = None  # id -> (segment, row), built on use
        self._chunk_counter = 0
        self._unflushed = 0

    @classmethod
    def reader(cls, gallery: EmbeddingSplit, queries: EmbeddingSplit | None = None) -> "EmbeddingDirStore":
        """Read-only over splits already opened (`read_split`): what `vsbench score` searches."""
        store = cls(gallery.path)
        store._splits = {"gallery": gallery, **({"query": queries} if queries is not None else {})}
        fingerprint = gallery.fingerprint or (queries.fingerprint if queries is not None else "")
        store._meta = {"dim": gallery.dim, "fingerprint": fingerprint, "dataset": gallery.dataset,
                       "model": gallery.model}
        store._segments = [
            _Segment(s.vectors, s.ids, s.labels, np.full(len(s.ids), _SPLIT_CODES[split], dtype=np.uint8))
            for split, s in store._splits.items()
        ]
        return store

    def __repr__(self) -> str:
        return f"EmbeddingDirStore({str(self.path)!r}" + ("" if self.part is None else f", part={self.part}") + ")"

    def __enter__(self) -> "EmbeddingDirStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paths and loading ---------------------------------------------------------------------
    def split_path(self, split: str) -> Path:
        whole = self.path / SPLIT_DIRS[split]
        return whole if self.part is None else whole / part_name(self.part)

    @property
    def _partial(self) -> Path:
        return self.path / (_PARTIAL if self.part is None else f"{_PARTIAL}-{part_name(self.part)}")

    def _check_layout(self) -> None:
        """One layout per split directory: whole files, or part-*/ directories (read_split
        refuses a mix, so writing one would spoil what is there)."""
        for split in SPLIT_DIRS:
            whole = self.path / SPLIT_DIRS[split]
            if self.part is None and part_dirs(whole):
                raise StoreError(f"{whole} holds part-*/ directories (written with --part); "
                                 "write the rest with --part i/N too")
            if self.part is not None and (whole / EMBEDDINGS_FILE).exists():
                raise StoreError(f"{whole} holds a whole split ({EMBEDDINGS_FILE}); --part writes part-*/ "
                                 "directories beside nothing else: use another OUT")

    def _load(self) -> list[_Segment] | None:
        """Final splits + unmerged chunks, or None when there is no collection yet."""
        if self._segments is not None:
            return self._segments
        self._check_layout()
        segments: list[_Segment] = []
        meta: dict | None = None
        for split in SPLIT_DIRS:
            if is_embedding_dir(self.split_path(split)):
                part = read_split(self.split_path(split), split)
                if meta is None:
                    meta = {"dim": part.dim, "fingerprint": part.fingerprint, "dataset": part.dataset,
                            "model": part.model}
                elif part.dim != meta["dim"]:
                    raise StoreError(f"{self.path}: {part.dim}-d queries beside {meta['dim']}-d gallery vectors")
                segments.append(_Segment(part.vectors, part.ids, part.labels, np.full(len(part.ids), _SPLIT_CODES[split], dtype=np.uint8)))
        meta_file = self._partial / _PARTIAL_META
        if meta_file.is_file():
            partial_meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta is not None and (partial_meta["dim"] != meta["dim"] or partial_meta["fingerprint"] != meta["fingerprint"]):
                raise StoreError(f"{self._partial} holds unmerged vectors of another model than {self.path}; "
                                 "remove one of them")
            meta = {**(meta or {}), **partial_meta}
            for chunk in sorted(self._partial.glob("chunk-*.npz")):
                with np.load(chunk, allow_pickle=False) as data:  # ids and labels only: vectors on use
                    segments.append(_Segment(None, string_column(data["ids"]), string_column(data["labels"]),
                                             data["splits"].astype(np.uint8), chunk=chunk))
                self._unflushed += 1
        if meta is None:
            return None
        self._meta, self._segments = meta, segments
        return segments

    def _require(self) -> list[_Segment]:
        segments = self._load()
        if segments is None:
            raise StoreError(f"collection does not exist at {self.path} yet (ensure_collection creates it)")
        return segments

    def _row_map(self) -> dict[str, tuple[int, int]]:
        """id -> (segment, row), later segments winning: one Python entry per stored id, built only
        for lookups by id (resuming an embed, fetch); scoring a whole split does without it."""
        if self._rows is None:
            rows: dict[str, tuple[int, int]] = {}
            for s, segment in enumerate(self._require()):
                for r, image_id in enumerate(segment.ids.to_pylist()):
                    rows[image_id] = (s, r)
            self._rows = rows
        return self._rows

    # -- collections ---------------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int, fingerprint: str = "") -> None:
        check_name(name)  # any valid name: the store holds one collection
        if int(dim) < 1:
            raise StoreError(f"collection {name!r}: dim must be >= 1, got {dim}")
        with self._lock:
            if self._load() is not None:
                if self._meta["dim"] != int(dim):
                    raise StoreError(f"{self.path} holds {self._meta['dim']}-d vectors, asked for {dim}-d")
                check_fingerprint(name, self._meta["fingerprint"], fingerprint)
                return
            self._meta, self._segments = {"dim": int(dim), "fingerprint": fingerprint}, []
            self._write_partial_meta(self._meta)

    def _write_partial_meta(self, meta: dict) -> None:
        self._partial.mkdir(parents=True, exist_ok=True)
        tmp = self._partial / f".{_PARTIAL_META}.tmp"
        tmp.write_text(json.dumps(meta) + "\n", encoding="utf-8")
        os.replace(tmp, self._partial / _PARTIAL_META)

    def collection_fingerprint(self, name: str) -> str | None:
        return None if self._load() is None else self._meta["fingerprint"]

    def drop_collection(self, name: str) -> None:
        self._refuse_if_reader()
        with self._lock:
            for split in SPLIT_DIRS:
                shutil.rmtree(self.split_path(split), ignore_errors=True)
            shutil.rmtree(self._partial, ignore_errors=True)
            self._segments, self._meta, self._rows, self._unflushed = None, None, None, 0

    def _refuse_if_reader(self) -> None:
        if self._splits is not None:
            raise StoreError(f"{self.path}: precomputed embeddings are read-only here")

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, name: str, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        self._refuse_if_reader()
        with self._lock:
            self._require()
            ids, arr, full = check_batch(name, self._meta["dim"], image_ids, vectors, payloads)
            if not ids:
                return
            shared = {key: str(full[0].get(key) or "") for key in ("dataset", "model")}
            if any(shared[key] and shared[key] != self._meta.get(key, "") for key in shared):
                self._meta.update({key: value for key, value in shared.items() if value})
                self._write_partial_meta(self._meta)
            elif not (self._partial / _PARTIAL_META).is_file():  # loaded from final files only
                self._write_partial_meta(self._meta)
            self._chunk_counter += 1
            chunk = self._partial / f"chunk-{os.getpid()}-{self._chunk_counter:08d}.npz"
            labels = [str(p.get("product_id", "") or "") for p in full]
            splits = [_SPLIT_CODES["query" if p.get("split") == "query" else "gallery"] for p in full]
            tmp = chunk.with_name(f".{chunk.name}.tmp.npz")
            np.savez(tmp, embeddings=arr, ids=np.array(ids), labels=np.array(labels),
                     splits=np.array(splits, dtype=np.uint8))
            os.replace(tmp, chunk)
            self._segments.append(_Segment(None, pa.array(ids, pa.string()), pa.array(labels, pa.string()),
                                           np.array(splits, dtype=np.uint8), chunk=chunk))
            self._rows = None  # rebuilt if asked again: an embed asks once, before writing
            self._unflushed += 1

    def flush(self) -> None:
        """Merge the chunks (and earlier final files) into the final split directories."""
        if self._splits is not None:
            return
        with self._lock:
            if self._segments is None or not self._unflushed:
                return
            self._write_final()

    def _write_final(self) -> None:
        """One pass over the segments, each chunk read once, rows appended to the gallery and the
        query writer; an id written more than once keeps its last row."""
        segments = self._segments
        keep = _latest_rows(segments)
        meta = self._meta
        with ExitStack() as stack:
            writers: dict[int, SplitWriter] = {}
            for split, code in _SPLIT_CODES.items():
                target = self.split_path(split)
                total = sum(int(((segment.splits == code) & mask).sum()) for segment, mask in zip(segments, keep))
                if total == 0:
                    shutil.rmtree(target, ignore_errors=True)
                    continue
                writers[code] = stack.enter_context(SplitWriter(
                    target, total, meta["dim"], self.dtype, meta["fingerprint"],
                    self.model or meta.get("model", ""), meta.get("dataset", ""),
                ))
            for segment, mask in zip(segments, keep):
                vectors = segment.matrix()
                for code, writer in writers.items():
                    rows = np.flatnonzero((segment.splits == code) & mask)
                    for start in range(0, rows.size, BLOCK_ROWS):
                        part = rows[start : start + BLOCK_ROWS]
                        take = pa.array(part)
                        writer.append(np.asarray(vectors[part]), segment.ids.take(take), segment.labels.take(take))
        shutil.rmtree(self._partial, ignore_errors=True)
        self._segments, self._rows, self._unflushed = None, None, 0
        self._load()  # the final files, memory-mapped

    def _rows_of(self, segments: list[_Segment], where: Sequence[tuple[int, int]]) -> np.ndarray:
        """float32 vectors at (segment, row) places, each segment read once."""
        out = np.empty((len(where), self._meta["dim"]), dtype=np.float32)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for i, (s, r) in enumerate(where):
            wanted.setdefault(s, []).append((i, r))
        for s, pairs in wanted.items():
            places = np.array(pairs, dtype=np.int64)
            out[places[:, 0]] = segments[s].matrix()[places[:, 1]]
        return out

    # -- reads ---------------------------------------------------------------------------------
    def existing_ids(self, name: str, image_ids: Sequence[str]) -> set[str]:
        rows = self._row_map()
        return {str(i) for i in image_ids if str(i) in rows}

    def fetch(self, name: str, image_ids: Sequence[str], batch_size: int = 4096) -> Iterator[StoredVectors]:
        segments, rows = self._require(), self._row_map()
        asked = [str(i) for i in image_ids]
        batch_size = max(1, int(batch_size))
        # Blocks follow the asked ids (as the other stores read them), missing ids skipped.
        for start in range(0, len(asked), batch_size):
            block = [i for i in asked[start : start + batch_size] if i in rows]
            if not block:
                continue
            where = [rows[i] for i in block]
            yield StoredVectors(
                image_ids=block,
                vectors=self._rows_of(segments, where),
                payloads=[self._payload(segments[s], r) for s, r in where],
            )

    def _payload(self, segment: _Segment, row: int) -> dict:
        payload = {"image_id": segment.ids[row].as_py(), "product_id": segment.labels[row].as_py(),
                   "split": "query" if segment.splits[row] == _SPLIT_CODES["query"] else "gallery"}
        payload.update({key: self._meta[key] for key in ("dataset", "model") if self._meta.get(key)})
        return payload

    def matrix(self, name: str, image_ids: pa.Array) -> StoredMatrix:
        """The whole gallery (or query split) in file order: the memmap in slices, no id map."""
        segments = self._require()
        if not self._unflushed:
            for segment in segments:
                if len(segment.ids) == len(image_ids) and segment.ids.equals(image_ids):
                    vectors = segment.vectors
                    return StoredMatrix(  # a split of parts: blocks per part, each a memmap slice
                        stored=np.ones(len(image_ids), dtype=bool), blocks=lambda: matrix_blocks(vectors),
                    )
        return matrix_by_lookup(self, name, image_ids)

    def search_exact(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        split: str | None = "gallery",
        exclude_ids: Sequence[str | None] | None = None,
        tie_order: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Exact dot-product search over the stored (normalised) vectors; ties by `tie_order`, else id."""
        segments, rows = self._require(), self._row_map()
        wanted = None if split is None else _SPLIT_CODES.get(split, -1)
        candidates = [i for i, (s, r) in rows.items() if wanted is None or segments[s].splits[r] == wanted]
        return exact_hits(
            name, self._meta["dim"], queries, k, candidates,
            lambda ids: self._rows_of(segments, [rows[i] for i in ids]),
            exclude_ids, tie_order,
        )

    def count(self, name: str) -> int:
        return len(self._row_map())

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._segments, self._rows = None, None
            if self._splits is not None:  # a reader keeps its splits
                self._segments = [
                    _Segment(s.vectors, s.ids, s.labels, np.full(len(s.ids), _SPLIT_CODES[split], dtype=np.uint8))
                    for split, s in self._splits.items()
                ]
