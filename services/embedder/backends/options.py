"""Each backend kind's options as a pydantic model: unknown or ill-typed options are refused.

A model is a kind plus options. A registered model (registry.RegisteredModel) states its options
as data and gets them validated here when it is registered and again, with any load-time
overrides, when it is loaded; `registry.build_backend(kind, options)` validates a definition that
is not registered at all (a run config's "ONNX file with this preprocessing"). Either way a typo
is an error listing the valid options, never a silently ignored setting.

This module imports no model library: listing kinds and validating options stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.embedder.backends.errors import BackendOptionsError
from services.embedder.backends.preprocess import Preprocessing

if TYPE_CHECKING:
    from services.embedder.backends.registry import RegisteredModel

# RegisteredModel fields a kind's options take over when the kind declares an option of that name.
_DEFINITION_FIELDS = ("weights", "preprocessing", "pooling", "dim", "normalized")


class BackendOptions(BaseModel):
    """Base of every kind's options: frozen, and no option the kind does not declare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_registered(cls, model: "RegisteredModel") -> dict[str, Any]:
        """The raw options a registered model stands for: its definition fields this kind
        declares (weights, preprocessing, ...), then its own `options` on top."""
        raw = {
            name: getattr(model, name)
            for name in _DEFINITION_FIELDS
            if name in cls.model_fields and getattr(model, name) is not None
        }
        return {**raw, **dict(model.options)}


def option_names(options: type[BaseModel]) -> list[str]:
    return sorted(options.model_fields)


