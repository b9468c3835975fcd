"""Small, distinct test images made on the fly (no files, no downloads)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG", mode: str = "RGB", **save) -> bytes:
    """A noise image unique to `seed`, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def make_images(count: int, start: int = 0, **kwargs) -> list[bytes]:
    return [make_image(start + i, **kwargs) for i in range(count)]
