"""Any timm image model by name (kind "timm"): timm builds the architecture, the model's own
pretrained_cfg is the preprocessing (as data), and the vector is its pooled, pre-classifier
feature: `forward_head(forward_features(x), pre_logits=True)`.

Preprocessing: `timm.data.resolve_data_config(model=model)` gives input_size, interpolation,
crop_pct, crop_mode, mean and std; `preprocessing_from_data_config` turns them into the same
steps timm's eval transform (`transforms_imagenet_eval`) builds with torchvision, run here with
PIL + numpy (services.embedder.backends.preprocess). Both the data config and the steps are
recorded in Info and in the fingerprint. Modes that cannot be expressed as data ('border'
letterboxing, a non-square 'center' target) are refused unless `preprocessing` is given.

Weights: a local timm-format state dict (.safetensors, .pth, .bin), or the file the
pretrained_cfg's `hf_hub_id` names in the offline Hugging Face hub cache. Never downloaded, never
randomly initialised.

timm imports torchvision when it is imported (timm/layers/create_norm.py), and a torchvision wheel
imports only beside the torch release it was built for; so timm lives behind its own extra, in
an environment whose torch and torchvision match (`make test-models` builds one).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from PIL import Image

from services.common.fingerprint import file_sha256
from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.errors import BackendLoadError, MissingExtraError, WeightsNotFoundError
from services.embedder.backends.preprocess import RESAMPLE, Preprocessing
from services.embedder.backends.provenance import model_fingerprint

if TYPE_CHECKING:
    from services.embedder.backends.options import TimmOptions
    from services.embedder.backends.registry import Runtime

log = logging.getLogger(__name__)

EXTRA = "timm"
POOLING = "forward_head(forward_features(x), pre_logits=True)"
# timm's default when a pretrained_cfg has no crop_pct (timm.data.constants.DEFAULT_CROP_PCT).
DEFAULT_CROP_PCT = 0.875
# Files a timm checkpoint on the hub holds, in timm's order of preference (timm/models/_hub.py).
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The data-config keys that decide the pixels, recorded as they are.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def require_timm(purpose: str) -> Any:
    """`import timm`, or MissingExtraError naming the extra (timm also needs torchvision)."""
    try:
        import timm
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package 'timm' (and the torchvision built for this torch), "
            f"which is not importable ({exc}). Install the extra: pip install 'vsbench[{EXTRA}]'"
        ) from exc
    return timm


# ------------------------------------------------------------------------- preprocessing as data


@dataclass(frozen=True)
class TorchvisionShortestEdge(Preprocessing):
    """`Preprocessing` whose shortest-edge resize sizes the longer edge as torchvision's
    `Resize(int)` does, int(size * long / short) (truncated), where `Preprocessing` rounds: timm's
    eval transform is torchvision's, and one pixel of scale is a measurable difference."""

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize != "shortest":
            return super().resized_size(width, height)
        crop_h, crop_w = self.crop_hw
        short = self.resize_to if self.resize_to is not None else min(crop_h, crop_w)
        assert isinstance(short, int)
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def describe(self) -> str:
        return super().describe() + " (longer edge int()-truncated, as torchvision Resize)"


def data_config_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """The pixel-deciding keys of a timm data config as JSON data (tuples become lists)."""
    record = {}
    for key in DATA_CONFIG_KEYS:
        value = config.get(key)
        record[key] = list(value) if isinstance(value, tuple) else value
    return record


