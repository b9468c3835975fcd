"""A weight-free baseline: the global joint RGB colour histogram.

Any learned model must beat it; if one does not, the benchmark (or the model's preprocessing) is
broken. The image is shrunk to fit max_side x max_side first (box filter: an exact average, so
the histogram barely changes while the cost stops depending on the upload's size).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.options import HistogramOptions
from services.embedder.backends.provenance import model_fingerprint
from services.embedder.backends.registry import Runtime


class HistogramBackend(ModelBackend):
    def __init__(
        self,
        name: str = "histogram",
        bins: int = 8,
        max_side: int = 128,
        sqrt: bool = True,
        max_batch: int = 256,
        description: str = "",
    ) -> None:
        if not 2 <= bins <= 64:
            raise ValueError("bins per channel must be within 2..64")  # HistogramOptions refuses it first
        self._bins = bins
        self._max_side = max_side
        self._sqrt = sqrt
        dim = bins**3
        self._info = ModelInfo(
            name=name,
            dim=dim,
            preprocessing=description
            or (
                f"resize to fit {max_side}x{max_side} box filter, joint RGB histogram "
                f"{bins}x{bins}x{bins} bins, {'square root, ' if sqrt else ''}L2-normalised"
            ),
            normalized=True,
            revision=f"bins={bins};max_side={max_side};sqrt={sqrt}",
            max_batch=max_batch,
            backend="histogram",
            details={"pooling": "global colour histogram"},
            fingerprint=model_fingerprint(
                backend="histogram",
                weights={},
                preprocessing={"bins": bins, "max_side": max_side, "sqrt": sqrt, "resample": "box"},
                pooling="global colour histogram",
                libraries=("pillow", "numpy"),
            ),
        )

    def info(self) -> ModelInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if max(image.size) > self._max_side:
            image = image.copy()
            image.thumbnail((self._max_side, self._max_side), Image.Resampling.BOX)
        pixels = np.asarray(image, dtype=np.uint16)
        quantised = (pixels * self._bins) >> 8  # 0..bins-1 per channel, any bin count
        index = (quantised[..., 0] * self._bins + quantised[..., 1]) * self._bins + quantised[..., 2]
        counts = np.bincount(index.ravel(), minlength=self._bins**3).astype(np.float32)
        if self._sqrt:
            # Hellinger: dampens the one dominant colour (often the background) so the rest counts.
            counts = np.sqrt(counts)
        norm = float(np.linalg.norm(counts))
        return counts / norm if norm > 0 else counts

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        return np.stack(inputs).astype(np.float32, copy=False)


def load(name: str, options: HistogramOptions, runtime: Runtime) -> HistogramBackend:
    return HistogramBackend(
        name=name,
        bins=options.bins,
        max_side=options.max_side,
        sqrt=options.sqrt,
        max_batch=runtime.max_batch,
    )
