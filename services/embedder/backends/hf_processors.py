"""The checkpoint's own image processor for the transformers backends: loaded from
preprocessor_config.json (with a torch port of the official transform where transformers'
processor departs from it), described in words for ModelInfo.preprocessing, and recorded as data
for the fingerprint."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.embedder.backends.errors import BackendLoadError, WeightsNotFoundError


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (e.g. SigLIP's unused text-tower weights)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _size_text(size: Any) -> str:
    values = {k: v for k, v in dict(_as_mapping(size)).items() if v is not None}
    if set(values) == {"shortest_edge"}:
        return f"shortest edge {values['shortest_edge']}"
    if set(values) == {"height", "width"}:
        return f"{values['height']}x{values['width']} (aspect not kept)"
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, int):
        return {"shortest_edge": value}
    names = ("height", "width", "shortest_edge", "longest_edge", "min_pixels", "max_pixels")
    return {name: getattr(value, name, None) for name in names}


def _resample_text(resample: Any) -> str:
    from transformers.image_utils import PILImageResampling

    try:
        return PILImageResampling(int(resample)).name.lower()
    except (TypeError, ValueError):
        return str(getattr(resample, "value", resample)).lower()


def _floats(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def processor_record(processor: Any) -> Any:
    """The processor's settings as JSON data (for fingerprints): transformers' own to_dict(), or
    the fields of a torch port."""
    if hasattr(processor, "to_dict"):
        return processor.to_dict()
    return {"class": type(processor).__name__, "describe": describe_processor(processor)}


def describe_processor(processor: Any) -> str:
    """A human-readable account of what an image processor does, read from its settings."""
    if hasattr(processor, "describe"):
        return processor.describe()
    steps: list[str] = []
    if getattr(processor, "do_resize", False):
        steps.append(f"resize {_size_text(processor.size)} {_resample_text(processor.resample)}")
    if getattr(processor, "do_center_crop", False):
        steps.append(f"center crop {_size_text(processor.crop_size).removesuffix(' (aspect not kept)')}")
    if getattr(processor, "do_rescale", False):
        factor = float(processor.rescale_factor)
        steps.append("rescale 1/255" if abs(factor - 1 / 255) < 1e-9 else f"rescale x{factor:.6g}")
    if getattr(processor, "do_normalize", False):
        steps.append(f"normalize mean={_floats(processor.image_mean)} std={_floats(processor.image_std)}")
    return f"{type(processor).__name__}: " + "; ".join(steps)


@dataclass(frozen=True)
class Uint8ResizeRescaleNormalize:
    """DINOv3's official transform (facebookresearch/dinov3 README, make_transform): the uint8
    image resized to a fixed size with antialiasing, then scaled to 0..1, then normalised.
    transformers' DINOv3ViTImageProcessor rescales *before* resizing (a float resize), which moves
    pixels by up to one uint8 step; this port does what torchvision's v2.Resize does on a uint8
    tensor (its native uint8 kernel where torchvision uses one, else a float resize rounded back),
    on torch alone, so the main environment (no torchvision) gets the same pixels. Driven by the
    checkpoint's preprocessor_config.json."""

    height: int
    width: int
    mode: str
    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    _MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample codes that torch can antialias

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Uint8ResizeRescaleNormalize:
        size = config.get("size") or {"height": 224, "width": 224}
        resample = int(config.get("resample", 2))
        if resample not in cls._MODES:
            raise BackendLoadError(f"resample={resample} has no antialiased torch equivalent")
        return cls(
            height=int(size["height"]),
            width=int(size["width"]),
            mode=cls._MODES[resample],
            rescale_factor=float(config.get("rescale_factor", 1 / 255))
            if config.get("do_rescale", True)
            else 1.0,
            mean=tuple(config.get("image_mean", (0.485, 0.456, 0.406))),
            std=tuple(config.get("image_std", (0.229, 0.224, 0.225))),
        )

    def _native_uint8(self) -> bool:
        """Whether torchvision resizes this mode's uint8 images natively on this CPU
        (torchvision.transforms.v2.functional._geometry._do_native_uint8_resize_on_cpu)."""
        import torch

        if self.mode == "bicubic":
            return True
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
            "aarch64",
            "arm64",
        )

    def resize_uint8(self, image: Image.Image) -> Any:
        """(1, 3, H, W) uint8 tensor of the resized image, as torchvision's v2.Resize makes it."""
        import torch
        import torch.nn.functional as F

        # HWC -> 1CHW by a view: channels-last memory, as torchvision's ToImage leaves it.
        pixels = (
            torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
        )
        size = (self.height, self.width)
        if self._native_uint8():
            return F.interpolate(pixels, size=size, mode=self.mode, align_corners=False, antialias=True)
        resized = F.interpolate(
            pixels.float(), size=size, mode=self.mode, align_corners=False, antialias=True
        )
        if self.mode == "bicubic":
            resized = resized.clamp_(0, 255)
        return resized.round_().to(torch.uint8)

    def __call__(self, images: Sequence[Image.Image], return_tensors: str = "np") -> dict[str, np.ndarray]:
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        out = []
        for image in images:
            chw = self.resize_uint8(image).float() * self.rescale_factor
            out.append(((chw - mean) / std)[0].contiguous().numpy())
        return {"pixel_values": np.stack(out)}

    def describe(self) -> str:
        rescale = "1/255" if abs(self.rescale_factor - 1 / 255) < 1e-9 else f"x{self.rescale_factor:.6g}"
        return (
            f"DINOv3 official transform (torch port of DINOv3ViTImageProcessor's config): resize "
            f"{self.height}x{self.width} (aspect not kept) {self.mode} antialias on uint8; rescale {rescale}; "
            f"normalize mean={_floats(self.mean)} std={_floats(self.std)}"
        )


# image_processor_type -> the model's official preprocessing where transformers' processor departs
# from it; used in every environment (with or without torchvision), so the numbers never depend on it.
OFFICIAL_PROCESSORS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "DINOv3ViTImageProcessor": Uint8ResizeRescaleNormalize.from_config,
}


def load_image_processor(path: Path) -> Any:
    """The checkpoint's own preprocessing: the official port where transformers' processor departs
    from the model's published transform (OFFICIAL_PROCESSORS), else transformers' PIL
    implementation when it has one (same numbers with or without torchvision), else its default."""
    from transformers import AutoImageProcessor

    config_file = path / "preprocessor_config.json"
    if not config_file.is_file():
        raise WeightsNotFoundError(
            f"{path} has no preprocessor_config.json: the model's own preprocessing is unknown"
        )
    config = json.loads(config_file.read_text())
    kind = str(config.get("image_processor_type", "")).removesuffix("Fast")
    if kind in OFFICIAL_PROCESSORS:
        return OFFICIAL_PROCESSORS[kind](config)
    last_error: Exception | None = None
    with quiet_transformers():
        for kwargs in ({"backend": "pil"}, {}):
            try:
                return AutoImageProcessor.from_pretrained(str(path), local_files_only=True, **kwargs)
            except (ImportError, ValueError, KeyError) as exc:
                last_error = exc
    raise BackendLoadError(
        f"cannot load image processor {kind or '?'} from {path}: {last_error}"
    ) from last_error
