"""SEAM: a model backend turns decoded images into vectors.

The embedder's batcher owns decoding (services/embedder/images.py), threading and batching; a
backend only knows its own preprocessing and forward pass, so the same object serves gRPC, the
in-process client and the Triton exporter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
from PIL import Image

from services.common.types import ModelInfo


class ModelBackend(ABC):
    """One loaded model. `preprocess` runs on worker threads (must be thread-safe and cheap to
    call concurrently); `forward` runs on one thread at a time."""

    @abstractmethod
    def info(self) -> ModelInfo:
        """Name, dim, preprocessing as the backend applies it, revision, max batch, and the
        fingerprint over everything that changes the vectors (backends/provenance.py)."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Any:
        """One decoded RGB image -> the model input for one item (usually a CHW float32 array)."""

    @abstractmethod
    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        """A batch of preprocessed items -> (len(inputs), dim) float32 array."""

    def warmup(self) -> None:
        """Run one dummy batch so the first request does not pay for lazy initialisation."""
        self.forward([self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))])

    def close(self) -> None:
        """Release resources (sessions, GPU memory)."""
