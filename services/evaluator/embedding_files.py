"""The embedding directory format: precomputed vectors at any scale, as `vsbench score` reads them
and `vsbench embed` writes them (docs/results.md, "Precomputed embeddings").

One split (the gallery, or the queries) is a directory holding
- `embeddings.npy`: N x D, float16 or float32, read memory-mapped (never loaded whole);
- `items.parquet`: columns `id` (unique strings) and `label` ("" or null = distractor), row i
  describing row i of the matrix; vsbench also writes `vsbench.fingerprint` (and the model and
  dataset names) into the file's key-value metadata.
An .npz with `embeddings`, `ids`, `labels` is read into the same EmbeddingSplit (its embeddings
memory-mapped too, unless compressed).

Parts: a split directory may instead hold `part-*/` subdirectories, each a complete embedding
directory (what `vsbench embed --part i/N` writes, one per pod of an Indexed Job). `read_split`
concatenates them in name order into one split whose vectors are a `PartsMatrix`: each part stays
memory-mapped, and nothing is copied unless a slice spans parts. Parts must agree on dim, dtype and
model fingerprint, and an id may appear in only one part.

The VectorStore that writes and serves these directories is stores/embedding_dir.py.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.evaluator import arrow_kernels as ak
from services.evaluator.datasets.columns import string_column
from services.evaluator.stores._common import StoreError

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.parquet"
FINGERPRINT_KEY = b"vsbench.fingerprint"
MODEL_KEY = b"vsbench.model"
DATASET_KEY = b"vsbench.dataset"
SPLIT_DIRS = {"gallery": "gallery", "query": "queries"}
PART_PREFIX = "part-"
# Rows per block handed to the search: 64k x 1024-d float16 is 128 MiB of the memmap.
BLOCK_ROWS = 65536
EMBEDDING_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


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
    """One split on disk: vectors (a read-only memmap; an array for a compressed .npz) with
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
        table = pq.ParquetFile(items_file).read()  # one file: read_table would load pyarrow.dataset (~10 ms)
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
    vectors = _stored_member(path, "embeddings")
    return _checked(EmbeddingSplit(
        path=path, vectors=data["embeddings"] if vectors is None else vectors, ids=ids, labels=labels,
        fingerprint=str(data["fingerprint"]) if "fingerprint" in files else "",
    ), role)


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip member's local header: signature ... name and extra lengths


def _stored_member(path: Path, name: str) -> np.ndarray | None:
    """The .npz member `name`, memory-mapped like a directory's embeddings.npy, when it is stored
    uncompressed (np.savez). np.load would copy it into memory through zipfile, checking its
    CRC-32 on the way: ~0.5 s and 245 MB of `vsbench score` on a 60k x 1024 float32 gallery.
    None (np.load reads it) when it is compressed or its .npy header is not version 1 or 2."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # deflated, or encrypted
            return None
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                return None
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            handle.seek(start)
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                return None
            npy = np.lib.format
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            offset = handle.tell()
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, struct.error):
        return None  # np.load reports what is wrong with the file
    size = dtype.itemsize * int(np.prod(shape))
    if dtype.hasobject or size == 0 or offset + size > start + info.file_size:
        return None
    try:
        order = "F" if fortran_order else "C"
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    except (OSError, ValueError):  # shorter than its header says
        return None


def _checked(split: EmbeddingSplit, role: str) -> EmbeddingSplit:
    vectors = split.vectors
    if vectors.ndim != 2:
        raise StoreError(f"{role}: embeddings must be 2-D (N x D), got shape {vectors.shape}")
    if vectors.dtype not in EMBEDDING_DTYPES:
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
    """(id, first row, second row) of the first repeated id in row order, or None (by a stable
    sort: arrow_kernels.sorted_repeats)."""
    if len(ids) < 2:
        return None
    rows, repeats = ak.sorted_repeats(ids)
    pairs = np.flatnonzero(repeats)
    if not pairs.size:
        return None
    # The pair whose second row comes first is what a scan in row order meets first; within its
    # group of equal ids the element sorted before it is the group's earlier row.
    pick = pairs[np.argmin(rows[pairs + 1])]
    return ids[int(rows[pick])].as_py(), int(rows[pick]), int(rows[pick + 1])


def write_split(path: Path, vectors: np.ndarray, ids: Sequence[str], labels: Sequence[str],
                fingerprint: str = "", model: str = "") -> None:
    """One split in memory to an embedding directory (tests, small conversions); `EmbeddingDirStore`
    writes large ones a chunk at a time."""
    with SplitWriter(Path(path), len(ids), int(np.asarray(vectors).shape[1]), np.asarray(vectors).dtype,
                      fingerprint, model) as writer:
        writer.append(np.asarray(vectors), pa.array(list(ids), pa.string()), pa.array(list(labels), pa.string()))


class SplitWriter:
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

    def __enter__(self) -> "SplitWriter":
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


