"""A gallery kept on one device between searches (torch engine), float16 by default.

`exact_topk` streams the gallery from host memory on every call: the GPU then waits on the
host-to-device copy (4 GB per 1M x 1024 float32). A service or benchmark that searches the same
gallery many times uploads it once here, in blocks prepared by the same scorer code the streaming
path uses (cast, optional L2 normalisation, naming a row that cannot be normalised), and searches
it with `exact_topk` itself, so ranking and tie rule are one code path. float16 halves the memory
(5M x 1024 ILIAS vectors: 10 GiB) and is exact for the float16 vectors, not for float32 ones (see
search._CudaScorer). On the CPU only float16 is kept (float32 there is just the host array).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from services.common.errors import ConfigError
from services.evaluator import topk_keys
from services.evaluator.search import (
    DEFAULT_QUERY_BLOCK,
    DEFAULT_TILE_BYTES,
    TopK,
    _gallery_blocks,
    _scorer,
    exact_topk,
    l2_normalize,
)

__all__ = ["DeviceGallery"]

# Rows uploaded per step: 64 MiB of float32 staged on the host at 1024-d.
_UPLOAD_ROWS = 16384


class DeviceGallery:
    """An (N, D) gallery resident on `device` in `dtype` ("float16" or "float32"), searched by
    `search` as often as needed. normalize=True L2-normalises the rows once (in float32, before the
    cast) and then the queries of every search."""

    def __init__(
        self,
        gallery: np.ndarray | Iterable[np.ndarray],
        device: str,
        *,
        dtype: str = "float16",
        normalize: bool = False,
    ) -> None:
        import torch

        if torch.device(device).type == "cpu" and dtype != "float16":
            raise ConfigError(f"a {dtype} gallery on the CPU is already resident: pass the array to "
                              "exact_topk")
        scorer = _scorer("torch", device, dtype)
        self.device, self.dtype, self.normalized = device, dtype, normalize
        self.blocks: list = []
        self.rows, self.dim = 0, None
        for block in _gallery_blocks(gallery, _UPLOAD_ROWS):
            if block.shape[0] == 0:
                continue
            if block.ndim != 2 or (self.dim is not None and block.shape[1] != self.dim):
                raise ConfigError(f"gallery blocks disagree on shape: {block.shape} after dim {self.dim}")
            if self.rows + block.shape[0] > topk_keys.MAX_POSITION + 1:
                raise ConfigError(f"gallery longer than {topk_keys.MAX_POSITION + 1:,} rows")
            self.dim = block.shape[1]
            self.blocks.append(scorer.gallery(block, self.rows, normalize))
            self.rows += block.shape[0]
        scorer.close()

    @property
    def nbytes(self) -> int:
        return sum(b.element_size() * b.nelement() for b in self.blocks)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        tile_bytes: int = DEFAULT_TILE_BYTES,
        query_block: int = DEFAULT_QUERY_BLOCK,
    ) -> TopK:
        """exact_topk over the resident blocks (gallery positions 0..N-1, the tie rule)."""
        q = np.asarray(queries, dtype=np.float32)
        if self.dim is not None and (q.ndim != 2 or q.shape[1] != self.dim):
            raise ConfigError(f"query dim {q.shape[-1]} != gallery dim {self.dim}")
        if self.normalized:  # the rows were normalised at upload: exact_topk normalises nothing more
            q = l2_normalize(q)
        return exact_topk(q, self.blocks, k, exclude=exclude, engine="torch", device=self.device,
                          device_dtype=self.dtype, tile_bytes=tile_bytes, query_block=query_block)

    def close(self) -> None:
        """Frees the device memory (also freed when the object is collected)."""
        self.blocks = []