def _type_text(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(value) for value in get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_options(options: type[BaseModel]) -> list[dict[str, Any]]:
    """One entry per option (name, type, default or required, description), for docs and CLIs."""
    described = []
    for name, field in sorted(options.model_fields.items()):
        entry: dict[str, Any] = {
            "name": name,
            "type": _type_text(field.annotation),
            "description": field.description or "",
        }
        if field.is_required():
            entry["required"] = True
        else:
            default = field.get_default(call_default_factory=True)
            entry["default"] = repr(default) if isinstance(default, Preprocessing) else default
        described.append(entry)
    return described


def validate_options(
    options: type[BackendOptions], raw: Mapping[str, Any], *, kind: str, what: str
) -> BackendOptions:
    """`raw` as `options`, or BackendOptionsError naming every problem and the valid options."""
    try:
        return options.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(options)"
            if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                problems.append(f"unknown option {where!r}")
            elif error["type"] == "missing":
                problems.append(f"option {where!r} is required")
            else:
                shown = repr(error.get("input"))
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                problems.append(f"option {where!r}: {error['msg']} (got {shown})")
        raise BackendOptionsError(
            f"{what}: {'; '.join(problems)}. Valid options for kind {kind!r}: "
            f"{', '.join(option_names(options))}"
        ) from None


# --- the kinds' options ---------------------------------------------------------------------------

_WEIGHTS_FILE = "weights file: a local path or pkg:<package>/<file> (shipped inside a pip package)"
_WEIGHTS_DIR = "local checkpoint directory, or a Hugging Face hub cache root holding model_id"
_MODEL_ID = "Hugging Face id searched in the offline hub cache when no weights are given"


class HistogramOptions(BackendOptions):
    bins: int = Field(8, ge=2, le=64, description="bins per RGB channel; the vector has bins**3 dims")
    max_side: int = Field(128, ge=8, le=4096, description="images shrink to fit this box first (box filter)")
    sqrt: bool = Field(True, description="square root of the counts (Hellinger) before L2 normalisation")


class EfficientNetLiteOptions(BackendOptions):
    variant: Literal[
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "efficientnet-lite3",
        "efficientnet-lite4",
    ] = Field(description="architecture in efficientnet_lite_pytorch")
    weights: str | None = Field(None, description=_WEIGHTS_FILE + " (.pth state dict)")
    preprocessing: Preprocessing = Field(
        description="services.embedder.backends.preprocess.Preprocessing fields"
    )
    fuse_batchnorm: bool = Field(
        True, description="fold BatchNorm into the convolutions at load (~3e-5 change)"
    )
    cpu_micro_batch: int | None = Field(8, ge=1, description="on CPU, run batches in chunks of this size")


class OnnxOptions(BackendOptions):
    weights: str | None = Field(None, description=_WEIGHTS_FILE + " (.onnx)")
    preprocessing: Preprocessing = Field(
        description="services.embedder.backends.preprocess.Preprocessing fields"
    )
    input: str | None = Field(None, description="image input tensor (default: the graph's first input)")
    output: str | None = Field(
        None, description="tensor served as the vector; an intermediate one cuts the graph there"
    )
    spatial_pool: Literal["mean"] | None = Field(
        None, description="'mean' averages an (N, C, H, W) output over H, W; else it is flattened"
    )
    pooling: str = Field("", description="what the output tensor is, in words (recorded in results)")
    dim: int | None = Field(None, ge=1, description="vector length (default: found by running the model)")
    normalized: bool = Field(False, description="the graph already L2-normalises its output")


class HubModelOptions(BackendOptions):
    """Kinds whose weights are a checkpoint directory or a hub id in the offline cache."""

    model_id: str | None = Field(None, description=_MODEL_ID)
    weights: str | None = Field(None, description=_WEIGHTS_DIR)

    @classmethod
    def from_registered(cls, model: "RegisteredModel") -> dict[str, Any]:
        # A registered hub model's `weights` is its hub id; a load-time weights override is a path.
        return {"model_id": model.weights, **dict(model.options)}


class TransformersOptions(HubModelOptions):
    model_class: str = Field(
        "AutoModel", description="transformers class (AutoModel, SiglipVisionModel, ...)"
    )
    pooling: Literal["pooler", "cls", "mean"] = Field(
        "pooler", description="pooler_output, last_hidden_state[:, 0], or the mean over all tokens"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute dtype of the weights and inputs (vectors are returned as float32)"
    )
    preprocessing: Preprocessing | None = Field(
        None,
        description="replaces the checkpoint's image processor with preprocessing as data, e.g. ILIAS's "
        "test resolution: {resize: longer, resize_to: 768} (mean/std: the checkpoint's, unless given)",
    )


class JinaOptions(HubModelOptions):
    task: Literal["retrieval", "text-matching", "code"] = Field(
        "retrieval", description="LoRA task adapter used by encode_image"
    )
    min_pixels: int = Field(3136, ge=1, description="smallest image area after smart_resize")
    max_pixels: int = Field(602112, ge=1, description="largest image area after smart_resize")


class OpenClipOptions(HubModelOptions):
    """Any open_clip model: a hub checkpoint with open_clip_config.json (model_id / weights
    directory), or a config name with a pretrained tag and/or a weights file."""

    weights: str | None = Field(
        None,
        description="checkpoint directory (open_clip_config.json + weights), a Hugging Face hub cache "
        "root, or one weights file (.safetensors/.bin/.pt) for open_clip_name",
    )
    open_clip_name: str = Field("", description="open_clip model config name (open_clip.list_models())")
    pretrained: str | None = Field(
        None,
        description="open_clip pretrained tag: its weights come from the offline Hugging Face cache "
        "(never downloaded) unless `weights` is a file, and its preprocessing is applied",
    )


class NomicOptions(HubModelOptions):
    pass


class TimmOptions(BackendOptions):
    """Kind "timm" (services.embedder.backends.timm_backend): any timm model by name."""

    model_name: str = Field(
        min_length=1,
        description="timm model name, optionally with its pretrained tag ('resnet50.a1_in1k'); "
        "the tag's pretrained_cfg gives the preprocessing and the hub id",
    )
    weights: str | None = Field(
        None,
        description="timm-format weights file (.safetensors/.pth/.bin), a local path or pkg:<package>/<file>",
    )
    hub_cache: bool = Field(
        True, description="without weights, read the pretrained_cfg's hf_hub_id from the offline hub cache"
    )
    num_classes: int | None = Field(
        None,
        ge=0,
        description="classifier width of the weights (None: the pretrained_cfg's); never used for vectors",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute dtype of the weights and inputs (vectors are returned as float32)"
    )
    pooling: Literal["pre_logits"] = Field(
        "pre_logits",
        description="forward_head(forward_features(x), pre_logits=True): the model's own pooling, "
        "before its classifier",
    )
    preprocessing: Preprocessing | None = Field(
        None, description="override; None: timm's eval transform for the model's pretrained_cfg, as data"
    )
