"""Hugging Face transformers image backends: DINOv2, DINOv3, SigLIP2 (FixRes) and any AutoModel.

This module: weights on disk (offline hub cache or a directory) and the backend; the image
processors (load, describe, DINOv3's torch port) are in hf_processors.py.

Every model is preprocessed by its own image processor, read from the weights directory
(`preprocessor_config.json`), never by a shared pipeline. Weights come from a local directory or
an offline Hugging Face cache; nothing is downloaded. `transformers` and `torch` are imported
only when a backend is built, so importing this module is cheap (the other model backends reuse
its weight resolution and errors).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend

# The errors are imported from here by the other hub backends and tests.
from services.embedder.backends.errors import (
    BackendLoadError,
    MissingExtraError,
    WeightsNotFoundError,
)
from services.embedder.backends.hf_processors import (
    describe_processor,
    load_image_processor,
    processor_record,
    quiet_transformers,
)
from services.embedder.backends.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from services.embedder.backends.provenance import checkpoint_files, model_fingerprint

if TYPE_CHECKING:
    from services.embedder.backends.options import TransformersOptions
    from services.embedder.backends.registry import Runtime

log = logging.getLogger(__name__)

WeightsPath = str | os.PathLike[str]


# --------------------------------------------------------------------------------------- errors
# (defined in errors.py; imported here too because the other hub backends import them from here)


def require_module(module: str, *, extra: str, purpose: str) -> Any:
    """Import `module` or raise MissingExtraError naming the vsbench extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package '{module}', which is not importable ({exc}). "
            f"Install the extra: pip install 'vsbench[{extra}]'"
        ) from exc


# ------------------------------------------------------------------------------ weights on disk


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment at call time."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _cached_snapshot(model_id: str, cache_dir: Path) -> Path | None:
    """The snapshot directory of `model_id` in a hub cache, without touching the network."""
    if not (cache_dir / ("models--" + model_id.replace("/", "--"))).is_dir():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, cache_dir=str(cache_dir), local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def resolve_weights(
    model_id: str | None,
    weights: WeightsPath | None,
    *,
    required: Sequence[str] = ("config.json",),
    hint: str = "",
) -> Path:
    """Find the directory holding a model's files.

    `weights` may be the model directory itself or a Hugging Face hub cache root; without it the
    hub cache named by HF_HUB_CACHE / HF_HOME is searched for `model_id`. A directory counts when
    it holds every file in `required` ("a|b" accepts either name).
    """
    searched: list[str] = []
    if weights is None and model_id and Path(model_id).expanduser().is_dir():
        weights, model_id = model_id, None  # the spec names a local directory, not a hub id

    def missing(directory: Path) -> list[str]:
        return [e for e in required if not any((directory / name).exists() for name in e.split("|"))]

    def usable(directory: Path) -> bool:
        return directory.is_dir() and not missing(directory)

    if weights is not None:
        path = Path(weights).expanduser()
        if usable(path):
            return path
        if model_id and path.is_dir():
            snapshot = _cached_snapshot(model_id, path)
            if snapshot is not None and usable(snapshot):
                return snapshot
        state = "does not exist" if not path.exists() else f"lacks {', '.join(missing(path))}"
        searched.append(f"{path} ({state})")
    elif model_id:
        cache = hf_cache_dir()
        snapshot = _cached_snapshot(model_id, cache)
        if snapshot is not None and usable(snapshot):
            return snapshot
        state = (
            "no snapshot" if snapshot is None else f"snapshot {snapshot} lacks {', '.join(missing(snapshot))}"
        )
        searched.append(f"Hugging Face cache {cache} ({state} of {model_id})")

    what = model_id or "this model (it has no default Hugging Face id)"
    fetch = (
        f" On a machine with internet access run `hf download {model_id} --local-dir DIR` and copy DIR "
        f"here, or copy a hub cache that holds {model_id} and point HF_HUB_CACHE (or HF_HOME) at it "
        "with HF_HUB_OFFLINE=1."
        if model_id
        else ""
    )
    holding = ", ".join(entry.replace("|", " or ") for entry in required)
    raise WeightsNotFoundError(
        f"No weights found for {what}. Searched: {'; '.join(searched) or 'nothing (no path given)'}. "
        f"Provide them with --weights PATH: a directory holding {holding} and the weight files, "
        f"or a Hugging Face hub cache root.{fetch}{(' ' + hint) if hint else ''}"
    )


def weights_revision(path: Path) -> str:
    """The hub commit when `path` is a cache snapshot, else a fingerprint of the directory listing
    (file names and sizes plus the small JSON configs' bytes); weights are not hashed in full."""
    if path.parent.name == "snapshots":
        return path.name
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\n".encode())
        if file.suffix == ".json" and size <= 1 << 20:
            digest.update(file.read_bytes())
    return "dir-sha256:" + digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------ backend

# pooling name -> how the global embedding is read from the model's output
POOLINGS: dict[str, Callable[[Any], Any]] = {
    "pooler": lambda out: out.pooler_output,
    "cls": lambda out: out.last_hidden_state[:, 0],
    "mean": lambda out: out.last_hidden_state.mean(dim=1),
}


