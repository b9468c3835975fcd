"""Pixel-mode normalisation shared by the embedder and the api_proxy: whatever mode an image
decodes to, models and vendors get 8-bit RGB made the same way."""

from __future__ import annotations

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255)

# The longer side may be at most this many times the shorter. Every model resizes the SHORTER side
# to its input size (e.g. 256) and keeps the aspect, so the resized image has up to
# (input size)^2 x this ratio pixels whatever the file's own pixel count: without a bound a 60000x1
# PNG of 256 bytes becomes 15.36M x 256 pixels (16 GB). 32:1 passes banners and panoramas (at
# most ~10:1) and keeps the worst resize at 256 x 8192 (6 MB of RGB).
DEFAULT_MAX_ASPECT_RATIO = 32.0


def shape_problem(width: int, height: int, max_pixels: int, max_aspect_ratio: float) -> str | None:
    """Why an image of this header size must not be decoded or resized, or None (IMAGE_TOO_LARGE)."""
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height} pixels exceeds the {max_pixels}-pixel limit"
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > max_aspect_ratio:
        return (
            f"{width}x{height} has aspect ratio {ratio:.0f}:1, over the {max_aspect_ratio:g}:1 limit "
            "(resizing its short side to the model's input size would need "
            f"{_resized_pixels(width, height, 256):,} pixels at 256)"
        )
    return None


def _resized_pixels(width: int, height: int, shortest: int) -> int:
    short, long = min(width, height), max(width, height)
    return shortest * max(shortest, round(long * shortest / max(1, short)))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, 16/32-bit and float grey scaled by range."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _on_white(image.convert("RGBA"))
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_grey_to_rgb(image)
    if mode == "RGBX":
        return image.convert("RGB")
    # LAB, HSV and rarer modes: let Pillow try, and report a clear error when it cannot.
    return image.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit RGB by the value range of its type."""
    pixels = np.asarray(image)
    if image.mode.startswith("I;16") or pixels.dtype == np.uint16:
        scaled = pixels.astype(np.float32) / 257.0
    elif image.mode == "F":
        peak = float(np.nanmax(pixels)) if pixels.size else 0.0
        # Floats in 0..1 are the common convention; anything else is treated as 0..255.
        scaled = pixels * 255.0 if peak <= 1.0 else pixels
    else:  # "I": 32-bit signed; PNG/TIFF decoders put 16-bit data here
        peak = int(pixels.max()) if pixels.size else 0
        scaled = pixels.astype(np.float32) / (257.0 if peak > 255 else 1.0)
    grey = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
