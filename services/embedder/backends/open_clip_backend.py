"""Any open_clip image tower (PE-Core, CLIP, SigLIP, ...) through open_clip, with the transform
open_clip returns alongside the model as the preprocessing, so the two cannot drift.

Where the weights come from (nothing is ever downloaded):
- a checkpoint directory holding open_clip_config.json (a hub repo such as timm/PE-Core-L-14-336,
  given as a directory or found in the offline Hugging Face cache): open_clip's "local-dir:" loader,
  with the preprocessing that config states;
- `open_clip_name` + `pretrained` tag: the tag's file in the offline Hugging Face cache (or, for
  URL-only tags, open_clip's own download folder ~/.cache/clip), preprocessed as the tag says
  (mean/std, interpolation, resize mode), exactly what `create_model_and_transforms(name, tag)` does;
- `open_clip_name` + a weights file (`weights`), optionally with the tag whose preprocessing it needs.

open_clip imports torchvision, which must come from the same index as torch (docs/development.md),
so this backend lives behind the `openclip` extra and says so when missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from services.common.fingerprint import file_sha256
from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.errors import BackendLoadError, WeightsNotFoundError
from services.embedder.backends.hf import (
    apply_threads,
    hf_cache_dir,
    require_module,
    resolve_weights,
    weights_revision,
)
from services.embedder.backends.provenance import checkpoint_files, model_fingerprint

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's names for a hub repo's weights (open_clip.constants HF_WEIGHTS_NAME / HF_SAFE_WEIGHTS_NAME)
HUB_WEIGHTS = "open_clip_pytorch_model.bin"
HUB_SAFE_WEIGHTS = "open_clip_model.safetensors"
URL_CACHE = "~/.cache/clip"  # where open_clip's download_pretrained_from_url keeps URL-only tags
# pretrained-tag keys that are preprocessing, -> create_model_and_transforms keyword
TAG_PREPROCESSING = {
    "mean": "image_mean",
    "std": "image_std",
    "interpolation": "image_interpolation",
    "resize_mode": "image_resize_mode",
}

if TYPE_CHECKING:
    from services.embedder.backends.options import OpenClipOptions
    from services.embedder.backends.registry import Runtime


@dataclass(frozen=True)
class OpenClipSpec:
    name: str
    model_id: str = ""  # hub repo holding open_clip_config.json + weights ("" when named by config)
    open_clip_name: str = ""  # open_clip model config name (open_clip.list_models())
    pretrained: str = ""  # open_clip pretrained tag (open_clip.list_pretrained_tags_by_model(name))
    weights: str | None = None  # a checkpoint directory, a hub cache root, or one weights file
    max_batch: int = 16


@dataclass(frozen=True)
class OpenClipSource:
    """What create_model_and_transforms is called with, and where the weights lie."""

    model_name: str  # an open_clip config name, or "local-dir:<checkpoint directory>"
    checkpoint: Path  # the checkpoint directory (local-dir) or the one weights file
    pretrained: str | None = None  # the weights file passed as `pretrained` (None for local-dir)
    overrides: dict[str, Any] = field(default_factory=dict)  # the tag's preprocessing, as kwargs

    def create_kwargs(self) -> dict[str, Any]:
        return {"pretrained": self.pretrained, **self.overrides}


def tag_preprocessing(tag_config: dict[str, Any]) -> dict[str, Any]:
    """A pretrained tag's preprocessing as create_model_and_transforms keywords."""
    return {
        keyword: tuple(value) if isinstance(value, list) else value
        for key, keyword in TAG_PREPROCESSING.items()
        if (value := tag_config.get(key)) is not None
    }


def tag_weights_in_cache(
    open_clip_name: str, tag: str, tag_config: dict[str, Any], root: Path | None
) -> Path:
    """The tag's weights file from the offline Hugging Face cache (or `root` as the cache root), or
    for URL-only tags from open_clip's download folder (or `root`); WeightsNotFoundError otherwise."""
    searched: list[str] = []
    fetch = ""
    if tag_config.get("file"):
        return Path(tag_config["file"]).expanduser()
    hub = tag_config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or HUB_WEIGHTS
        # open_clip prefers a .safetensors twin of the named file when the repo has one
        twin = (
            HUB_SAFE_WEIGHTS
            if filename == HUB_WEIGHTS
            else (
                filename.rsplit(".", 1)[0] + ".safetensors" if filename.endswith((".bin", ".pth")) else None
            )
        )
        cache = root if root is not None else hf_cache_dir()
        for candidate in [name for name in (twin, filename) if name]:
            found = try_to_load_from_cache(repo, candidate, cache_dir=str(cache))
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        searched.append(f"Hugging Face cache {cache} ({repo}/{twin or filename})")
        fetch = (
            f" On a machine with internet access run `hf download {repo} {twin or filename}` with "
            f"HF_HUB_CACHE pointing at a cache you then copy here, or pass the file as weights."
        )
    url = tag_config.get("url", "")
    if url:
        folder = root if root is not None else Path(URL_CACHE).expanduser()
        candidate_file = folder / os.path.basename(url)
        if candidate_file.is_file():
            return candidate_file
        searched.append(str(candidate_file))
        fetch = fetch or f" Download {url} on a machine with internet access and pass it as weights."
    raise WeightsNotFoundError(
        f"No weights found for open_clip {open_clip_name!r} pretrained {tag!r}. "
        f"Searched: {'; '.join(searched) or 'nothing (the tag names no file)'}.{fetch}"
    )


