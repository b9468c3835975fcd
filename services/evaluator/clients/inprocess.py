"""The in-process EmbeddingClient: runs a model backend inside the evaluator, no server.

The same stages as the server (services.embedder.batching): decoding + preprocessing on a thread
pool, overlapped with the forward pass of the previous chunk, chunks of max_batch items, one
bad image one per-item error. Results come back in item order (the seam allows any order).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from services.common.types import CallUsage, Embedding, ImageItem, InputRole, ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.batching import iter_embed
from services.embedder.images import DEFAULT_LIMITS, DecodeLimits


class InProcessEmbeddingClient:
    """`InProcessEmbeddingClient("efficientnet-lite0")` or `InProcessEmbeddingClient(backend)`.

    A model name is loaded through the registry (with `weights`, `device`, `threads`); a backend
    object is used as given, and closed by `close()` only when `owns_backend=True`.
    """

    def __init__(
        self,
        backend_or_model_name: ModelBackend | str,
        *,
        weights: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int | None = None,
        decode_workers: int | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        owns_backend: bool | None = None,
    ) -> None:
        if isinstance(backend_or_model_name, str):
            from services.embedder.backends.registry import load_backend

            self._backend = load_backend(
                backend_or_model_name,
                weights=weights,
                device=device,
                threads=threads,
                max_batch=batch_size or 32,
            )
            self._owns_backend = True if owns_backend is None else owns_backend
        else:
            self._backend = backend_or_model_name
            self._owns_backend = bool(owns_backend)
        info = self._backend.info()
        self._batch_size = batch_size or info.max_batch or 32
        self._limits = limits
        workers = decode_workers or min(4, os.cpu_count() or 1)
        self._decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="inprocess-decode")
        self._closed = False

    @property
    def backend(self) -> ModelBackend:
        return self._backend

    def info(self) -> ModelInfo:
        return self._backend.info()

    def embed(
        self, items: Iterable[ImageItem], usage: CallUsage | None = None, role: InputRole | None = None
    ) -> Iterator[Embedding]:
        """`usage` stays untouched (a model in this process costs nothing per call) and `role` is
        ignored (open models embed an image the same way whatever it is for)."""
        if self._closed:
            raise RuntimeError("client is closed")
        return iter_embed(self._backend, items, self._decode_pool, self._batch_size, self._limits)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_backend:
            self._backend.close()

    def __enter__(self) -> "InProcessEmbeddingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
