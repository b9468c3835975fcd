"""PE-Core (and other open_clip image towers) through open_clip, with the transform open_clip
returns alongside the model so the two cannot drift.

open_clip imports torchvision, which the embedder's main environment must not install (its wheel
drags its own torch); so this backend lives behind the `openclip` extra and says so when missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.hf import (
    WeightsPath,
    apply_threads,
    require_module,
    resolve_weights,
    weights_revision,
)
from services.embedder.backends.provenance import checkpoint_files, model_fingerprint

OPEN_CLIP_CONFIG = "open_clip_config.json"

if TYPE_CHECKING:
    from services.embedder.backends.options import OpenClipOptions
    from services.embedder.backends.registry import Runtime


@dataclass(frozen=True)
class OpenClipSpec:
    name: str
    model_id: str  # hub repo holding open_clip_config.json + open_clip_model.safetensors
    open_clip_name: str  # built-in config name, recorded for provenance
    max_batch: int = 16


def describe_transform(transform: Any) -> str:
    """The torchvision Compose open_clip built, step by step (sizes, interpolation, mean/std)."""
    steps = []
    for step in getattr(transform, "transforms", [transform]):
        kind = type(step).__name__
        if hasattr(step, "size"):
            interpolation = getattr(step, "interpolation", None)
            interp = f" {getattr(interpolation, 'value', interpolation)}" if interpolation is not None else ""
            steps.append(f"{kind} {step.size}{interp}")
        elif hasattr(step, "mean"):
            steps.append(f"{kind} mean={list(step.mean)} std={list(step.std)}")
        elif kind not in ("function",):
            steps.append(kind)
    return "open_clip: " + "; ".join(steps)


class OpenClipImageBackend(ModelBackend):
    def __init__(self, spec: OpenClipSpec, weights: WeightsPath | None = None, device: str = "cpu") -> None:
        open_clip = require_module("open_clip", extra="openclip", purpose=f"backend {spec.name} (open_clip)")
        import torch

        self._spec = spec
        self._path: Path = resolve_weights(spec.model_id, weights, required=(OPEN_CLIP_CONFIG,))
        self._device = torch.device(device)
        model, _, transform = open_clip.create_model_and_transforms(
            f"local-dir:{self._path}", device=self._device
        )
        self._model = model.eval()
        self._transform = transform
        self._preprocessing = describe_transform(transform)
        self._revision = weights_revision(self._path)
        self._dim = int(self.forward([self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))]).shape[1])
        self._fingerprint = model_fingerprint(
            backend="open_clip",
            weights=checkpoint_files(self._path),  # open_clip_config.json + the safetensors
            preprocessing=self._preprocessing,
            pooling="encode_image",
            libraries=("torch", "open_clip_torch", "torchvision", "pillow"),
        )

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self._spec.name,
            dim=self._dim,
            preprocessing=self._preprocessing,
            normalized=False,
            revision=self._revision,
            max_batch=self._spec.max_batch,
            backend="open_clip",
            details={
                "model_id": self._spec.model_id,
                "open_clip_name": self._spec.open_clip_name,
                "weights": str(self._path),
                "device": str(self._device),
                "compute_dtype": "float32",
            },
            fingerprint=self._fingerprint,
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        # open_clip's eval transform is a torchvision Compose of stateless steps: thread-safe.
        return np.asarray(self._transform(image.convert("RGB")), dtype=np.float32)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, getattr(self, "_dim", 0)), dtype=np.float32)
        batch = torch.from_numpy(np.stack(inputs)).to(self._device)
        with torch.inference_mode():
            features = self._model.encode_image(batch)
        return features.float().cpu().numpy().astype(np.float32, copy=False)


def load(name: str, options: OpenClipOptions, runtime: Runtime) -> ModelBackend:
    """Loader of kind "open_clip" (options: services.embedder.backends.options.OpenClipOptions)."""
    apply_threads(runtime.threads)
    open_clip_spec = OpenClipSpec(
        name=name,
        model_id=options.model_id or "",
        open_clip_name=options.open_clip_name,
        max_batch=runtime.max_batch,
    )
    return OpenClipImageBackend(open_clip_spec, weights=options.weights, device=runtime.device)