def resolve_source(open_clip: Any, spec: OpenClipSpec) -> OpenClipSource:
    """Decide how to build the model from the spec's name, tag, hub id and weights (see module doc)."""
    weights = Path(spec.weights).expanduser() if spec.weights else None
    name, tag = spec.open_clip_name, spec.pretrained
    if name and name not in open_clip.list_models():
        raise BackendLoadError(
            f"{spec.name}: open_clip has no model config {name!r} (open_clip.list_models() names them)"
        )
    overrides: dict[str, Any] = {}
    tag_config: dict[str, Any] = {}
    if tag:
        if not name:
            raise BackendLoadError(f"{spec.name}: pretrained tag {tag!r} needs open_clip_name")
        tag_config = dict(open_clip.get_pretrained_cfg(name, tag) or {})
        if not tag_config:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise BackendLoadError(
                f"{spec.name}: open_clip {name!r} has no pretrained tag {tag!r}; known: {known}"
            )
        overrides = tag_preprocessing(tag_config)

    if weights is not None and weights.is_file():
        if not name:
            raise BackendLoadError(
                f"{spec.name}: weights file {weights} needs open_clip_name (the architecture it fits)"
            )
        return OpenClipSource(name, weights, str(weights), overrides)
    if spec.model_id or (weights is not None and (weights / OPEN_CLIP_CONFIG).is_file()):
        path = resolve_weights(spec.model_id or None, weights, required=(OPEN_CLIP_CONFIG,))
        return OpenClipSource(f"local-dir:{path}", path, None, overrides)
    if name and tag:
        file = tag_weights_in_cache(name, tag, tag_config, weights)
        return OpenClipSource(name, file, str(file), overrides)
    raise WeightsNotFoundError(
        f"{spec.name}: no weights. Give open_clip_name with a pretrained tag (weights from the offline "
        "Hugging Face cache) or a weights file, or a checkpoint directory holding "
        f"{OPEN_CLIP_CONFIG} (or its hub id as model_id)."
    )


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


def preprocess_record(open_clip: Any, model: Any, transform: Any) -> dict[str, Any]:
    """The preprocessing as data for the fingerprint: open_clip's final config plus the transform."""
    config = (
        open_clip.get_model_preprocess_cfg(model) if hasattr(open_clip, "get_model_preprocess_cfg") else {}
    )
    return {
        "config": {key: list(v) if isinstance(v, tuple) else v for key, v in dict(config).items()},
        "transform": describe_transform(transform),
    }


class OpenClipImageBackend(ModelBackend):
    def __init__(self, spec: OpenClipSpec, device: str = "cpu") -> None:
        open_clip = require_module("open_clip", extra="openclip", purpose=f"backend {spec.name} (open_clip)")
        import torch

        self._spec = spec
        self._source = resolve_source(open_clip, spec)
        self._device = torch.device(device)
        model, _, transform = open_clip.create_model_and_transforms(
            self._source.model_name, device=self._device, **self._source.create_kwargs()
        )
        self._model = model.eval()
        self._transform = transform
        self._preprocessing = describe_transform(transform)
        checkpoint = self._source.checkpoint
        if checkpoint.is_dir():
            self._revision = weights_revision(checkpoint)
            weight_hashes = checkpoint_files(checkpoint)  # open_clip_config.json + the weights
        else:
            weight_hashes = {checkpoint.name: file_sha256(checkpoint)}
            self._revision = "sha256:" + weight_hashes[checkpoint.name][:16]
        self._dim = int(self.forward([self.preprocess(Image.new("RGB", (64, 64), (127, 127, 127)))]).shape[1])
        self._fingerprint = model_fingerprint(
            backend="open_clip",
            weights=weight_hashes,
            preprocessing=preprocess_record(open_clip, self._model, transform),
            pooling="encode_image",
            open_clip_name=spec.open_clip_name,
            pretrained=spec.pretrained,
            libraries=("torch", "open_clip_torch", "timm", "torchvision", "pillow"),
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
                "pretrained": self._spec.pretrained,
                "weights": str(self._source.checkpoint),
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

    def close(self) -> None:
        self._model = None


def load(name: str, options: OpenClipOptions, runtime: Runtime) -> ModelBackend:
    """Loader of kind "open_clip" (options: services.embedder.backends.options.OpenClipOptions)."""
    apply_threads(runtime.threads)
    open_clip_spec = OpenClipSpec(
        name=name,
        model_id=options.model_id or "",
        open_clip_name=options.open_clip_name,
        pretrained=options.pretrained or "",
        weights=options.weights,
        max_batch=runtime.max_batch,
    )
    return OpenClipImageBackend(open_clip_spec, device=runtime.device)
