"""SEAM: how the evaluator gets vectors for images, whatever serves the model."""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from services.common.errors import VsbenchError
from services.common.types import CallUsage, Embedding, ImageItem, InputRole, ModelInfo


class EmbeddingServiceError(VsbenchError, RuntimeError):
    """The embedding service failed for good (retries exhausted, or a non-retryable status)."""


class EmbeddingClient(Protocol):
    def info(self) -> ModelInfo:
        """The model behind this client, as its server describes it (fingerprint included). Asked
        once per run: it never carries per-run figures."""

    def embed(
        self, items: Iterable[ImageItem], usage: CallUsage | None = None, role: InputRole | None = None
    ) -> Iterator[Embedding]:
        """One Embedding per item (a vector or a per-item error), in any order. Items are pulled
        from `items` lazily, so a large dataset streams without being held in memory. What the
        calls cost (billed / cached images, retries, 429s, USD) is added into `usage` as answers
        arrive, so a run's record holds this run's figures only. `role` says what the images are
        (gallery documents or queries) for services that embed the two differently."""

    def close(self) -> None: ...
