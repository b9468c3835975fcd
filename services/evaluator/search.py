"""Exact top-K by dot product over L2-normalised float32 vectors, memory bounded.

The gallery is scanned in blocks (a numpy array, a np.memmap on disk, or any sequence of blocks),
each (query block x gallery block) tile scored by float32 matrix products into a reused buffer
(one, or one per 32 MiB slice of a gallery block that is cast and normalised on the way).
Selection costs one or two cheap passes over the tile instead of a full partition per row. After
the first gallery block the k-th best kept so far is the threshold, as long as at most 2k entries
per row reach it; otherwise (the first block, or ordered data) the maxima of 2k-4k interleaved
column groups give a score that at least k entries reach (so the top-k are all at or above it, on
any data), and ~1.2-1.4 k entries per row reach that. Entries at or above the threshold become
candidates, ranked as 64-bit keys (topk_keys.py). Row chunks of a few MiB run on all cores while
they sit in cache.

Ties are broken deterministically: score descending, then gallery position ascending, the same
for every engine, k and block size. In intra retrieval the query's own gallery position is excluded
(self-match removal by image identity).

Engines differ only in who computes the GEMM: "numpy" (its BLAS, OpenBLAS in the wheels) or
"torch" (MKL on x86 CPUs, or the GPU when present). "auto" takes the GPU when torch sees one and
otherwise whichever CPU GEMM a short calibration found faster on this machine (search_engine.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import numpy as np

from services.common.errors import ConfigError
from services.evaluator import topk_keys
from services.evaluator.search_engine import resolve_engine

__all__ = ["TIE_RULE", "Engine", "TopK", "UnusableGalleryRow", "exact_topk", "l2_normalize", "resolve_engine"]

Engine = Literal["auto", "torch", "numpy"]
TIE_RULE = "score descending, then gallery position ascending"
# Scores of one (query block x gallery block) tile: bounded so a 5M-image gallery streams in
# constant memory (1,000 queries x 64k gallery rows x 4 B = 256 MiB).
DEFAULT_TILE_BYTES = 256 * 1024 * 1024
# One query block up to 2,048 queries: the gallery is then cast and normalised once, a slice at a
# time beside the GEMM, instead of whole blocks kept for the next query block (see _CpuScorer).
DEFAULT_QUERY_BLOCK = 2048
# Within that bound a tile is as wide as selecting the top k needs and no wider: every byte of it
# is fresh memory to fault in once per process (a 60k-gallery `vsbench score` with 2,000 queries,
# k = 20, searched in 1.52 s with 134 MB tiles, 1.40 s with 52 MB ones, and 0.3 s more with 268 MB),
# while selection and merging cost more per tile the larger k is against the tile's width (k = 100,
# warm: 92 % of the GEMM at 32k rows, 85 % at 16k; k = 1000: 87 % at 64k, 74 % at 32k). At least
# 32 MiB, so that few queries still make tiles wide enough to amortise each tile's fixed steps.
# docs/performance.md has the figures.
_MIN_TILE_BYTES = 32 * 1024 * 1024
_TILE_ROWS_PER_K = 320
# Groups per row for the threshold at small k (k = 100: ~1.05 k candidates per row).
_MIN_GROUPS = 1000


@dataclass(frozen=True)
class TopK:
    """Per query: gallery positions (int64, -1 where fewer than k candidates) and scores."""

    indices: np.ndarray
    scores: np.ndarray


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with unit rows. Zero rows stay zero (callers reject them before search)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def _gallery_blocks(gallery: np.ndarray | Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    blocks = [gallery] if isinstance(gallery, np.ndarray) else gallery
    for block in blocks:  # a block larger than a tile is split, so the score buffer stays bounded
        for start in range(0, block.shape[0], rows):
            yield block[start : start + rows]


def _threshold(scores: np.ndarray, k: int, floor: np.ndarray) -> np.ndarray:
    """Per row a score that each of the row's top-k reaches, at most a few tenths above k
    candidates per row.

    The row's columns are dealt into G >= k interleaved groups (column c into group c mod G) and
    each group's maximum taken (one elementwise-max pass). The k-th largest of those maxima is a
    bound: k groups hold an entry at least that large, so the k-th best entry of the row is too.
    With G = 2k to 4k, about 1.2-1.4 k entries reach it on random data; on any data it is exact
    (nothing sampled, nothing to repair). `floor` (the k-th best kept from earlier gallery blocks)
    raises it where higher.
    """
    n = scores.shape[1]
    groups = min(n // 2, max(2 * k, _MIN_GROUPS))
    if groups < k:  # fewer than 2k columns: the exact k-th best
        return np.maximum(np.partition(scores, n - k, axis=1)[:, n - k], floor)
    length = n // groups
    maxima = scores[:, : groups * length].reshape(scores.shape[0], length, groups).max(axis=1)
    return np.maximum(np.partition(maxima, groups - k, axis=1)[:, groups - k], floor)


def _chunk_keys(scores: np.ndarray, k: int, offset: int, floor: np.ndarray) -> np.ndarray:
    """The k best candidates of each row of a few score rows: keys, ranked, padded.

    floor: per row, the k-th best score kept so far (-inf while fewer than k are kept); an entry
    below it cannot enter the top-k.
    """
    n_rows, n = scores.shape
    if n <= k:
        keys = topk_keys.encode(scores, np.arange(offset, offset + n)[None, :].repeat(n_rows, 0))
        return topk_keys.smallest(keys, k, ordered=True)
    flat = None
    if np.isfinite(floor).all():
        # After the first gallery block the k-th best kept is usually threshold enough: about k x
        # (block rows / rows seen) entries per row reach it on shuffled data, and this skips the
        # group maxima and their per-row partition (a fixed cost per tile). On ordered data it
        # can let most of the block through; then the block's own maxima bound it after all.
        flat = np.flatnonzero(scores >= floor[:, None])
        if flat.size > _FLOOR_CANDIDATES * k * n_rows:
            flat = None
    if flat is None:
        flat = np.flatnonzero(scores >= _threshold(scores, k, floor)[:, None])
    rows = flat // n
    keys = topk_keys.encode(scores.ravel()[flat], flat - rows * n + offset)
    return topk_keys.smallest(topk_keys.pack_rows(rows, keys, n_rows), k, ordered=True)


def _tile_keys(scores: np.ndarray, k: int, offset: int, floor: np.ndarray) -> np.ndarray:
    """_chunk_keys over row chunks of about _CHUNK_BYTES on all cores: each chunk's passes run
    while it sits in cache, and numpy releases the GIL in every step that costs."""
    n_rows, n = scores.shape
    step = max(1, _CHUNK_BYTES // (4 * n))
    if n_rows <= step:
        return _chunk_keys(scores, k, offset, floor)
    out = np.empty((n_rows, k), dtype=np.uint64)

    def run(start: int) -> None:
        rows = slice(start, start + step)
        out[rows] = _chunk_keys(scores[rows], k, offset, floor[rows])

    list(_pool().map(run, range(0, n_rows, step)))
    return out


_CHUNK_BYTES = 4 * 1024 * 1024
# Candidates per row per kept entry above which the kept k-th best alone is not threshold enough.
_FLOOR_CANDIDATES = 2
_workers: list[ThreadPoolExecutor] = []


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def _pool() -> ThreadPoolExecutor:
    if not _workers:
        _workers.append(ThreadPoolExecutor(_cores(), thread_name_prefix="topk"))
    return _workers[0]


def _exclude(scores, exclude: np.ndarray | None, offset: int, n: int, minus_inf) -> None:
    if exclude is None:
        return
    rows = np.flatnonzero((exclude >= offset) & (exclude < offset + n))
    if rows.size:
        scores[rows, exclude[rows] - offset] = minus_inf


class _Scratch:
    """Score and cast buffers kept between searches: faulting in a fresh 256 MiB costs 5-10 % of
    a 60k-gallery search. A caller takes a buffer (another thread meanwhile gets a new one) and
    gives it back; at most one of each kind is kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: dict[str, np.ndarray] = {}

    def take(self, kind: str, size: int) -> np.ndarray:
        with self.lock:
            buffer = self.kept.pop(kind, None)
        if buffer is None or buffer.size < size:
            buffer = np.empty(size, dtype=np.float32)
        return buffer

    def give(self, kind: str, buffer: np.ndarray) -> None:
        with self.lock:
            if buffer.size > self.kept.get(kind, np.empty(0)).size:
                self.kept[kind] = buffer

    def release(self) -> None:
        with self.lock:
            self.kept.clear()


