"""Reference implementations the probe compares a served model with, when they are installed.

A reference is `fn(info: ModelInfo, images: list[PIL.Image]) -> (N, dim) float32`: the model's
vectors as its own library computes them (its documented preprocessing and forward). It raises
ReferenceUnavailable with status "not installed" when its library is missing here, or
"unavailable" when it cannot stand for this server (other weights, other preprocessing).

References are found by model name first, then by backend ("backend:<ModelInfo.backend>"), in
REFERENCES; `register_reference` adds more. Images are decoded by the embedder's decoder (EXIF
orientation applied) so that parity measures preprocessing + forward, not JPEG decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from services.common.types import ImageItem, ModelInfo
from services.evaluator.probe import Parity, min_row_cosine

Reference = Callable[[ModelInfo, list], np.ndarray]
CHUNK = 16  # images per reference forward pass (bounded memory on big models)


class ReferenceUnavailable(Exception):
    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# key -> (what the reference is, "module:function" or the function)
REFERENCES: dict[str, tuple[str, str | Reference]] = {
    "efficientnet-lite0": (
        "efficientnet_lite_pytorch EfficientNet.extract_features + mean pool, BatchNorm unfused, NCHW, "
        "on the registry's preprocessing (the package ships none for Lite)",
        "services.evaluator.probe_references:efficientnet_lite_reference",
    ),
    "efficientnet-lite2": (
        "efficientnet_lite_pytorch EfficientNet.extract_features + mean pool, BatchNorm unfused, NCHW, "
        "on the registry's preprocessing (the package ships none for Lite)",
        "services.evaluator.probe_references:efficientnet_lite_reference",
    ),
    "backend:timm": (
        "timm resolve_data_config + create_transform (torchvision) + forward_features + "
        "forward_head(pre_logits=True), in the server's compute dtype",
        "services.evaluator.probe_references:timm_reference",
    ),
}


def register_reference(key: str, description: str, fn: str | Reference) -> None:
    """`key`: a model name, or "backend:<ModelInfo.backend>" for every model of a backend."""
    REFERENCES[key] = (description, fn)


def find_reference(info: ModelInfo) -> tuple[str, Reference] | None:
    entry = REFERENCES.get(info.name) or REFERENCES.get(f"backend:{info.backend}")
    if entry is None:
        return None
    description, fn = entry
    if isinstance(fn, str):
        import importlib

        module_name, _, function_name = fn.partition(":")
        fn = getattr(importlib.import_module(module_name), function_name)
    return description, fn


def check_parity(
    info: ModelInfo,
    items: Sequence[ImageItem],
    vectors: np.ndarray,
    min_cos: float,
    reference: Reference | None = None,
) -> Parity:
    """The served `vectors` of `items` against the reference's, as a Parity record."""
    found = ("given reference", reference) if reference is not None else find_reference(info)
    if found is None:
        detail = f"none registered for model {info.name!r} or backend {info.backend!r}"
        return Parity(status="no reference", detail=detail)
    description, fn = found
    from services.embedder.images import decode_image

    images = [decode_image(item.data) for item in items]
    try:
        expected = np.concatenate([np.asarray(fn(info, images[i : i + CHUNK]), dtype=np.float32)
                                   for i in range(0, len(images), CHUNK)])
    except ReferenceUnavailable as exc:
        return Parity(status=exc.status, reference=description, detail=exc.detail)
    if expected.shape != vectors.shape:
        return Parity(status="mismatch", reference=description, min_cos=0.0, images=len(items),
                      detail=f"reference shape {expected.shape}, served {vectors.shape}")
    cos = min_row_cosine(vectors, expected)
    status = "ok" if cos >= min_cos else "mismatch"
    return Parity(status=status, reference=description, min_cos=cos, images=len(items))


def _import(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReferenceUnavailable("not installed", f"{what} needs {module!r}: {exc}") from None


# --- the references -----------------------------------------------------------------------------


def efficientnet_lite_reference(info: ModelInfo, images: list) -> np.ndarray:
    torch = _import("torch", "the EfficientNet-Lite reference")
    package = _import("efficientnet_lite_pytorch", "the EfficientNet-Lite reference")
    from services.common.fingerprint import file_sha256
    from services.embedder.backends.errors import WeightsNotFoundError
    from services.embedder.backends.registry import get_spec, resolve_weights_path

    spec = get_spec(info.name)
    try:
        path = resolve_weights_path(spec.weights or "")
    except WeightsNotFoundError as exc:
        raise ReferenceUnavailable("not installed", str(exc)) from None
    if info.revision != f"sha256:{file_sha256(path)}":
        raise ReferenceUnavailable("unavailable", f"the server's weights ({info.revision}) are not {path}")
    model = package.EfficientNet.from_name(spec.options["variant"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    assert spec.preprocessing is not None
    batch = torch.from_numpy(np.stack([spec.preprocessing(image) for image in images]))
    with torch.inference_mode():
        return model.extract_features(batch).mean(dim=(2, 3)).numpy()


def timm_reference(info: ModelInfo, images: list) -> np.ndarray:
    torch = _import("torch", "the timm reference")
    timm = _import("timm", "the timm reference")
    timm_data = _import("timm.data", "the timm reference (create_transform needs torchvision)")
    details = info.details
    if details.get("preprocessing_source") != "timm pretrained_cfg":
        raise ReferenceUnavailable(
            "unavailable", "the server's preprocessing was given, not the pretrained_cfg's"
        )
    weights = Path(details.get("weights", ""))
    if not weights.is_file():
        raise ReferenceUnavailable(
            "unavailable", f"the server's weights file {weights} is not on this machine"
        )
    num_classes = details.get("num_classes", "")
    kwargs = {"num_classes": int(num_classes)} if num_classes not in ("", "None") else {}
    model = timm.create_model(details["model_name"], pretrained=False, **kwargs)
    timm.models.load_checkpoint(model, str(weights), strict=True)
    dtype = getattr(torch, details.get("compute_dtype", "float32"))
    model = model.eval().to(dtype=dtype)
    transform = timm_data.create_transform(**timm_data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(image) for image in images]).to(dtype=dtype)
    with torch.inference_mode():
        return model.forward_head(model.forward_features(batch), pre_logits=True).float().numpy()
