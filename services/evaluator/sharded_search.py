"""Exact search split over processes or pods, merged into exactly the single-process result.

Shard i of N scores every query against its contiguous slice of the gallery, rows
[N_g * i // N, N_g * (i + 1) // N), and writes its top-k candidates (global gallery positions and
scores) to an .npz. The global top-k of a query is contained in the union of the shards' top-k
lists, so the merge ranks that union with the same tie rule (score descending, then gallery
position ascending) and returns what `exact_topk` over the whole gallery returns. An intra
self-match exclusion (a query's own gallery position) is applied by the shard holding that row.

Each shard file records what it was computed from (query checksum, gallery shape, k, the exclusion's
checksum, whether vectors were L2-normalised), and the merge refuses files that disagree, miss a
shard or repeat one. The merged top-k file keeps that record, so `vsbench score --ranked` can
check it was computed from the very files it scores (`read_ranked`, `Ranked.topk_for`).

Inputs are bare .npy matrices (raw dot products) or embedding directories (embedding_files.py,
parts included: the shard's rows are over the concatenated gallery), searched as `vsbench score`
searches them: L2-normalised, and without queries every labelled gallery row queries the rest.

Within one process the same split serves several GPUs: `search_devices` streams shard i to
devices[i], `DeviceShards` keeps each shard resident (float16 by default), one thread and stream
per device, merged by the same rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.common.errors import VsbenchError
from services.evaluator import topk_keys
from services.evaluator.search import DEFAULT_TILE_BYTES, Engine, TopK, exact_topk

SHARD_FORMAT = "vsbench-search-shard/1"
TOPK_FORMAT = "vsbench-topk/1"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(VsbenchError, ValueError):
    """A shard argument, an input matrix or a shard file that cannot be used as given."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> "Shard":
        """'i/N' with 0 <= i < N."""
        match = _SHARD.match(text)
        if not match:
            raise ShardError(f"{option} takes i/N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise ShardError(f"{option} {text!r}: need 0 <= i < N and N >= 1")
        return cls(index, count)

    def bounds(self, n_rows: int) -> tuple[int, int]:
        """The contiguous gallery rows [start, stop) this shard scores."""
        return n_rows * self.index // self.count, n_rows * (self.index + 1) // self.count


def load_matrix(path: Path, what: str) -> np.ndarray:
    """A 2-D float .npy, memory-mapped (a gallery larger than memory streams from disk)."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ShardError(f"{what} {path}: not a readable .npy file ({exc})") from None
    if matrix.ndim != 2 or matrix.dtype not in (np.float16, np.float32, np.float64):
        raise ShardError(f"{what} {path}: need a 2-D float16/float32/float64 array, got {matrix.dtype} {matrix.shape}")
    return matrix


def load_exclude(path: Path) -> np.ndarray:
    """A 1-D integer .npy of gallery positions (-1: nothing to exclude for that query)."""
    try:
        exclude = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ShardError(f"exclude {path}: not a readable .npy file ({exc})") from None
    if exclude.ndim != 1 or exclude.dtype.kind not in "iu":
        raise ShardError(f"exclude {path}: need a 1-D integer array, got {exclude.dtype} {exclude.shape}")
    return exclude.astype(np.int64)


@dataclass(frozen=True)
class SearchInputs:
    """What one search shard reads: queries (float32, in memory), the gallery (memory-mapped),
    the exclusion, and whether the search normalises (embedding directories) or not (.npy)."""

    queries: np.ndarray
    gallery: object  # np.ndarray / memmap / PartsMatrix
    exclude: np.ndarray | None
    normalize: bool


def open_search_inputs(queries: Path | None, gallery: Path, exclude: Path | None = None) -> SearchInputs:
    """Both .npy matrices (raw dot products, --exclude optional), or both embedding directories
    (parts allowed; searched as `vsbench score` searches them: normalised). A gallery directory
    without queries is intra retrieval: every labelled gallery row queries the rest, its own row
    excluded, the same queries and exclusion `vsbench score --gallery DIR` uses."""
    from services.evaluator.datasets.columns import intra_columns
    from services.evaluator.stores._common import StoreError
    from services.evaluator.embedding_files import read_split

    gallery, queries = Path(gallery), None if queries is None else Path(queries)
    if not gallery.is_dir():
        if queries is None or queries.is_dir():
            raise ShardError("give --queries and --gallery both as .npy files or both as embedding directories "
                             "(a gallery directory alone: intra retrieval)")
        q = load_matrix(queries, "queries")
        return SearchInputs(np.asarray(q, dtype=np.float32), load_matrix(gallery, "gallery"),
                            None if exclude is None else load_exclude(exclude), False)
    if exclude is not None:
        raise ShardError("--exclude goes with .npy inputs; with embedding directories the exclusion follows "
                         "from the split (intra retrieval when --queries is omitted)")
    if queries is not None and not queries.is_dir():
        raise ShardError(f"--queries {queries}: with a gallery directory the queries are an embedding directory too")
    try:
        split = read_split(gallery, "gallery")
        if queries is None:
            positions = intra_columns(split.ids, split.labels).query_positions
            if not positions.size:
                raise ShardError(f"gallery {gallery}: no row has a label, so intra retrieval has no queries")
            q = np.asarray(split.vectors[positions], dtype=np.float32)
            return SearchInputs(q, split.vectors, positions.astype(np.int64), True)
        query_split = read_split(queries, "queries")
    except StoreError as exc:
        raise ShardError(str(exc)) from None
    return SearchInputs(np.asarray(query_split.vectors, dtype=np.float32), split.vectors, None, True)


def _checksum(array: np.ndarray | None) -> str:
    if array is None:
        return ""
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _checked(queries: np.ndarray, gallery, k: int, exclude: np.ndarray | None) -> np.ndarray | None:
    """The checks every sharded search makes first; returns exclude as int64."""
    if k < 1:
        raise ShardError(f"k must be >= 1, got {k}")
    if queries.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ShardError(f"query dim {queries.shape[-1]} != gallery dim {gallery.shape[1]}")
    if gallery.shape[0] > topk_keys.MAX_POSITION + 1:
        raise ShardError(f"gallery longer than {topk_keys.MAX_POSITION + 1:,} rows")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (queries.shape[0],):
            raise ShardError(f"exclude needs one gallery position (or -1) per query: {exclude.shape} for {queries.shape[0]} queries")
    return exclude


def _shard_topk(queries, start: int, stop: int, k: int, exclude, search) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global positions) of one shard's top-k: `search(local_exclude)` scores the rows
    [start, stop); the shard holding a query's own row applies its exclusion."""
    if stop <= start:  # more shards than gallery rows: an empty shard still answers, with empty slots
        return (np.full((queries.shape[0], k), -np.inf, dtype=np.float32),
                np.full((queries.shape[0], k), -1, dtype=np.int64))
    local_exclude = None
    if exclude is not None:
        local_exclude = np.where((exclude >= start) & (exclude < stop), exclude - start, -1)
    top = search(local_exclude)
    return top.scores, np.where(top.indices >= 0, top.indices + start, -1)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> TopK:
    """The top-k of the union of per-shard (scores, global positions) lists, by the tie rule."""
    keys = np.concatenate([topk_keys.encode(scores, indices) for scores, indices in parts], axis=1)
    scores, indices = topk_keys.decode(topk_keys.smallest(keys, k, ordered=True))
    indices[np.isneginf(scores)] = -1
    return TopK(indices=indices, scores=scores)


def search_shard(
    queries: np.ndarray,
    gallery,
    shard: Shard,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    engine: Engine = "auto",
    normalize: bool = False,
) -> dict[str, np.ndarray]:
    """Top-k of every query within this shard's gallery slice, as the arrays of a shard file.
    `gallery`: an (N, D) array or memmap, or a PartsMatrix (read a part at a time).
    `normalize`: L2-normalise queries and gallery rows (as `vsbench score` does); a gallery row
    that cannot be raises ShardError naming its global position."""
    from services.evaluator.search import UnusableGalleryRow
    from services.evaluator.embedding_files import matrix_blocks

    exclude = _checked(queries, gallery, k, exclude)
    start, stop = shard.bounds(gallery.shape[0])

    def search(local_exclude):
        try:
            return exact_topk(queries, matrix_blocks(gallery, start, stop), k, exclude=local_exclude, engine=engine,
                              normalize=normalize)
        except UnusableGalleryRow as exc:
            raise ShardError(f"gallery row {start + exc.position} {exc.why}") from None

    scores, indices = _shard_topk(queries, start, stop, k, exclude, search)
    return {
        "format": np.array(SHARD_FORMAT),
        "indices": indices,
        "scores": scores,
        "shard_index": np.array(shard.index),
        "shard_count": np.array(shard.count),
        "start": np.array(start),
        "stop": np.array(stop),
        "gallery_rows": np.array(gallery.shape[0]),
        "dim": np.array(gallery.shape[1]),
        "k": np.array(k),
        "queries_sha1": np.array(_checksum(np.asarray(queries, dtype=np.float32))),
        "exclude_sha1": np.array(_checksum(exclude)),
        "normalized": np.array(bool(normalize)),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Written beside the target and renamed: a crashed pod leaves no half file for the merge."""
    path = Path(path)
    scratch = path.with_name(path.name + ".partial.npz")
    np.savez(scratch, **arrays)
    scratch.replace(path)


_AGREE = ("gallery_rows", "dim", "k", "shard_count", "queries_sha1", "exclude_sha1", "normalized")


def _fact(arrays: dict[str, np.ndarray], name: str):
    """A recorded fact as a Python value ("normalized" is absent from files of raw .npy searches
    written before it existed: False)."""
    value = arrays.get(name, np.array(False) if name == "normalized" else None)
    return None if value is None else value.item()


def _read_npz(path: Path, what: str, file_format: str, writer: str) -> dict[str, np.ndarray]:
    """The arrays of a shard or ranking file, refused (ShardError) unless it is one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ShardError(f"{what} {path}: not a readable .npz ({exc})") from None
    if str(arrays.get("format", "")) != file_format:
        raise ShardError(f"{what} {path}: not a {file_format} file (written by `vsbench {writer}`)")
    return arrays


def _read_shard(path: Path) -> dict[str, np.ndarray]:
    return _read_npz(path, "shard file", SHARD_FORMAT, "search-shard")


def shard_files(paths: Sequence[Path]) -> list[Path]:
    """The files named, a folder standing for every part-*.npz in it (a Job's args have no glob)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("part-*.npz"))
            if not found:
                raise ShardError(f"{path}: a folder without part-*.npz shard files")
            files.extend(found)
        else:
            files.append(path)
    return files


def merge_shards(paths: Sequence[Path]) -> TopK:
    """The final top-k from all N shard files of one search (any order)."""
    return merge_shard_files(paths)[0]


def merge_shard_files(paths: Sequence[Path]) -> tuple[TopK, dict[str, np.ndarray]]:
    """The final top-k and what the shards agree it was computed from (for `topk_arrays`)."""
    if not paths:
        raise ShardError("no shard files to merge")
    parts = [(p, _read_shard(p)) for p in shard_files(paths)]
    first_path, first = parts[0]
    for path, part in parts[1:]:
        for name in _AGREE:
            if _fact(part, name) != _fact(first, name):
                raise ShardError(f"{path} and {first_path} come from different searches ({name} differs)")
    count = int(first["shard_count"])
    seen: dict[int, Path] = {}
    for path, part in parts:
        index = int(part["shard_index"])
        if index in seen:
            raise ShardError(f"shard {index}/{count} given twice: {seen[index]} and {path}")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ShardError(f"shards missing from the merge: {', '.join(f'{i}/{count}' for i in missing)}")
    top = merge_topk([(part["scores"], part["indices"]) for _, part in parts], int(first["k"]))
    return top, {name: np.array(_fact(first, name)) for name in _AGREE}


def topk_arrays(top: TopK, facts: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The merged top-k file: indices, scores and (from `merge_shard_files`) the shards' record."""
    return {"format": np.array(TOPK_FORMAT), "indices": top.indices, "scores": top.scores, **(facts or {})}


class RankingMismatch(ShardError):
    """A merged top-k file that was not computed from the files being scored (or not deep enough)."""


@dataclass(frozen=True)
class Ranked:
    """A merged top-k file (`vsbench search-merge --out`) with what it was computed from."""

    path: Path
    top: TopK
    gallery_rows: int
    dim: int
    k: int
    shard_count: int
    queries_sha1: str
    exclude_sha1: str
    normalized: bool

    def topk_for(self, raw_queries: np.ndarray, exclude: np.ndarray | None, gallery_rows: int, dim: int,
                 depth: int) -> TopK:
        """The ranking cut to `depth`, once it is shown to come from these queries (raw float32,
        as stored), this exclusion and a gallery of this shape, searched normalised."""
        name = self.path.name
        if not self.normalized:
            raise RankingMismatch(f"{name} ranks raw dot products (.npy inputs); --ranked needs a search of the "
                                  "embedding directories themselves (normalised, as vsbench score searches)")
        if (self.gallery_rows, self.dim) != (gallery_rows, dim):
            raise RankingMismatch(f"{name} ranks a {self.gallery_rows} x {self.dim} gallery; this gallery is "
                                  f"{gallery_rows} x {dim}")
        if self.queries_sha1 != _checksum(np.asarray(raw_queries, dtype=np.float32)):
            raise RankingMismatch(f"{name} was computed from other queries than these ({raw_queries.shape[0]} "
                                  "queries; the query checksum differs)")
        if self.exclude_sha1 != _checksum(None if exclude is None else np.asarray(exclude, dtype=np.int64)):
            raise RankingMismatch(f"{name} was computed with another self-match exclusion (intra vs inter "
                                  "retrieval, or another gallery order)")
        if self.k < depth:
            raise RankingMismatch(f"{name} holds the top {self.k} per query; scoring needs {depth} "
                                  f"(max of --k and --map-k): search again with --k >= {depth}")
        return TopK(indices=self.top.indices[:, :depth], scores=self.top.scores[:, :depth])


def read_ranked(path: Path) -> Ranked:
    """A merged top-k file, checked for its format and its record (ShardError otherwise)."""
    path = Path(path)
    arrays = _read_npz(path, "ranking", TOPK_FORMAT, "search-merge")
    absent = [name for name in ("indices", "scores", *_AGREE) if name not in arrays]
    if absent:
        raise ShardError(f"ranking {path} lacks {', '.join(absent)} (merged by an older vsbench: merge the shard "
                         "files again)")
    indices, scores = arrays["indices"], arrays["scores"]
    if indices.ndim != 2 or indices.shape != scores.shape or indices.dtype.kind not in "iu":
        raise ShardError(f"ranking {path}: indices {indices.dtype} {indices.shape} and scores {scores.shape} "
                         "must be two equal 2-D arrays")
    return Ranked(
        path=path, top=TopK(indices=indices.astype(np.int64), scores=scores.astype(np.float32)),
        gallery_rows=int(arrays["gallery_rows"]), dim=int(arrays["dim"]), k=int(arrays["k"]),
        shard_count=int(arrays["shard_count"]), queries_sha1=str(arrays["queries_sha1"]),
        exclude_sha1=str(arrays["exclude_sha1"]), normalized=bool(arrays["normalized"]),
    )


# --- several devices in one process -------------------------------------------------------------


@contextlib.contextmanager
def _device_stream(device: str):
    """On a CUDA device: that device current, and a stream of its own that first waits for the
    device's default stream (where a DeviceGallery's upload ran), so shards overlap."""
    import torch

    place = torch.device(device)
    if place.type != "cuda":
        yield
        return
    with torch.cuda.device(place):
        stream = torch.cuda.Stream(place)
        stream.wait_stream(torch.cuda.current_stream(place))
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()


def _on_devices(devices: Sequence[str], fn) -> list:
    """fn(i) for each device index, one thread per device (torch and numpy release the GIL in the
    work that costs), results in device order; the first failure is raised."""
    if not devices:
        raise ShardError("no devices to search on")

    def run(i: int):
        with _device_stream(devices[i]):
            return fn(i)

    with ThreadPoolExecutor(len(devices), thread_name_prefix="device-shard") as pool:
        return list(pool.map(run, range(len(devices))))


def search_devices(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    devices: Sequence[str],
    *,
    exclude: np.ndarray | None = None,
    normalize: bool = False,
    device_dtype: str = "float32",
    engine: Engine = "torch",
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> TopK:
    """exact_topk over a gallery split into len(devices) contiguous shards (Shard(i, N).bounds),
    shard i streamed to devices[i] in its own thread, merged by the tie rule: the same ids and
    scores as one exact_topk over the whole gallery at the same device_dtype. A device may repeat
    (["cpu", "cpu"] runs this path without a GPU)."""
    exclude = _checked(queries, gallery, k, exclude)
    count = len(devices)

    def one(i: int):
        start, stop = Shard(i, count).bounds(gallery.shape[0])
        return _shard_topk(queries, start, stop, k, exclude, lambda local: exact_topk(
            queries, gallery[start:stop], k, exclude=local, engine=engine, device=devices[i],
            normalize=normalize, device_dtype=device_dtype, tile_bytes=tile_bytes))

    return merge_topk(_on_devices(devices, one), k)


class DeviceShards:
    """A gallery resident on several devices, one contiguous shard (a DeviceGallery) on each,
    uploaded and searched in parallel; `search` gives what one DeviceGallery of the whole gallery
    gives (up to the GEMM's summation order on each device, see bench/gpu_check.py)."""

    def __init__(self, gallery: np.ndarray, devices: Sequence[str], *, dtype: str = "float16",
                 normalize: bool = False) -> None:
        from services.evaluator.device_gallery import DeviceGallery

        self.devices, self.rows, self.dim = list(devices), gallery.shape[0], gallery.shape[1]
        self.bounds = [Shard(i, len(self.devices)).bounds(self.rows) for i in range(len(self.devices))]

        def upload(i: int) -> DeviceGallery:
            start, stop = self.bounds[i]
            return DeviceGallery(gallery[start:stop], self.devices[i], dtype=dtype, normalize=normalize)

        self.shards = _on_devices(self.devices, upload)

    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
               tile_bytes: int = DEFAULT_TILE_BYTES) -> TopK:
        queries = np.asarray(queries, dtype=np.float32)
        exclude = _checked(queries, self, k, exclude)

        def one(i: int):
            start, stop = self.bounds[i]
            shard = self.shards[i]
            return _shard_topk(queries, start, stop, k, exclude,
                               lambda local: shard.search(queries, k, exclude=local, tile_bytes=tile_bytes))

        return merge_topk(_on_devices(self.devices, one), k)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