def preprocessing_from_data_config(config: Mapping[str, Any]) -> Preprocessing:
    """timm's eval transform (transforms_imagenet_eval) for a resolved data config, as data:

    scale = floor(size / crop_pct) per edge (crop_pct default 0.875);
    crop_mode 'center' (the default): shortest edge to `scale` (aspect kept), centre crop `size`;
    crop_mode 'squash': resize to scale x scale (aspect not kept), centre crop `size`;
    then x / 255, (x - mean) / std, CHW. 'border' and a non-square 'center' are refused.
    """
    input_size = tuple(int(v) for v in config["input_size"])
    if len(input_size) != 3 or input_size[0] != 3:
        raise BackendLoadError(f"timm data config input_size {input_size} is not (3, H, W)")
    height, width = input_size[1:]
    interpolation = str(config.get("interpolation") or "bilinear")
    if interpolation not in RESAMPLE:
        raise BackendLoadError(
            f"timm data config interpolation {interpolation!r} has no PIL equivalent; "
            f"one of {sorted(RESAMPLE)} (or give the `preprocessing` option)"
        )
    if config.get("crop_border_pixels"):
        raise BackendLoadError("timm data config trims a border (crop_border_pixels): give `preprocessing`")
    crop_pct = float(config.get("crop_pct") or DEFAULT_CROP_PCT)
    crop_mode = config.get("crop_mode") or "center"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    crop = height if height == width else (height, width)
    common = dict(
        crop_size=crop,
        resample=interpolation,
        rescale=1 / 255,
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
    )
    if crop_mode == "squash":
        return Preprocessing(resize="squash", resize_to=scale, **common)
    if crop_mode == "center":
        if scale[0] != scale[1]:
            raise BackendLoadError(
                f"timm crop_mode 'center' with a non-square input {height}x{width} resizes with "
                "ResizeKeepRatio, which vsbench's preprocessing does not express: give `preprocessing`"
            )
        return TorchvisionShortestEdge(resize="shortest", resize_to=scale[0], **common)
    raise BackendLoadError(
        f"timm crop_mode {crop_mode!r} (letterbox / pad) is not expressible as vsbench preprocessing "
        "data: give the `preprocessing` option"
    )


# -------------------------------------------------------------------------------- weights