@dataclass(frozen=True)
class HFImageSpec:
    name: str
    model_id: str | None  # Hugging Face id searched in the offline cache when no weights are given
    model_class: str = "AutoModel"
    pooling: str = "pooler"
    max_batch: int = 64
    dtype: str = "float32"  # torch dtype name the weights and inputs are computed in
    # Preprocessing as data instead of the checkpoint's processor (ILIAS's longer-side resize).
    preprocessing: Preprocessing | None = None


class TransformersImageBackend(ModelBackend):
    """A transformers vision model, its own image processor and a named pooling."""

    def __init__(self, spec: HFImageSpec, weights: WeightsPath | None = None, device: str = "cpu") -> None:
        if spec.pooling not in POOLINGS:
            raise BackendLoadError(
                f"unknown pooling {spec.pooling!r} for {spec.name}; known: {', '.join(POOLINGS)}"
            )
        require_module("transformers", extra="embedder", purpose=f"backend {spec.name}")
        import torch
        import transformers

        self._spec = spec
        self._path = resolve_weights(
            spec.model_id, weights, required=("config.json", "preprocessor_config.json")
        )
        self._device = torch.device(device)
        self._dtype = getattr(torch, spec.dtype)
        model_class = getattr(transformers, spec.model_class, None)
        if model_class is None:
            raise BackendLoadError(
                f"transformers {transformers.__version__} has no class {spec.model_class!r} ({spec.name})"
            )
        with quiet_transformers():
            model = model_class.from_pretrained(str(self._path), local_files_only=True, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        self._processor = load_image_processor(self._path)
        self._override = _with_checkpoint_normalisation(spec.preprocessing, self._processor)
        self._preprocessing = (
            self._override.describe() if self._override is not None else describe_processor(self._processor)
        )
        self._thread_state = threading.local()
        self._revision = weights_revision(self._path)
        probe = self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))
        self._dim = int(self._embed([probe]).shape[1])
        self._fingerprint = model_fingerprint(
            backend="transformers",
            weights=checkpoint_files(self._path),
            preprocessing=self._override if self._override is not None else processor_record(self._processor),
            pooling=spec.pooling,
            compute_dtype=spec.dtype,
            model_class=spec.model_class,
            libraries=("torch", "transformers", "pillow"),
        )

    def info(self) -> ModelInfo:
        import transformers

        return ModelInfo(
            name=self._spec.name,
            dim=self._dim,
            preprocessing=self._preprocessing,
            normalized=False,
            revision=self._revision,
            max_batch=self._spec.max_batch,
            backend="transformers",
            details={
                "model_id": self._spec.model_id or "",
                "model_class": type(self._model).__name__,
                "pooling": self._spec.pooling,
                "weights": str(self._path),
                "device": str(self._device),
                "compute_dtype": self._spec.dtype,
                "transformers": transformers.__version__,
            },
            fingerprint=self._fingerprint,
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if self._override is not None:  # preprocessing as data (thread-safe, no processor)
            return self._override(image)
        # Each worker thread gets its own processor copy: transformers does not promise that
        # processors are safe to call concurrently.
        processor = getattr(self._thread_state, "processor", None)
        if processor is None:
            processor = self._thread_state.processor = copy.deepcopy(self._processor)
        pixels = processor(images=[image.convert("RGB")], return_tensors="np")["pixel_values"]
        return np.asarray(pixels[0], dtype=np.float32)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._embed(inputs)
        if vectors.shape[1] != self._dim:
            raise RuntimeError(f"{self._spec.name} returned width {vectors.shape[1]}, expected {self._dim}")
        return vectors

    def _embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.stack(inputs)).to(self._device, self._dtype)
        with torch.inference_mode():
            output = self._model(pixel_values=batch)
            pooled = POOLINGS[self._spec.pooling](output)
        return pooled.float().cpu().numpy().astype(np.float32, copy=False)

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]


def apply_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads when the server asks for a number (None: library default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def load(name: str, options: TransformersOptions, runtime: Runtime) -> ModelBackend:
    """Loader of kind "hf" (options: services.embedder.backends.options.TransformersOptions)."""
    apply_threads(runtime.threads)
    hf_spec = HFImageSpec(
        name=name,
        model_id=options.model_id,
        model_class=options.model_class,
        pooling=options.pooling,
        max_batch=runtime.max_batch,
        dtype=options.dtype,
        preprocessing=options.preprocessing,
    )
    return TransformersImageBackend(hf_spec, weights=options.weights, device=runtime.device)


def _with_checkpoint_normalisation(preprocessing: Preprocessing | None, processor: Any) -> Preprocessing | None:
    """An override that left mean/std at their ImageNet defaults takes the checkpoint's own
    (SigLIP's 0.5 / 0.5, say): the override is meant to change the geometry, not the model's input
    statistics."""
    if preprocessing is None:
        return None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None or (preprocessing.mean, preprocessing.std) != (IMAGENET_MEAN, IMAGENET_STD):
        return preprocessing
    return dataclasses.replace(preprocessing, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
