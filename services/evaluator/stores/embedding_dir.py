"""The embedding directory: precomputed vectors at any scale, as `vsbench score` reads them and
`vsbench embed` writes them (docs/results.md, "Embedding directories").

One split (the gallery, or the queries) is a directory holding
- `embeddings.npy`: N x D, float16 or float32, read memory-mapped (never loaded whole);
- `items.parquet`: columns `id` (unique strings) and `label` ("" or null = distractor), row i
  describing row i of the matrix; vsbench also writes `vsbench.fingerprint` (and the model name)
  into the file's key-value metadata.

`EmbeddingDirStore(path)` is the VectorStore behind `vsbench embed --out DIR`: the collection's
gallery goes to DIR/gallery/, its query split (if any) to DIR/queries/. Writes land as chunk files
in DIR/.partial/ (temporary name, then rename), so a killed embed keeps what arrived; `close()`
merges chunks and any earlier final files into new final files one chunk at a time (bounded
memory, whatever the gallery's size), then removes the chunks. Rows keep arrival order (as the
NPZ format does); an id written twice keeps its last vector.

`EmbeddingDirStore.reader(gallery, queries)` serves splits already on disk (a directory or an
.npz file each) read-only: `matrix()` over the whole gallery in file order is the memmap itself,
sliced; everything else goes through an id -> row map built on first use.

Parts: a split directory may instead hold `part-*/` subdirectories, each a complete embedding
directory (what `vsbench embed --part i/N` writes, one per pod of an Indexed Job). `read_split`
concatenates them in name order into one split whose vectors are a `PartsMatrix`: each part stays
memory-mapped, and nothing is copied unless a slice spans parts. Parts must agree on dim, dtype and
model fingerprint, and an id may appear in only one part.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.evaluator.datasets.columns import string_column
from services.evaluator.stores._common import (
    StoreError,
    check_batch,
    check_fingerprint,
    check_name,
    check_queries,
    matrix_by_lookup,
)
from services.evaluator.stores.base import Hit, StoredMatrix, StoredVectors

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.parquet"
FINGERPRINT_KEY = b"vsbench.fingerprint"
MODEL_KEY = b"vsbench.model"
DATASET_KEY = b"vsbench.dataset"
SPLIT_DIRS = {"gallery": "gallery", "query": "queries"}
_SPLIT_CODES = {"gallery": 0, "query": 1}  # a byte per row, not a string
_PARTIAL = ".partial"
PART_PREFIX = "part-"
_PARTIAL_META = "collection.json"
# Rows per block handed to the search: 64k x 1024-d float16 is 128 MiB of the memmap.
BLOCK_ROWS = 65536
_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


class PartsMatrix:
    """A read-only N x D matrix over several (memory-mapped) matrices stacked in order: the
    vectors of a split written in parts. Row slices are views of one part's memmap unless they
    span parts (then a copy of just those rows); integer or boolean indexing gathers a copy."""

    ndim = 2

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("PartsMatrix needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [int(p.shape[0]) for p in self.parts])
        self.shape = (int(self.offsets[-1]), int(self.parts[0].shape[1]))
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"PartsMatrix({len(self.parts)} parts, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            row = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"row {int(key)} out of range for {self.shape[0]} rows")
            part = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return self.parts[part][row - self.offsets[part]]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._range(start, max(start, stop))
            return self.gather(np.arange(start, stop, step))
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (self.shape[0],):
                raise IndexError(f"boolean index of shape {rows.shape} for {self.shape[0]} rows")
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise IndexError(f"PartsMatrix takes an int, a slice, or a 1-D integer/boolean index, not {key!r}")
        return self.gather(rows)

    def _range(self, start: int, stop: int) -> np.ndarray:
        pieces = [self.parts[p][max(start, lo) - lo : min(stop, hi) - lo]
                  for p, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])) if lo < stop and hi > start]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        return np.concatenate(pieces)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed, negative counted from the end), a copy."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(owner):
            mask = owner == part
            out[mask] = self.parts[part][rows[mask] - self.offsets[part]]
        return out

    def blocks(self, start: int = 0, stop: int | None = None, rows: int = 0) -> Iterator[np.ndarray]:
        """Rows [start, stop) as views of the parts' memmaps, at most `rows` per block (0: a part)."""
        stop = self.shape[0] if stop is None else stop
        for p, (lo, hi) in enumerate(zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())):
            a, b = max(start, lo), min(stop, hi)
            step = rows or max(1, b - a)
            for s in range(a, b, step):
                yield self.parts[p][s - lo : min(b, s + step) - lo]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self._range(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype)


