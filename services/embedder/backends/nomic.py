"""Nomic Embed Multimodal 3B through colpali-engine (BiQwen2_5 + BiQwen2_5_Processor).

The checkpoint is a LoRA adapter on Qwen2.5-VL-3B; BiQwen2_5 pools the last token of the left-padded
sequence and L2-normalises it. colpali-engine imports transformers' torchvision-backed Qwen2-VL
image processor at import time and requires torchvision, which the embedder's main environment
must not install, so this backend lives behind the `nomic` extra and says so when missing.
"""

from __future__ import annotations

import json
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
    quiet_transformers,
    require_module,
    resolve_weights,
    weights_revision,
)
from services.embedder.backends.provenance import checkpoint_files, model_fingerprint

if TYPE_CHECKING:
    from services.embedder.backends.options import NomicOptions
    from services.embedder.backends.registry import Runtime


@dataclass(frozen=True)
class NomicSpec:
    name: str
    model_id: str
    max_batch: int = 8


def check_adapter_base(path: Path) -> str | None:
    """For an adapter checkpoint, make sure its base model is on disk too; returns the base id."""
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        return None
    if Path(base).expanduser().is_dir():
        return base
    resolve_weights(
        base,
        None,
        hint=f"{path} is a LoRA adapter: its base model {base} must be available offline as well "
        "(or point adapter_config.json's base_model_name_or_path at a local copy).",
    )
    return base


def checkpoint_key_mapping() -> dict[str, str]:
    """The key_mapping to hand BiQwen2_5.from_pretrained. colpali-engine 0.3.18 fills a missing one
    from Qwen2_5_VLModel._checkpoint_conversion_mapping, which transformers 5.x no longer has
    (AttributeError before any weight is read); there the checkpoint conversions are built into
    from_pretrained and an empty mapping adds none, so this is the same load on either."""
    from transformers.models.qwen2_5_vl import Qwen2_5_VLModel

    return dict(getattr(Qwen2_5_VLModel, "_checkpoint_conversion_mapping", None) or {})


def processor_settings(processor: Any) -> Any:
    image_processor = getattr(processor, "image_processor", processor)
    return image_processor.to_dict() if hasattr(image_processor, "to_dict") else type(processor).__name__


class NomicMultimodalBackend(ModelBackend):
    def __init__(self, spec: NomicSpec, weights: WeightsPath | None = None, device: str = "cpu") -> None:
        purpose = f"backend {spec.name} (colpali-engine)"
        colpali = require_module("colpali_engine.models", extra="nomic", purpose=purpose)
        require_module("peft", extra="nomic", purpose=purpose)
        import torch

        self._spec = spec
        self._path = resolve_weights(spec.model_id, weights, required=("config.json|adapter_config.json",))
        self._base = check_adapter_base(self._path)
        self._device = torch.device(device)
        self._dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        with quiet_transformers():
            model = colpali.BiQwen2_5.from_pretrained(
                str(self._path),
                dtype=self._dtype,
                local_files_only=True,
                key_mapping=checkpoint_key_mapping(),
            )
            self._processor = colpali.BiQwen2_5_Processor.from_pretrained(
                str(self._path), local_files_only=True
            )
        self._model = model.to(self._device).eval()
        self._revision = weights_revision(self._path)
        self._dim = int(self.forward([self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))]).shape[1])
        # The adapter's files are hashed; its base model is identified by the id the adapter names.
        self._fingerprint = model_fingerprint(
            backend="colpali-engine",
            weights=checkpoint_files(self._path),
            preprocessing=processor_settings(self._processor),
            pooling="last token, L2-normalised",
            compute_dtype=str(self._dtype).removeprefix("torch."),
            base_model=self._base or "",
            libraries=("torch", "transformers", "peft", "colpali-engine", "pillow"),
        )

    def info(self) -> ModelInfo:
        image_processor = getattr(self._processor, "image_processor", None)
        size = getattr(image_processor, "size", None)
        return ModelInfo(
            name=self._spec.name,
            dim=self._dim,
            preprocessing=f"BiQwen2_5_Processor.process_images (Qwen2.5-VL smart_resize; size {size})",
            normalized=True,
            revision=self._revision,
            max_batch=self._spec.max_batch,
            backend="colpali-engine",
            details={
                "model_id": self._spec.model_id,
                "base_model": self._base or "",
                "pooling": "last token, L2-normalised",
                "weights": str(self._path),
                "device": str(self._device),
                "compute_dtype": str(self._dtype).removeprefix("torch."),
            },
            fingerprint=self._fingerprint,
        )

    def preprocess(self, image: Image.Image) -> Image.Image:
        # process_images pads the whole batch to one length, so it runs in forward on the batch.
        return image.convert("RGB")

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, getattr(self, "_dim", 0)), dtype=np.float32)
        batch = self._processor.process_images(list(inputs)).to(self._device)
        with torch.inference_mode():
            vectors = self._model(**batch)
        return vectors.float().cpu().numpy().astype(np.float32, copy=False)


def load(name: str, options: NomicOptions, runtime: Runtime) -> ModelBackend:
    """Loader of kind "nomic" (options: services.embedder.backends.options.NomicOptions)."""
    apply_threads(runtime.threads)
    nomic_spec = NomicSpec(name=name, model_id=options.model_id or "", max_batch=runtime.max_batch)
    return NomicMultimodalBackend(nomic_spec, weights=options.weights, device=runtime.device)