_scratch = _Scratch()


def release_buffers() -> None:
    """Free the buffers kept between searches (up to 2 x DEFAULT_TILE_BYTES)."""
    _scratch.release()


class UnusableGalleryRow(ValueError):
    """A gallery row that cannot be normalised (NaN, inf, or all zeros), found while searching with
    normalize=True: `position` is its gallery position, so the caller can name the item."""

    def __init__(self, position: int, norm: float) -> None:
        self.position = position
        self.why = "is a zero vector" if norm == 0 else "has NaN or inf values (or a norm beyond float32)"
        super().__init__(f"gallery row {position} {self.why}")


_PREPARE_ROWS = 1024  # rows per cast/normalise step: 4 MiB of float32 at 1024-d, in cache while worked on
# Gallery bytes cast per GEMM when the query block scans a gallery block once: 32 MiB of fresh
# memory instead of a 256 MiB copy (a fresh process pays 0.1-0.4 s to fault that in on this VM).
_CAST_BYTES = 32 * 1024 * 1024


def _prepared(block: np.ndarray, out: np.ndarray, offset: int, normalize: bool) -> np.ndarray:
    """`block` as float32 into `out` (a memmap is paged in by the copy), L2-normalised exactly as
    l2_normalize does when asked, in cache-sized steps on all cores. Rows that cannot be normalised
    raise UnusableGalleryRow."""

    def prepare(start: int) -> None:
        part = out[start : start + _PREPARE_ROWS]
        np.copyto(part, block[start : start + _PREPARE_ROWS], casting="unsafe")
        if normalize:
            norms = np.linalg.norm(part, axis=1, keepdims=True)
            bad = ~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise UnusableGalleryRow(offset + start + row, float(norms[row, 0]))
            np.divide(part, norms, out=part)

    list(_pool().map(prepare, range(0, block.shape[0], _PREPARE_ROWS)))
    return out


