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

ResizeMode = Literal["shortest", "squash", "none"]


@dataclass(frozen=True)
class Preprocessing:
    """What one model expects.

    crop_size: final (height, width) after the centre crop (an int means square).
    resize: "shortest" scales the shorter edge to `resize_to` keeping aspect; "squash" resizes to
        exactly `resize_to` x `resize_to` (or (h, w)) ignoring aspect; "none" skips resizing.
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
        if self.resize not in ("shortest", "squash", "none"):
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if self.resize == "shortest" and isinstance(self.resize_to, tuple):
            raise ValueError("resize='shortest' takes one edge length, not a (h, w) pair")
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
        if self.resize == "shortest":
            steps = [f"resize shortest edge to {target} {self.resample}"]
        elif self.resize == "squash":
            th, tw = (target, target) if isinstance(target, int) else target
            steps = [f"resize to {th}x{tw} {self.resample} (aspect not kept)"]
        else:
            steps = []
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

    def _resized(self, image: Image.Image) -> Image.Image:
        resample = RESAMPLE[self.resample]
        height, width = self.crop_hw
        if self.resize == "none":
            return image
        if self.resize == "squash":
            target = self.resize_to if self.resize_to is not None else (height, width)
            th, tw = (target, target) if isinstance(target, int) else target
            return image.resize((tw, th), resample) if image.size != (tw, th) else image
        shortest = self.resize_to if self.resize_to is not None else min(height, width)
        assert isinstance(shortest, int)
        w, h = image.size
        if w <= h:
            new_w, new_h = shortest, max(shortest, round(h * shortest / w))
        else:
            new_w, new_h = max(shortest, round(w * shortest / h)), shortest
        return image.resize((new_w, new_h), resample) if (new_w, new_h) != (w, h) else image

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

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self._cropped(self._resized(image))
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