def hub_cache_weights(hf_hub_id: str, cache_dir: Path, filename: str | None = None) -> Path | None:
    """The weights file of `hf_hub_id` in an offline hub cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    for candidate in ([filename] if filename else []) + list(HUB_WEIGHT_FILES):
        found = try_to_load_from_cache(hf_hub_id, candidate, cache_dir=str(cache_dir))
        if isinstance(found, str):
            return Path(found)
    return None


def resolve_timm_weights(model_name: str, options: "TimmOptions", pretrained_cfg: Mapping[str, Any]) -> Path:
    from services.embedder.backends.hf import hf_cache_dir
    from services.embedder.backends.registry import resolve_weights_path

    if options.weights is not None:
        return resolve_weights_path(options.weights)
    if not options.hub_cache:
        raise WeightsNotFoundError(f"timm model {model_name!r}: no weights given and hub_cache is off")
    hf_hub_id = pretrained_cfg.get("hf_hub_id")
    if not hf_hub_id:
        raise WeightsNotFoundError(
            f"timm model {model_name!r}: its pretrained_cfg names no hf_hub_id; give `weights` (a file)"
        )
    cache = hf_cache_dir()
    found = hub_cache_weights(hf_hub_id, cache, pretrained_cfg.get("hf_hub_filename"))
    if found is None:
        raise WeightsNotFoundError(
            f"timm model {model_name!r}: no {' or '.join(HUB_WEIGHT_FILES)} of {hf_hub_id} in the Hugging "
            f"Face cache {cache}. Give `weights` (a timm-format .safetensors/.pth file), or on a machine "
            f"with internet access run `hf download {hf_hub_id}` and point HF_HUB_CACHE at that cache."
        )
    return found


# -------------------------------------------------------------------------------- backend


class TimmBackend(ModelBackend):
    """A timm model in eval mode; vectors are its pre-logits features, returned as float32."""

    def __init__(
        self, model: Any, preprocessing: Preprocessing, info: ModelInfo, *, device: Any, dtype: Any
    ) -> None:
        self._model = model
        self._preprocessing = preprocessing
        self._info = info
        self._device = device
        self._dtype = dtype

    def info(self) -> ModelInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._preprocessing(image)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        return pooled_features(self._model, np.stack(inputs), device=self._device, dtype=self._dtype)

    def close(self) -> None:
        self._model = None


def pooled_features(model: Any, pixels: np.ndarray, *, device: Any, dtype: Any) -> np.ndarray:
    """(N, 3, H, W) float32 pixels -> (N, D) float32 pre-logits features."""
    import torch

    batch = torch.from_numpy(pixels).to(device=device, dtype=dtype)
    with torch.inference_mode():
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
    if features.ndim != 2:
        raise BackendLoadError(
            f"forward_head(pre_logits=True) gave shape {tuple(features.shape)}, not (N, D): this model's "
            "head does not pool to one vector"
        )
    return features.float().cpu().numpy()


def _build_model(timm: Any, name: str, model_name: str, num_classes: int | None) -> Any:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        if "Unknown model" not in str(exc):
            raise
        raise BackendLoadError(
            f"{name}: timm {timm.__version__} has no model {model_name!r} "
            f"(list them with timm.list_models('*part-of-name*', pretrained=True))"
        ) from None


def load(name: str, options: "TimmOptions", runtime: "Runtime") -> TimmBackend:
    """Loader of kind "timm" (options: services.embedder.backends.options.TimmOptions)."""
    timm = require_timm(f"backend {name} (timm model {options.model_name!r})")
    import torch

    from services.embedder.backends.torch_runtime import configure_threads, resolve_device

    configure_threads(runtime.threads)
    device = resolve_device(runtime.device)
    dtype = getattr(torch, _TORCH_DTYPES[options.dtype])
    model = _build_model(timm, name, options.model_name, options.num_classes)
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    path = resolve_timm_weights(options.model_name, options, pretrained_cfg)
    from timm.models import load_state_dict

    state_dict = load_state_dict(str(path), device="cpu")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise BackendLoadError(
            f"{name}: weights {path} do not fit timm model {options.model_name!r} "
            f"(a timm-format state dict of this architecture is needed; a different classifier width "
            f"needs the num_classes option): {' '.join(first)}"
        ) from None
    model = model.eval().to(device=device, dtype=dtype)

    data_config = data_config_record(timm.data.resolve_data_config({}, model=model))
    preprocessing = options.preprocessing or preprocessing_from_data_config(data_config)
    probe = preprocessing(Image.new("RGB", (64, 64), (127, 127, 127)))
    dim = int(pooled_features(model, probe[None], device=device, dtype=dtype).shape[1])
    weights_sha = file_sha256(path)
    source = "given" if options.preprocessing is not None else "timm pretrained_cfg"
    fingerprint = model_fingerprint(
        backend="timm",
        weights={path.name: weights_sha},
        preprocessing=preprocessing,
        pooling=POOLING,
        compute_dtype=options.dtype,
        libraries=("torch", "timm", "pillow"),
        architecture=options.model_name,
        num_classes=options.num_classes,
        data_config=data_config,
        preprocessing_class=type(preprocessing).__name__,  # torchvision vs rounded resize sizes
    )
    info = ModelInfo(
        name=name,
        dim=dim,
        preprocessing=f"{preprocessing.describe()} [{source}]",
        normalized=False,
        revision=f"sha256:{weights_sha}",
        max_batch=runtime.max_batch,
        backend="timm",
        details={
            "model_name": options.model_name,
            "architecture": str(pretrained_cfg.get("architecture", "")),
            "pretrained_tag": str(pretrained_cfg.get("tag", "")),
            "hf_hub_id": str(pretrained_cfg.get("hf_hub_id", "")),
            "num_classes": str(options.num_classes),
            "weights": str(path),
            "pooling": POOLING,
            "device": str(device),
            "compute_dtype": options.dtype,
            "data_config": json.dumps(data_config, sort_keys=True),
            "preprocessing_source": source,
            "timm": timm.__version__,
            "torch": torch.__version__,
        },
        fingerprint=fingerprint,
    )
    log.info("loaded timm %s (%s) from %s, dim %d", options.model_name, name, path, dim)
    return TimmBackend(model, preprocessing, info, device=device, dtype=dtype)