class _CpuScorer:
    """GEMM by numpy's BLAS or torch's into one reused buffer; selection in numpy."""

    def __init__(self, engine: str) -> None:
        self.torch = None
        if engine == "torch":
            import torch

            self.torch = torch
        self.buffers: dict[str, np.ndarray] = {}

    def _buffer(self, kind: str, size: int) -> np.ndarray:
        buffer = self.buffers.get(kind)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[kind] = _scratch.take(kind, size)
        return buffer[:size]

    def close(self) -> None:
        for kind, buffer in self.buffers.items():
            _scratch.give(kind, buffer)
        self.buffers = {}

    def queries(self, q: np.ndarray) -> np.ndarray:
        return np.array(q, dtype=np.float32, order="C", copy=True)

    def gallery(self, block: np.ndarray, offset: int, normalize: bool, scanned_once: bool = False):
        """The block as float32 (normalised when asked). One that needs casting and that a single
        query block scans (numpy engine) is cast a slice at a time inside tile_keys instead."""
        usable = block.dtype == np.float32 and block.flags.c_contiguous
        if not normalize and usable and (self.torch is None or block.flags.writeable):  # torch wants writable memory
            return block
        if scanned_once and self.torch is None:
            return _Uncast(block, offset, normalize)
        return _prepared(block, self._buffer("cast", block.shape[0] * block.shape[1]).reshape(block.shape),
                         offset, normalize)

    def tile_keys(self, q, g, k: int, offset: int, exclude, floor) -> np.ndarray:
        scores = self._buffer("scores", q.shape[0] * g.shape[0]).reshape(q.shape[0], g.shape[0])
        if isinstance(g, _Uncast):
            # Each slice is cast into one small buffer, then multiplied into its columns of the
            # tile (BLAS writes a column range of a row-major matrix in place).
            rows = _cast_rows(g.shape[0], g.block.shape[1])
            cast = self._buffer("cast", rows * g.block.shape[1])
            for start in range(0, g.shape[0], rows):
                part = g.block[start : start + rows]
                part = _prepared(part, cast[: part.size].reshape(part.shape), g.offset + start, g.normalize)
                np.matmul(q, part.T, out=scores[:, start : start + part.shape[0]])
        elif self.torch is None:
            np.matmul(q, g.T, out=scores)
        else:
            t = self.torch
            t.matmul(t.from_numpy(q), t.from_numpy(g).T, out=t.from_numpy(scores))
        _exclude(scores, exclude, offset, g.shape[0], -np.inf)
        return _tile_keys(scores, k, offset, floor)


