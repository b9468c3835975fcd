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


def write_product_folder(
    root,
    *,
    products: int,
    seed: int,
    per_split: tuple[tuple[str, int], ...] = (("gallery", 3), ("query", 1)),
    size: int = 32,
    noise: float = 10.0,
    folder: str = "p{}",
    image: str = "{}.png",
    **save,
) -> np.random.Generator:
    """The folder dataset layout, root/<split>/<product>/<i>.<ext>: each product a random colour and
    its images that colour plus Gaussian noise, so even a colour histogram tells products apart.
    Returns the generator, for callers that go on drawing (distractors)."""
    rng = np.random.default_rng(seed)
    for p in range(products):
        base = rng.integers(0, 256, 3)
        for split, count in per_split:
            directory = root / split / folder.format(p)
            directory.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(directory / image.format(i), **save)
    return rng
