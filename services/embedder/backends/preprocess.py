"""Preprocessing as data: one frozen `Preprocessing` describes what a model expects, and calling it
turns a decoded RGB PIL image into the model's input array (PIL + numpy only, no torchvision).

Order of operations (the order torchvision/HF processors use): resize -> centre crop -> optional
JPEG round trip -> float -> rescale -> (x - mean) / std -> channel order -> layout.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["shortest", "squash", "longer", "none"]

# No resize may produce more pixels than this (checked before allocating). The decoder's aspect
# limit already keeps "shortest" resizes small; this guards specs with a large resize_to and
# callers that skip the decoder. 40 MP = 120 MB of RGB, ~4x the largest real model input resize.
MAX_RESIZED_PIXELS = 40_000_000


class ResizeTooLarge(ValueError):
    """The resize this image needs would allocate more than MAX_RESIZED_PIXELS (IMAGE_TOO_LARGE)."""


@dataclass(frozen=True)
class Preprocessing:
    """What one model expects.

    crop_size: final (height, width) after the centre crop (an int means square).
    resize: "shortest" scales the shorter edge to `resize_to` keeping aspect; "squash" resizes to
        exactly `resize_to` x `resize_to` (or (h, w)) ignoring aspect; "longer" scales the longer
        edge to `resize_to` keeping aspect and does NOT crop (ILIAS's official feature extraction,
        LargeSideResize: the shorter edge is truncated, not rounded; items then differ in shape
        and the batcher forwards each shape group on its own); "none" skips resizing.
    resize_to: target of the resize; defaults to the crop size (then the crop only trims the longer
        side, or nothing for "squash").
    rescale: multiplies pixel values (0..255) before mean/std, e.g. 1/255.
    mean, std: per channel, in RGB order, in the units after `rescale`.
    channel_order: "BGR" reverses channels after normalisation (Caffe-trained models).
    layout: "CHW" (PyTorch/most ONNX) or "HWC" (TensorFlow exports).
    jpeg_quality: when set, the cropped image is JPEG-encoded and decoded again at this quality
        before conversion to float; some reference pipelines (open_nsfw) do that.
    """

    crop_size: int | tuple[int, int] = 224
    resize: ResizeMode = "shortest"
    resize_to: int | tuple[int, int] | None = None
    resample: str = "bicubic"
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["CHW", "HWC"] = "CHW"
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ValueError(f"unknown resample {self.resample!r}; one of {sorted(RESAMPLE)}")
        if self.resize not in ("shortest", "squash", "longer", "none"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.resize in ("shortest", "longer") and isinstance(self.resize_to, tuple):
            raise ValueError(f"resize={self.resize!r} takes one edge length, not a (h, w) pair")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError("mean and std need three values, std non-zero")

    @property
    def crop_hw(self) -> tuple[int, int]:
        size = self.crop_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed item, without the batch dimension."""
        height, width = self.crop_hw
        return (3, height, width) if self.layout == "CHW" else (height, width, 3)

    def describe(self) -> str:
        """A one-line human description for ModelInfo.preprocessing and result files."""
        height, width = self.crop_hw
        target = (
            self.resize_to
            if self.resize_to is not None
            else (min(height, width) if self.resize == "shortest" else (height, width))
        )
        if self.resize == "longer":
            longer = self.resize_to if self.resize_to is not None else max(height, width)
            steps = [f"resize longer edge to {longer} {self.resample} keeping aspect (shorter edge truncated), no crop"]
        elif self.resize == "shortest":
            steps = [f"resize shortest edge to {target} {self.resample}"]
        elif self.resize == "squash":
            th, tw = (target, target) if isinstance(target, int) else target
            steps = [f"resize to {th}x{tw} {self.resample} (aspect not kept)"]
        else:
            steps = []
        if self.resize != "longer":
            steps.append(f"centre crop {height}x{width}")
        if self.jpeg_quality is not None:
            steps.append(f"JPEG re-encode q{self.jpeg_quality}")
        scale = "1/255" if abs(self.rescale - 1 / 255) < 1e-12 else f"{self.rescale:g}"
        steps.append(f"x*{scale}")
        steps.append(f"mean={_fmt(self.mean)} std={_fmt(self.std)} (RGB)")
        if self.channel_order == "BGR":
            steps.append("to BGR")
        steps.append(f"{self.layout} float32")
        return ", ".join(steps)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, computed without touching pixels."""
        crop_h, crop_w = self.crop_hw
        if self.resize == "none":
            return width, height
        if self.resize == "squash":
            target = self.resize_to if self.resize_to is not None else (crop_h, crop_w)
            th, tw = (target, target) if isinstance(target, int) else target
            return tw, th
        if self.resize == "longer":
            # As ILIAS's LargeSideResize: the longer edge becomes `size`, the other int(size * ratio).
            size = self.resize_to if self.resize_to is not None else max(crop_h, crop_w)
            assert isinstance(size, int)
            # The same float expressions as the official code, so truncation agrees on every size.
            ratio = float(height) / float(width)
            new_h = max(1, int(size * ratio) if ratio <= 1 else size)
            new_w = max(1, int(size / ratio) if ratio > 1 else size)
            return new_w, new_h
        shortest = self.resize_to if self.resize_to is not None else min(crop_h, crop_w)
        assert isinstance(shortest, int)
        if width <= height:
            return shortest, max(shortest, round(height * shortest / width))
        return max(shortest, round(width * shortest / height)), shortest

    def _resized(self, image: Image.Image, max_pixels: int) -> Image.Image:
        new_size = self.resized_size(*image.size)
        if new_size[0] * new_size[1] > max_pixels:
            raise ResizeTooLarge(
                f"{image.width}x{image.height} would be resized to {new_size[0]}x{new_size[1]} = "
                f"{new_size[0] * new_size[1]:,} pixels, over the {max_pixels:,}-pixel limit"
            )
        if self.resize == "none" or new_size == image.size:
            return image
        return image.resize(new_size, RESAMPLE[self.resample])

    def _cropped(self, image: Image.Image) -> Image.Image:
        height, width = self.crop_hw
        w, h = image.size
        if (w, h) == (width, height):
            return image
        if w < width or h < height:
            # Only reachable with resize="none" on a small image: pad by scaling up instead of
            # failing, so every item still gets a vector of the right shape.
            image = image.resize((max(w, width), max(h, height)), RESAMPLE[self.resample])
            w, h = image.size
        left = int(round((w - width) / 2.0))
        top = int(round((h - height) / 2.0))
        return image.crop((left, top, left + width, top + height))

    def __call__(self, image: Image.Image, max_resized_pixels: int = MAX_RESIZED_PIXELS) -> np.ndarray:
        """Raises ResizeTooLarge (before allocating) when the resize would exceed the limit."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self._resized(image, max_resized_pixels)
        if self.resize != "longer":
            image = self._cropped(image)
        if self.jpeg_quality is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
            buffer.seek(0)
            image = Image.open(buffer)
            image.load()
        pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
        # One fused multiply-add: (x * rescale - mean) / std == x * a + b.
        std = np.asarray(self.std, dtype=np.float32)
        scale = np.float32(self.rescale) / std
        offset = -np.asarray(self.mean, dtype=np.float32) / std
        pixels = pixels * scale + offset
        if self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        if self.layout == "CHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ",".join(f"{v:g}" for v in values) + ")"