def matrix_blocks(vectors: "np.ndarray | PartsMatrix", start: int = 0, stop: int | None = None,
                  rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
    """Rows [start, stop) of a split's vectors in blocks of at most `rows`, never spanning parts."""
    if isinstance(vectors, PartsMatrix):
        yield from vectors.blocks(start, stop, rows)
        return
    stop = vectors.shape[0] if stop is None else stop
    for s in range(start, stop, rows):
        yield vectors[s : min(stop, s + rows)]


@dataclass(frozen=True)
class EmbeddingSplit:
    """One split on disk: vectors (a read-only memmap for a directory, an array for an .npz) with
    ids and labels as Arrow string columns."""

    path: Path
    vectors: "np.ndarray | PartsMatrix"
    ids: pa.Array
    labels: pa.Array
    fingerprint: str = ""
    # What vsbench recorded when it wrote the directory ("" otherwise): the payload fields
    # every point of a collection shares.
    dataset: str = ""
    model: str = ""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def parts(self) -> int:
        """How many part directories the split was read from (1 for a single directory or .npz)."""
        return len(self.vectors.parts) if isinstance(self.vectors, PartsMatrix) else 1


def part_dirs(path: Path) -> list[Path]:
    """The `part-*` embedding directories under `path`, in name order (the concatenation order)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if p.name.startswith(PART_PREFIX) and p.is_dir()), key=lambda p: p.name)


def part_name(index: int) -> str:
    """part-00003: zero-padded so that name order is index order."""
    return f"{PART_PREFIX}{index:05d}"


def is_embedding_dir(path: Path) -> bool:
    """A single embedding directory, or one of parts (`part-*/` subdirectories)."""
    path = Path(path)
    return path.is_dir() and ((path / EMBEDDINGS_FILE).is_file() or bool(part_dirs(path)))


def read_split(path: Path, role: str) -> EmbeddingSplit:
    """A directory (embeddings.npy + items.parquet) or an .npz (embeddings, ids, labels), checked:
    StoreError with one line naming the file and the problem."""
    path = Path(path)
    if path.is_dir():
        parts = part_dirs(path)
        if not parts:
            return _read_dir(path, role)
        if (path / EMBEDDINGS_FILE).exists():
            raise StoreError(f"{role} directory {path} holds both {EMBEDDINGS_FILE} and part-*/ directories; "
                             "keep one layout")
        return _read_parts(path, parts, role)
    if not path.exists():
        raise StoreError(f"{role} {path} does not exist")
    return _read_npz(path, role)


def _read_dir(path: Path, role: str) -> EmbeddingSplit:
    matrix_file, items_file = path / EMBEDDINGS_FILE, path / ITEMS_FILE
    for needed in (matrix_file, items_file):
        if not needed.is_file():
            raise StoreError(f"{role} directory {path} lacks {needed.name} (an embedding directory holds "
                             f"{EMBEDDINGS_FILE} and {ITEMS_FILE})")
    try:
        vectors = np.load(matrix_file, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a damaged header
        raise StoreError(f"{matrix_file} is not a readable .npy: {exc}") from None
    try:
        table = pq.read_table(items_file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise StoreError(f"{items_file} is not a readable Parquet file: {exc}") from None
    absent = [c for c in ("id", "label") if c not in table.column_names]
    if absent:
        raise StoreError(f"{items_file} lacks column(s) {', '.join(absent)} (has {', '.join(table.column_names)})")
    metadata = table.schema.metadata or {}
    ids = table.column("id")
    if ids.null_count:
        raise StoreError(f"{items_file}: {ids.null_count} rows have no id")
    return _checked(EmbeddingSplit(
        path=path, vectors=vectors, ids=string_column(ids), labels=string_column(table.column("label")),
        fingerprint=metadata.get(FINGERPRINT_KEY, b"").decode("utf-8", "replace"),
        dataset=metadata.get(DATASET_KEY, b"").decode("utf-8", "replace"),
        model=metadata.get(MODEL_KEY, b"").decode("utf-8", "replace"),
    ), role)


def _read_parts(path: Path, parts: list[Path], role: str) -> EmbeddingSplit:
    """One split from its part directories, concatenated in name order; each part stays mapped."""
    splits = [_read_dir(part, role) for part in parts]
    first = splits[0]
    for part, split in zip(parts[1:], splits[1:]):
        for what, mine, theirs in (("dim", split.dim, first.dim), ("dtype", split.vectors.dtype, first.vectors.dtype),
                                   ("model fingerprint", split.fingerprint, first.fingerprint)):
            if mine != theirs:
                raise StoreError(f"{role} {path}: {part.name} has {what} {mine or '(none)'}, {parts[0].name} "
                                 f"has {theirs or '(none)'}; all parts of a split come from one model")
    ids = pa.concat_arrays([s.ids for s in splits])
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        offsets = np.cumsum([0] + [len(s.ids) for s in splits])
        where = [f"{parts[p].name} row {row - offsets[p]}"
                 for row in duplicate[1:] for p in [int(np.searchsorted(offsets, row, side="right")) - 1]]
        raise StoreError(f"{role} {path}: id {duplicate[0]!r} appears twice ({where[0]} and {where[1]})")
    return EmbeddingSplit(
        path=path, vectors=PartsMatrix([s.vectors for s in splits]), ids=ids,
        labels=pa.concat_arrays([s.labels for s in splits]), fingerprint=first.fingerprint,
        dataset=next((s.dataset for s in splits if s.dataset), ""), model=next((s.model for s in splits if s.model), ""),
    )


def _read_npz(path: Path, role: str) -> EmbeddingSplit:
    try:
        data = np.load(path, allow_pickle=False)
        files = data.files
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise StoreError(f"{role} file {path} is not a readable .npz: {exc}") from None
    missing = [key for key in ("embeddings", "ids", "labels") if key not in files]
    if missing:
        raise StoreError(f"{role} file {path} lacks key(s) {', '.join(missing)} (has {', '.join(files)})")
    try:
        ids, labels = string_column(data["ids"]), string_column(data["labels"])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"{role} file {path}: ids and labels must be strings: {exc}") from None
    return _checked(EmbeddingSplit(
        path=path, vectors=data["embeddings"], ids=ids, labels=labels,
        fingerprint=str(data["fingerprint"]) if "fingerprint" in files else "",
    ), role)


def _checked(split: EmbeddingSplit, role: str) -> EmbeddingSplit:
    vectors = split.vectors
    if vectors.ndim != 2:
        raise StoreError(f"{role}: embeddings must be 2-D (N x D), got shape {vectors.shape}")
    if vectors.dtype not in _DTYPES:
        raise StoreError(f"{role}: embeddings must be float16 or float32, got {vectors.dtype}")
    n = vectors.shape[0]
    if n == 0 or vectors.shape[1] == 0:
        raise StoreError(f"{role}: no embeddings (shape {vectors.shape})")
    if len(split.ids) != n or len(split.labels) != n:
        raise StoreError(
            f"{role}: mismatched lengths: {n} embeddings, {len(split.ids)} ids, {len(split.labels)} labels"
        )
    duplicate = first_duplicate(split.ids)
    if duplicate is not None:
        raise StoreError(f"{role}: duplicate id {duplicate[0]!r} at rows {duplicate[1]} and {duplicate[2]}")
    return split


def first_duplicate(ids: pa.Array) -> tuple[str, int, int] | None:
    """(id, first row, second row) of the first repeated id in row order, or None.

    By a stable sort, not a hash set: at 5M ids Arrow's hash-based distinct count took 6.6 s and
    kept 1.3 GiB, the sort takes 0.6 s and a copy of the ids (bench/scale.py --via-cli)."""
    import pyarrow.compute as pc

    if len(ids) < 2:
        return None
    order = pc.sort_indices(ids)  # stable: equal ids stay in row order
    ranked = ids.take(order)
    same = pc.equal(ranked.slice(0, len(ids) - 1), ranked.slice(1))
    if not pc.any(same).as_py():
        return None
    pairs = np.flatnonzero(same.to_numpy(zero_copy_only=False))
    rows = order.to_numpy()
    # The pair whose second row comes first is what a scan in row order meets first; within its
    # group of equal ids the element sorted before it is the group's earlier row.
    pick = pairs[np.argmin(rows[pairs + 1])]
    return ids[int(rows[pick])].as_py(), int(rows[pick]), int(rows[pick + 1])


def write_split(path: Path, vectors: np.ndarray, ids: Sequence[str], labels: Sequence[str],
                fingerprint: str = "", model: str = "") -> None:
    """One split in memory to an embedding directory (tests, small conversions); `EmbeddingDirStore`
    writes large ones a chunk at a time."""
    with _SplitWriter(Path(path), len(ids), int(np.asarray(vectors).shape[1]), np.asarray(vectors).dtype,
                      fingerprint, model) as writer:
        writer.append(np.asarray(vectors), pa.array(list(ids), pa.string()), pa.array(list(labels), pa.string()))


class _SplitWriter:
    """Writes DIR/embeddings.npy and DIR/items.parquet under temporary names, rows appended in
    order, and renames both into place on success."""

    def __init__(self, path: Path, rows: int, dim: int, dtype, fingerprint: str, model: str, dataset: str = "") -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.matrix_tmp = path / f".{EMBEDDINGS_FILE}.tmp"
        self.items_tmp = path / f".{ITEMS_FILE}.tmp"
        self.matrix = np.lib.format.open_memmap(self.matrix_tmp, mode="w+", dtype=np.dtype(dtype), shape=(rows, dim))
        schema = pa.schema([("id", pa.string()), ("label", pa.string())],
                           metadata={FINGERPRINT_KEY: fingerprint.encode(), MODEL_KEY: model.encode(),
                                     DATASET_KEY: dataset.encode()})
        self.items = pq.ParquetWriter(self.items_tmp, schema)
        self.schema = schema
        self.row = 0

    def append(self, vectors: np.ndarray, ids: pa.Array, labels: pa.Array) -> None:
        n = len(ids)
        self.matrix[self.row : self.row + n] = vectors
        self.items.write_table(pa.Table.from_arrays([ids, labels], schema=self.schema))
        self.row += n

    def __enter__(self) -> "_SplitWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.items.close()
        self.matrix.flush()
        del self.matrix
        if exc_type is not None:
            self.matrix_tmp.unlink(missing_ok=True)
            self.items_tmp.unlink(missing_ok=True)
            return
        os.replace(self.matrix_tmp, self.path / EMBEDDINGS_FILE)
        os.replace(self.items_tmp, self.path / ITEMS_FILE)


@dataclass
class _Segment:
    """Rows from one source, in order: a final split file or one chunk. `split` per row."""

    vectors: np.ndarray
    ids: pa.Array
    labels: pa.Array
    splits: np.ndarray  # uint8 per row: _SPLIT_CODES


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
        if self.dtype not in _DTYPES:
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
                data = np.load(chunk, allow_pickle=False)
                segments.append(_Segment(data["embeddings"], string_column(data["ids"]),
                                         string_column(data["labels"]), data["splits"].astype(np.uint8)))
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
            self._segments.append(_Segment(arr, pa.array(ids, pa.string()), pa.array(labels, pa.string()),
                                           np.array(splits, dtype=np.uint8)))
            if self._rows is not None:
                s = len(self._segments) - 1
                self._rows.update((image_id, (s, r)) for r, image_id in enumerate(ids))
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
        segments = self._segments
        winners = self._row_map()
        rewritten = len(winners) != sum(len(segment.ids) for segment in segments)
        for split, code in _SPLIT_CODES.items():
            # Per segment, the rows of this split that hold the last vector of their id.
            keep = []
            for s, segment in enumerate(segments):
                rows = np.flatnonzero(segment.splits == code)
                if rewritten:
                    ids = segment.ids.to_pylist()
                    rows = np.array([r for r in rows if winners[ids[r]] == (s, r)], dtype=np.int64)
                keep.append(rows)
            total = sum(k.size for k in keep)
            target = self.split_path(split)
            if total == 0:
                shutil.rmtree(target, ignore_errors=True)
                continue
            meta = self._meta
            with _SplitWriter(target, total, meta["dim"], self.dtype, meta["fingerprint"],
                              self.model or meta.get("model", ""), meta.get("dataset", "")) as out:
                for segment, rows in zip(segments, keep):
                    for start in range(0, rows.size, BLOCK_ROWS):
                        part = rows[start : start + BLOCK_ROWS]
                        take = pa.array(part)
                        out.append(np.asarray(segment.vectors[part]), segment.ids.take(take), segment.labels.take(take))
        shutil.rmtree(self._partial, ignore_errors=True)
        self._segments, self._rows, self._unflushed = None, None, 0
        self._load()  # the final files, memory-mapped

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
                vectors=np.stack([segments[s].vectors[r] for s, r in where]).astype(np.float32),
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
        from services.evaluator.search import exact_topk

        segments, rows = self._require(), self._row_map()
        q, excludes = check_queries(name, self._meta["dim"], queries, k, exclude_ids)
        wanted = None if split is None else _SPLIT_CODES.get(split, -1)
        candidates = [i for i, (s, r) in rows.items() if wanted is None or segments[s].splits[r] == wanted]
        candidates.sort(key=(lambda i: (tie_order.get(i, len(tie_order)), i)) if tie_order is not None else None)
        if not candidates:
            return [[] for _ in range(q.shape[0])]
        position = {image_id: n for n, image_id in enumerate(candidates)}
        gallery = np.stack([segments[s].vectors[r] for s, r in (rows[i] for i in candidates)]).astype(np.float32)
        exclude = np.array([position.get(ex, -1) if ex is not None else -1 for ex in excludes], dtype=np.int64)
        topk = exact_topk(q, gallery, min(k, len(candidates)), exclude=exclude, engine="numpy")
        return [
            [Hit(candidates[int(i)], float(s)) for i, s in zip(topk.indices[row], topk.scores[row]) if i >= 0]
            for row in range(q.shape[0])
        ]

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
