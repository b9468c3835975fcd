"""Jina Embeddings v4 (Qwen2.5-VL-3B + LoRA task adapters) through its own remote code.

The checkpoint ships its model class as Python files next to the weights (trust_remote_code) and
imports peft. Nothing can be downloaded at run time, so the directory must already hold those
files; this module checks that before handing the directory to transformers, so a missing file
or package gets a sentence saying what to provide instead of a stack trace from deep inside.
"""

from __future__ import annotations

import inspect
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
    BackendLoadError,
    WeightsPath,
    apply_threads,
    quiet_transformers,
    require_module,
    resolve_weights,
    weights_revision,
)
from services.embedder.backends.provenance import checkpoint_files, model_fingerprint

if TYPE_CHECKING:
    from services.embedder.backends.options import JinaOptions
    from services.embedder.backends.registry import Runtime


class RemoteCodeError(BackendLoadError):
    """The weights directory lacks the model's own Python code, or it is not the expected API."""


@dataclass(frozen=True)
class JinaSpec:
    name: str
    model_id: str
    task: str = "retrieval"
    min_pixels: int = 3136
    max_pixels: int = 602112
    max_batch: int = 8


def check_remote_code(path: Path, model_id: str) -> list[str]:
    """The Python files config.json's auto_map needs, all present in `path`; else RemoteCodeError."""
    config = json.loads((path / "config.json").read_text())
    auto_map = config.get("auto_map") or {}
    if "AutoModel" not in auto_map:
        raise RemoteCodeError(
            f"{path}/config.json has no auto_map entry for AutoModel: not the remote-code checkpoint "
            f"of {model_id}. Copy the complete repository snapshot (config.json, *.py, weights, adapters/)."
        )
    files = []
    for reference in auto_map.values():
        for ref in reference if isinstance(reference, list) else [reference]:
            if not ref:
                continue
            if "--" in ref:
                raise RemoteCodeError(
                    f"auto_map entry {ref!r} points at another repository; offline loading needs it local"
                )
            files.append(ref.rsplit(".", 1)[0] + ".py")
    missing = sorted({f for f in files if not (path / f).is_file()})
    if missing:
        raise RemoteCodeError(
            f"{model_id} needs its remote code next to the weights, but {path} lacks {', '.join(missing)}. "
            f"Copy the complete repository snapshot of {model_id} (including the *.py files) into {path}."
        )
    return sorted(set(files))


def to_vectors(output: Any) -> np.ndarray:
    """encode_image returns a list of tensors, a tensor or an array depending on flags; -> (N, D)."""
    if isinstance(output, (list, tuple)):
        rows = [np.asarray(_to_numpy(row), dtype=np.float32).reshape(-1) for row in output]
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return np.asarray(_to_numpy(output), dtype=np.float32)


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return value


class JinaV4Backend(ModelBackend):
    def __init__(self, spec: JinaSpec, weights: WeightsPath | None = None, device: str = "cpu") -> None:
        transformers = require_module("transformers", extra="embedder", purpose=f"backend {spec.name}")
        require_module(
            "peft", extra="embedder", purpose=f"backend {spec.name} (its remote code imports peft)"
        )
        import torch

        self._spec = spec
        self._path = resolve_weights(spec.model_id, weights, required=("config.json",))
        self._code_files = check_remote_code(self._path, spec.model_id)
        self._device = torch.device(device)
        # bf16 is how the checkpoint is published and run on GPUs; CPUs get fp32 for speed and accuracy
        self._dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        with quiet_transformers():
            model = transformers.AutoModel.from_pretrained(
                str(self._path), trust_remote_code=True, local_files_only=True, dtype=self._dtype
            )
        self._model = model.to(self._device).eval()
        self._encode_kwargs = self._encode_arguments(self._model)
        self._pixels = self._pixel_limits()
        self._revision = weights_revision(self._path)
        self._dim = int(self.forward([self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))]).shape[1])
        self._fingerprint = model_fingerprint(
            backend="jina-remote-code",
            weights=checkpoint_files(self._path),  # includes the remote code and the adapters
            preprocessing={"min_pixels": self._pixels[0], "max_pixels": self._pixels[1]},
            pooling="encode_image(return_multivector=False)",
            compute_dtype=str(self._dtype).removeprefix("torch."),
            task=spec.task,
            libraries=("torch", "transformers", "peft", "pillow"),
        )

    def _encode_arguments(self, model: Any) -> dict[str, Any]:
        encode = getattr(model, "encode_image", None)
        if encode is None:
            raise RemoteCodeError(
                f"{type(model).__name__} from {self._path} has no encode_image(): not {self._spec.model_id}"
            )
        params = inspect.signature(encode).parameters
        for needed in ("task", "return_multivector"):
            if needed not in params:
                raise RemoteCodeError(
                    f"{type(model).__name__}.encode_image has no {needed!r} argument: "
                    f"not {self._spec.model_id}"
                )
        self._takes_batch_size = "batch_size" in params
        wanted = {
            "task": self._spec.task,
            "return_multivector": False,
            "return_numpy": False,
            "max_pixels": self._spec.max_pixels,
        }
        return {k: v for k, v in wanted.items() if k in params}

    def _pixel_limits(self) -> tuple[int, int]:
        """min/max pixels as the checkpoint's processor config states them (spec values otherwise)."""
        config_file = self._path / "preprocessor_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        low = int(config.get("min_pixels", self._spec.min_pixels))
        high = int(self._encode_kwargs.get("max_pixels", config.get("max_pixels", self._spec.max_pixels)))
        return low, high

    def info(self) -> ModelInfo:
        low, high = self._pixels
        return ModelInfo(
            name=self._spec.name,
            dim=self._dim,
            preprocessing=(
                f"Qwen2.5-VL dynamic resolution inside encode_image: smart_resize to multiples of 28, "
                f"{low:,}..{high:,} pixels, processor from {self._path.name}"
            ),
            normalized=True,
            revision=self._revision,
            max_batch=self._spec.max_batch,
            backend="jina-remote-code",
            details={
                "model_id": self._spec.model_id,
                "task": self._spec.task,
                "return_multivector": "false",
                "weights": str(self._path),
                "device": str(self._device),
                "compute_dtype": str(self._dtype).removeprefix("torch."),
                "remote_code": ", ".join(self._code_files),
            },
            fingerprint=self._fingerprint,
        )

    def preprocess(self, image: Image.Image) -> Image.Image:
        # encode_image takes PIL images and batches them itself; per item only the RGB copy is made.
        return image.convert("RGB")

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, getattr(self, "_dim", 0)), dtype=np.float32)
        kwargs = dict(self._encode_kwargs)
        if self._takes_batch_size:  # one call per batch the batcher formed, no re-batching inside
            kwargs["batch_size"] = len(inputs)
        with torch.inference_mode():
            output = self._model.encode_image(images=list(inputs), **kwargs)
        vectors = to_vectors(output)
        if vectors.shape[0] != len(inputs):
            raise RuntimeError(f"encode_image returned {vectors.shape[0]} vectors for {len(inputs)} images")
        return vectors


def load(name: str, options: JinaOptions, runtime: Runtime) -> ModelBackend:
    """Loader of kind "jina" (options: services.embedder.backends.options.JinaOptions)."""
    apply_threads(runtime.threads)
    jina_spec = JinaSpec(
        name=name,
        model_id=options.model_id or "",
        task=options.task,
        min_pixels=options.min_pixels,
        max_pixels=options.max_pixels,
        max_batch=runtime.max_batch,
    )
    return JinaV4Backend(jina_spec, weights=options.weights, device=runtime.device)
