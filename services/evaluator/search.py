"""Exact top-K by dot product over L2-normalised float32 vectors, memory bounded.

The gallery is scanned in blocks (a numpy array, a np.memmap on disk, or any sequence of blocks),
each block scored with one matrix product, its top-K kept, and the per-block candidates merged.
Ties are broken deterministically: score descending, then gallery position ascending. In intra
retrieval the query's own gallery position is excluded (self-match removal by image identity).

torch is used when importable (and its GPU when present): torch.topk is ~15x cheaper than numpy's
argpartition at 60k x 1024 on these CPUs; numpy is the fallback so the evaluator core needs no torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import numpy as np

Engine = Literal["auto", "torch", "numpy"]
TIE_RULE = "score descending, then gallery position ascending"
# Scores of one (query block x gallery block) tile: bounded so a 5M-image gallery streams in
# constant memory (1024 queries x 64k gallery rows x 4 B = 256 MiB).
DEFAULT_TILE_BYTES = 256 * 1024 * 1024
DEFAULT_QUERY_BLOCK = 1024


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


def resolve_engine(engine: Engine = "auto") -> str:
    if engine not in ("auto", "torch", "numpy"):
        raise ValueError(f"unknown search engine {engine!r}: use auto, torch or numpy")
    if engine == "auto":
        return "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    if engine == "torch" and importlib.util.find_spec("torch") is None:
        raise RuntimeError("search engine 'torch' requested but torch is not installed")
    return engine


def _gallery_blocks(gallery: np.ndarray | Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    if isinstance(gallery, np.ndarray):
        for start in range(0, gallery.shape[0], rows):
            yield gallery[start : start + rows]
    else:
        yield from gallery


def _merge(best_s: np.ndarray, best_i: np.ndarray, cand_s: np.ndarray, cand_i: np.ndarray, k: int):
    """Keep the k best of two candidate sets under the tie rule (score desc, index asc)."""
    scores = np.concatenate([best_s, cand_s], axis=1)
    indices = np.concatenate([best_i, cand_i], axis=1)
    # Empty slots carry index -1 and score -inf; give them the largest index so they sort last.
    sort_index = np.where(indices < 0, np.iinfo(np.int64).max, indices)
    order = np.lexsort((sort_index, -scores.astype(np.float64)), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def _first_candidates(cand_s: np.ndarray, cand_i: np.ndarray, k: int):
    """The first block's candidates as the running best, without a full merge: they come sorted by
    score, so only rows holding equal scores need re-ordering by index (the tie rule); short lists
    are padded with empty slots."""
    tied = np.flatnonzero((cand_s[:, 1:] == cand_s[:, :-1]).any(axis=1)) if cand_s.shape[1] > 1 else []
    if len(tied):
        order = np.lexsort((cand_i[tied], -cand_s[tied].astype(np.float64)), axis=1)
        cand_s, cand_i = cand_s.copy(), cand_i.copy()
        cand_s[tied] = np.take_along_axis(cand_s[tied], order, 1)
        cand_i[tied] = np.take_along_axis(cand_i[tied], order, 1)
    missing = k - cand_s.shape[1]
    if missing > 0:
        cand_s = np.pad(cand_s, ((0, 0), (0, missing)), constant_values=-np.inf)
        cand_i = np.pad(cand_i, ((0, 0), (0, missing)), constant_values=-1)
    return cand_s, cand_i


class _TorchScorer:
    def __init__(self, device: str | None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def queries(self, q: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)

    def block_topk(self, q, block: np.ndarray, k: int, offset: int, exclude: np.ndarray | None):
        torch = self.torch
        block = np.ascontiguousarray(block, dtype=np.float32)
        if not block.flags.writeable:  # a read-only memmap: torch wants a writable buffer
            block = block.copy()
        g = torch.from_numpy(block).to(self.device)
        scores = q @ g.T
        if exclude is not None:
            rows = np.flatnonzero((exclude >= offset) & (exclude < offset + block.shape[0]))
            if rows.size:
                scores[torch.from_numpy(rows).to(self.device), torch.from_numpy(exclude[rows] - offset).to(self.device)] = float("-inf")
        kk = min(k + 1, scores.shape[1])
        top_s, top_i = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy().astype(np.int64)
        # torch.topk does not promise which of several equal scores it keeps at the cut-off; where
        # the k-th and (k+1)-th scores tie, rank that row again with a stable sort.
        if kk > k:
            tied = np.flatnonzero(top_s[:, k - 1] == top_s[:, k])
            for row in tied:
                full = scores[row].cpu().numpy()
                order = np.argsort(-full.astype(np.float64), kind="stable")[:k]
                top_s[row, :k], top_i[row, :k] = full[order], order
            top_s, top_i = top_s[:, :k], top_i[:, :k]
        return top_s, top_i + offset


class _NumpyScorer:
    def queries(self, q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(q, dtype=np.float32)

    def block_topk(self, q: np.ndarray, block: np.ndarray, k: int, offset: int, exclude: np.ndarray | None):
        scores = q @ np.ascontiguousarray(block, dtype=np.float32).T
        if exclude is not None:
            rows = np.flatnonzero((exclude >= offset) & (exclude < offset + block.shape[0]))
            scores[rows, exclude[rows] - offset] = -np.inf
        n = scores.shape[1]
        kk = min(k, n)
        if kk < n:
            # argpartition over whole rows cost ~3x the matmul (bench/search.py). The k-th best of
            # every `stride`-th column bounds each row's k-th best from below, so only the few
            # columns at or above it (~k * stride) are candidates; select among those exactly.
            stride = max(1, min(8, n // kk))
            sample = scores[:, ::stride]
            bound = np.partition(sample, sample.shape[1] - kk, axis=1)[:, sample.shape[1] - kk]
            part = np.empty((scores.shape[0], kk), dtype=np.int64)
            for row in range(scores.shape[0]):
                idx = np.flatnonzero(scores[row] >= bound[row])
                vals = scores[row, idx]
                kth = np.partition(vals, vals.size - kk)[vals.size - kk]
                # Everything strictly above the k-th best score is in; fill up with tied items in
                # gallery order (idx is ascending), so the cut-off obeys the tie rule too.
                above = idx[vals > kth]
                part[row, : above.size] = above
                part[row, above.size :] = idx[vals == kth][: kk - above.size]
        else:
            part = np.broadcast_to(np.arange(kk), (scores.shape[0], kk))
        top_s = np.take_along_axis(scores, part, 1)
        order = np.lexsort((part, -top_s.astype(np.float64)), axis=1)
        return np.take_along_axis(top_s, order, 1), np.take_along_axis(part, order, 1).astype(np.int64) + offset


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
) -> TopK:
    """Exact top-k gallery positions for each query row.

    gallery: an (N, D) array (np.memmap streams from disk) or an iterable of (n_i, D) blocks.
    exclude: per query, a gallery position never to return (its own image in intra), or -1.
    normalize: L2-normalise queries and each gallery block on the fly (inputs from outside).
    progress: optional callable(n_gallery_rows_done) for progress bars.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_all = np.asarray(queries, dtype=np.float32)
    if normalize:
        q_all = l2_normalize(q_all)
    n_q = q_all.shape[0]
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (n_q,):
            raise ValueError("exclude needs one gallery position (or -1) per query")
    scorer = _TorchScorer(device) if resolve_engine(engine) == "torch" else _NumpyScorer()
    best_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    best_i = np.full((n_q, k), -1, dtype=np.int64)
    q_rows = max(1, min(query_block, n_q))
    # The gallery block is bounded too: its copies (dtype cast, normalize, read-only memmap, device)
    # would otherwise grow as the query count shrinks (2.7 GB at 100 queries x 1024-d).
    g_rows = max(k + 1, min(tile_bytes // (4 * q_rows), tile_bytes // (4 * max(1, q_all.shape[1]))))
    if isinstance(gallery, np.ndarray) and gallery.ndim == 2 and gallery.shape[1] != q_all.shape[1]:
        raise ValueError(f"query dim {q_all.shape[1]} != gallery dim {gallery.shape[1]}")
    q_blocks = [(s, scorer.queries(q_all[s : s + q_rows])) for s in range(0, n_q, q_rows)]
    offset = 0
    for block in _gallery_blocks(gallery, g_rows):
        if block.shape[0] == 0:
            continue
        if block.shape[1] != q_all.shape[1]:
            raise ValueError(f"query dim {q_all.shape[1]} != gallery dim {block.shape[1]}")
        if normalize:
            block = l2_normalize(block)
        for start, q in q_blocks:
            ex = exclude[start : start + q_rows] if exclude is not None else None
            cand_s, cand_i = scorer.block_topk(q, block, k, offset, ex)
            sl = slice(start, start + q_rows)
            if offset == 0:
                best_s[sl], best_i[sl] = _first_candidates(cand_s, cand_i, k)
            else:
                best_s[sl], best_i[sl] = _merge(best_s[sl], best_i[sl], cand_s, cand_i, k)
        offset += block.shape[0]
        if progress is not None:
            progress(block.shape[0])
    # An excluded self-match can still surface as -inf filler when the gallery is tiny.
    best_i = np.where(np.isneginf(best_s), -1, best_i)
    return TopK(indices=best_i, scores=best_s)