def _cast_rows(n: int, dim: int) -> int:
    """Rows per cast slice of an n-row block: at most _CAST_BYTES, in equal slices (a thin last
    slice would be a slow GEMM)."""
    slices = -(-n // max(1, _CAST_BYTES // (4 * dim)))
    return -(-n // slices)


@dataclass(frozen=True)
class _Uncast:
    """A gallery block still to be cast (and normalised) by the scorer, slice by slice."""

    block: np.ndarray
    offset: int
    normalize: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.block.shape


class _CudaScorer:
    """GEMM and top-k on the device; a row whose k-th and (k+1)-th scores tie is ranked again on
    the host, since torch.topk does not promise which of equal scores it keeps at the cut-off.

    dtype "float16" keeps gallery blocks (and queries) in float16 on the device: half the memory
    and transfer, and tensor-core GEMMs that accumulate and return float32 (`torch.mm(...,
    out_dtype=float32)`; where torch lacks that, the tile is widened to float32 first, the same
    numbers more slowly: a product of two float16 values is exact in float32). The ranking is then
    exact for the float16 vectors (ILIAS stores float16), which differ from float32 ones by the
    rounding of each component (relative 2**-11), so scores can differ from a float32 search in
    the 4th decimal and near-equal neighbours can swap; the tie rule holds as for float32. float16
    also runs on the CPU (the widened GEMM), so the same code is tested without a GPU.

    Blocks that are already torch tensors (a DeviceGallery's, prepared once) are used as they are.
    """

    DTYPES = ("float32", "float16")

    def __init__(self, device: str, dtype: str = "float32") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        # cuBLAS fp16 GEMM with float32 output; the CPU build has no kernel for it
        self.mixed_gemm = self.dtype == torch.float16 and self.device.type == "cuda" and self._has_mixed_gemm()

    def _has_mixed_gemm(self) -> bool:
        t = self.torch
        probe = t.ones((2, 2), dtype=t.float16, device=self.device)
        try:
            return t.mm(probe, probe, out_dtype=t.float32).dtype == t.float32
        except (TypeError, RuntimeError, NotImplementedError):  # torch before out_dtype existed
            return False

    def close(self) -> None:
        pass

    def queries(self, q: np.ndarray):
        host = np.array(q, dtype=np.float32, copy=True)
        return self.torch.from_numpy(host).to(self.device).to(self.dtype)

    def gallery(self, block, offset: int, normalize: bool, scanned_once: bool = False):
        t = self.torch
        if isinstance(block, t.Tensor):  # prepared already (DeviceGallery)
            return block.to(self.device, self.dtype)
        if self.dtype == t.float16 and block.dtype == np.float16 and not normalize:
            return t.from_numpy(np.array(block, copy=True)).to(self.device)  # ILIAS's own bits, no round trip
        host = _prepared(block, np.empty(block.shape, dtype=np.float32), offset, normalize)
        # cast on the device: the host cast to float16 costs more than the doubled transfer saves
        return t.from_numpy(host).to(self.device).to(self.dtype)

    def _scores(self, q, g):
        t = self.torch
        if self.dtype == t.float32:
            return q @ g.T
        if self.mixed_gemm:
            return t.mm(q, g.T, out_dtype=t.float32)
        return q.float() @ g.float().T

    def tile_keys(self, q, g, k: int, offset: int, exclude, floor) -> np.ndarray:
        torch = self.torch
        scores = self._scores(q, g)
        if exclude is not None:
            rows = np.flatnonzero((exclude >= offset) & (exclude < offset + g.shape[0]))
            if rows.size:
                r = torch.from_numpy(rows).to(self.device)
                c = torch.from_numpy(exclude[rows] - offset).to(self.device)
                scores[r, c] = float("-inf")
        n = scores.shape[1]
        kk = min(k + 1, n)
        top_s, top_i = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy().astype(np.int64)
        keys = np.sort(topk_keys.encode(top_s[:, :k], top_i[:, :k] + offset), axis=1)
        if kk > k:
            for row in np.flatnonzero(top_s[:, k - 1] == top_s[:, k]):
                full = scores[row].cpu().numpy()
                row_keys = topk_keys.encode(full, np.arange(offset, offset + n))
                keys[row] = np.sort(row_keys)[:k]
        # fewer rows than k (a gallery smaller than k): empty slots, as the CPU scorer gives
        return topk_keys.smallest(keys, k, ordered=True) if keys.shape[1] < k else keys


def _scorer(engine: str, device: str | None, device_dtype: str = "float32"):
    """float32: the GPU scorer on a GPU, else the CPU one. float16 always takes the device scorer
    (on the CPU too), and needs the torch engine."""
    if device_dtype not in _CudaScorer.DTYPES:
        raise ConfigError(f"device_dtype must be one of {', '.join(_CudaScorer.DTYPES)}, got {device_dtype!r}")
    if device_dtype == "float16" and engine != "torch":
        raise ConfigError(f"a float16 gallery needs the torch engine (engine resolved to {engine!r})")
    if engine == "torch":
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type != "cpu" or device_dtype == "float16":
            return _CudaScorer(device, device_dtype)
    return _CpuScorer(engine)


def exact_topk(
    queries: np.ndarray,
    gallery: np.ndarray | Iterable[np.ndarray],
    k: int,
    *,
    exclude: np.ndarray | None = None,
    engine: Engine = "auto",
    device: str | None = None,
    normalize: bool = False,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    query_block: int = DEFAULT_QUERY_BLOCK,
    progress=None,
    device_dtype: str = "float32",
) -> TopK:
    """Exact top-k gallery positions for each query row, ranked by the tie rule.

    gallery: an (N, D) array (np.memmap streams from disk; float16 is converted per block) or an
    iterable of (n_i, D) blocks.
    exclude: per query, a gallery position never to return (its own image in intra), or -1.
    normalize: L2-normalise queries and each gallery block on the fly (inputs from outside, or
    vectors read back from a store); a gallery row that cannot be raises UnusableGalleryRow.
    progress: optional callable(n_gallery_rows_done) for progress bars.
    device_dtype: "float16" scores the gallery in float16 with the torch engine (see _CudaScorer:
    exact for the float16 vectors, not for float32 ones).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_all = np.asarray(queries, dtype=np.float32)
    if normalize:
        q_all = l2_normalize(q_all)
    n_q, dim = q_all.shape
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_q,):
            raise ValueError("exclude needs one gallery position (or -1) per query")
    if isinstance(gallery, np.ndarray) and gallery.ndim == 2 and gallery.shape[1] != dim:
        raise ValueError(f"query dim {dim} != gallery dim {gallery.shape[1]}")
    scorer = _scorer(resolve_engine(engine), device, device_dtype)
    q_rows = max(1, min(query_block, n_q))
    # The gallery block is bounded too: its copies (dtype cast, normalize, device) would otherwise
    # grow as the query count shrinks (2.7 GB at 100 queries x 1024-d).
    bound = min(tile_bytes // (4 * q_rows), tile_bytes // (4 * max(1, dim)))
    g_rows = max(k + 1, min(max(_MIN_TILE_BYTES // (4 * q_rows), _TILE_ROWS_PER_K * k), bound))
    q_blocks = [(s, scorer.queries(q_all[s : s + q_rows])) for s in range(0, n_q, q_rows)]
    best = np.full((n_q, k), topk_keys.EMPTY_KEY, dtype=np.uint64)
    floor = np.full(n_q, -np.inf, dtype=np.float32)
    try:
        offset, merged = 0, False
        for block in _gallery_blocks(gallery, g_rows):
            if block.shape[0] == 0:
                continue
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"query dim {dim} != gallery dim {block.shape[-1]}")
            if offset + block.shape[0] > topk_keys.MAX_POSITION + 1:
                raise ValueError(f"gallery longer than {topk_keys.MAX_POSITION + 1:,} rows")
            g = scorer.gallery(block, offset, normalize, scanned_once=len(q_blocks) == 1)
            for start, q in q_blocks:
                rows = slice(start, start + q.shape[0])
                ex = exclude[rows] if exclude is not None else None
                candidates = scorer.tile_keys(q, g, k, offset, ex, floor[rows])
                # the first block's candidates come ranked; later merges leave rows unordered
                best[rows] = candidates if offset == 0 else topk_keys.merge(best[rows], candidates, k)
                floor[rows] = topk_keys.kth_score(best[rows])
            merged = offset > 0
            offset += block.shape[0]
            if progress is not None:
                progress(block.shape[0])
    finally:
        scorer.close()
    if merged:
        best.sort(axis=1)
    scores, indices = topk_keys.decode(best)
    # An excluded self-match can still surface as -inf filler when the gallery is tiny.
    indices[np.isneginf(scores)] = -1
    return TopK(indices=indices, scores=scores)
