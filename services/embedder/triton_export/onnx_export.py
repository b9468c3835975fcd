"""The ONNX file of a Triton export, made per kind (ONNX_EXPORTERS: data, not branches): torch
models are exported with torch.onnx.export and a dynamic batch axis, ONNX models are copied (with
the graph cut at the `output` option when it is an intermediate tensor)."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from services.common.errors import VsbenchError
from services.embedder.backends.registry import resolve_lazy, resolve_weights_path

if TYPE_CHECKING:
    from services.embedder.backends.options import EfficientNetLiteOptions, OnnxOptions, TransformersOptions

# Tensor names of the graphs we export ourselves (copied ONNX files keep their own).
TORCH_INPUT_NAME = "pixel_values"
TORCH_OUTPUT_NAME = "embedding"
ONNX_OPSET = 17


class ExportError(VsbenchError, RuntimeError):
    """The model cannot be exported, or the export does not reproduce the local backend."""


@dataclass(frozen=True)
class OnnxGraph:
    """What an exporter wrote: the file and its image input / embedding output tensor names."""

    path: Path
    input_name: str
    output_name: str


Exporter = Callable[[str, Any, Path, np.ndarray], OnnxGraph]

# kind -> "module:function" (imported on first use, like the registry's backend loaders). An
# exporter writes `model.onnx` into the version folder it is given, from the model's name, its
# validated options (weights override applied) and one preprocessed example batch (for tracing).
ONNX_EXPORTERS: dict[str, str | Exporter] = {
    "efficientnet-lite": "services.embedder.triton_export.onnx_export:export_efficientnet",
    "onnx": "services.embedder.triton_export.onnx_export:copy_onnx",
    "hf": "services.embedder.triton_export.onnx_export:export_transformers",
}


def exporter_for(kind: str) -> Exporter:
    return resolve_lazy(
        ONNX_EXPORTERS,
        kind,
        lambda: ExportError(
            f"no Triton exporter for models of kind {kind!r}; exportable kinds: {sorted(ONNX_EXPORTERS)}"
        ),
    )


def _torch_to_onnx(module: Any, example: np.ndarray, path: Path) -> OnnxGraph:
    """torch.onnx.export with the batch axis dynamic on input and output."""
    import torch

    module.eval()
    sample = torch.from_numpy(np.ascontiguousarray(example[:2]))
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer / shape-inference chatter and the legacy exporter's deprecation notice: the graph is
        # traced at the model's fixed input size, and the export is verified against the local backend.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript-based exporter: it needs no onnxscript and gives plain opset-17 graphs that
        # onnxruntime and TensorRT both take.
        torch.onnx.export(
            module,
            (sample,),
            str(path),
            input_names=[TORCH_INPUT_NAME],
            output_names=[TORCH_OUTPUT_NAME],
            dynamic_axes={TORCH_INPUT_NAME: {0: "batch"}, TORCH_OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return OnnxGraph(path, TORCH_INPUT_NAME, TORCH_OUTPUT_NAME)


def export_efficientnet(
    name: str, options: EfficientNetLiteOptions, version_dir: Path, example: np.ndarray
) -> OnnxGraph:
    """EfficientNet-Lite as the local backend runs it (BatchNorm folded), plus its average pool."""
    import torch

    from services.embedder.backends.efficientnet import build_model

    if options.weights is None:
        raise ExportError(f"{name}: no weights given")
    state_dict = torch.load(resolve_weights_path(options.weights), map_location="cpu", weights_only=True)
    model = build_model(options.variant, state_dict, fuse_batchnorm=options.fuse_batchnorm)

    class PooledFeatures(torch.nn.Module):
        def __init__(self, network: Any) -> None:
            super().__init__()
            self.network = network

        def forward(self, pixels: Any) -> Any:
            return self.network.extract_features(pixels).mean(dim=(2, 3))

    return _torch_to_onnx(PooledFeatures(model), example, version_dir / "model.onnx")


def export_transformers(
    name: str, options: TransformersOptions, version_dir: Path, example: np.ndarray
) -> OnnxGraph:
    """A transformers vision model and its pooling, as TransformersImageBackend runs them (in
    float32: Triton receives FP32 tensors whatever dtype the local backend computes in)."""
    import torch
    import transformers

    from services.embedder.backends.hf import POOLINGS, resolve_weights
    from services.embedder.backends.hf_processors import quiet_transformers

    path = resolve_weights(
        options.model_id, options.weights, required=("config.json", "preprocessor_config.json")
    )
    model_class = getattr(transformers, options.model_class, None)
    if model_class is None:
        raise ExportError(f"{name}: transformers has no class {options.model_class!r}")
    pooling = POOLINGS[options.pooling]
    with quiet_transformers():
        model = model_class.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)

    class Pooled(torch.nn.Module):
        def __init__(self, network: Any) -> None:
            super().__init__()
            self.network = network

        def forward(self, pixels: Any) -> Any:
            return pooling(self.network(pixel_values=pixels))

    graph = _torch_to_onnx(Pooled(model.eval()), example, version_dir / "model.onnx")
    # The embedder in front of Triton preprocesses with this processor config (docs/triton.md).
    shutil.copy2(path / "preprocessor_config.json", version_dir.parent / "preprocessor_config.json")
    return graph


def copy_onnx(name: str, options: OnnxOptions, version_dir: Path, example: np.ndarray) -> OnnxGraph:
    """Copy an ONNX model's file; cut the graph at the `output` option when that tensor is an
    intermediate one (open-nsfw's pooled features), exactly as the onnxruntime backend does."""
    import onnx

    from services.embedder.backends.onnx import with_output

    if options.weights is None:
        raise ExportError(f"{name}: give the .onnx file with --weights")
    source = resolve_weights_path(options.weights)
    target = version_dir / "model.onnx"
    output = options.output
    edited = with_output(source, output) if output else None
    if edited is not None:
        target.write_bytes(edited)
    else:
        shutil.copyfile(source, target)
    model = onnx.load(str(target), load_external_data=False)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    input_name = str(options.input or inputs[0].name)
    output_name = str(output or model.graph.output[0].name)
    graph_input = next((i for i in inputs if i.name == input_name), None)
    if graph_input is None:
        raise ExportError(f"{name}: the graph has no input {input_name!r}")
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param and batch_dim.dim_value > 0:
        # Triton's max_batch_size > 0 needs a dynamic first axis; a fixed one would make every
        # batched request fail at run time, so refuse here.
        raise ExportError(
            f"{name}: {source.name} has a fixed batch dimension {batch_dim.dim_value} on input "
            f"{input_name!r}; Triton's dynamic batching needs a dynamic one (re-export the model with a "
            f"dynamic batch axis)"
        )
    return OnnxGraph(target, input_name, output_name)
