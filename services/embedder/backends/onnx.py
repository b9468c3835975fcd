"""Any ONNX image model on onnxruntime, with preprocessing given as data.

Options (services.embedder.backends.options.OnnxOptions), besides weights and preprocessing:
    input:  name of the image input (default: the graph's first input)
    output: name of the tensor to return (default: the graph's first output). It may be an
            intermediate tensor: the graph is then edited (with the `onnx` package) so that tensor
            becomes its only output, and everything after it is never computed. This is how
            open-nsfw serves its 1024-d pooled features instead of its 2 NSFW probabilities.
    spatial_pool: "mean" averages a (N, C, H, W) output over H and W; otherwise outputs with more
            than two dimensions are flattened.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from services.common.fingerprint import file_sha256
from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.errors import BackendLoadError
from services.embedder.backends.options import OnnxOptions
from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.provenance import model_fingerprint
from services.embedder.backends.registry import Runtime, resolve_weights_path

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def with_output(path: Path, output: str) -> bytes | None:
    """The model at `path` re-serialised so that tensor `output` is its only graph output, or None
    when `output` already is a graph output (no edit needed)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if output in {o.name for o in graph.output}:
        return None
    produced = [name for node in graph.node for name in node.output]
    if output not in produced:
        raise BackendLoadError(f"{path.name} has no tensor named {output!r}; last tensors: {produced[-5:]}")
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    value_info = known.get(output) or onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)
    del graph.output[:]
    graph.output.append(value_info)
    return model.SerializeToString()


class OnnxBackend(ModelBackend):
    def __init__(
        self,
        name: str,
        model: Path | bytes,
        preprocessing: Preprocessing,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        spatial_pool: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        max_batch: int = 64,
        dim: int | None = None,
        revision: str = "",
        weights_sha256: Mapping[str, str] | None = None,
        pooling: str = "",
        normalized: bool = False,
        details: dict[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            wanted = _PROVIDERS[device.split(":")[0]]
        except KeyError:
            raise BackendLoadError(
                f"unknown device {device!r} for onnxruntime; one of {sorted(_PROVIDERS)}"
            ) from None
        available = set(ort.get_available_providers())
        providers = [p for p in wanted if p in available]
        if wanted[0] not in available:
            raise BackendLoadError(
                f"device {device!r} needs {wanted[0]}, onnxruntime has {sorted(available)}"
            )
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, sess_options=options, providers=providers)
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        self._input = input_name or inputs[0].name
        self._output = output_name or outputs[0].name
        input_meta = next((i for i in inputs if i.name == self._input), None)
        if input_meta is None:
            raise BackendLoadError(f"{name}: no input {self._input!r}; inputs: {[i.name for i in inputs]}")
        if self._output not in {o.name for o in outputs}:
            raise BackendLoadError(
                f"{name}: no output {self._output!r}; outputs: {[o.name for o in outputs]}"
            )
        self._dtype = np.float16 if input_meta.type == "tensor(float16)" else np.float32
        # A static batch dimension of 1 (common in exports) means one item per run.
        self._one_at_a_time = input_meta.shape[0] == 1
        self._spatial_pool = spatial_pool
        self._preprocessing = preprocessing
        if dim is None:
            dim = int(self.forward([preprocessing(Image.new("RGB", (32, 32)))]).shape[1])
        compute_dtype = np.dtype(self._dtype).name
        self._info = ModelInfo(
            name=name,
            dim=dim,
            preprocessing=preprocessing.describe(),
            normalized=normalized,
            revision=revision,
            max_batch=max_batch,
            backend="onnxruntime",
            details={
                "pooling": pooling,
                "input": self._input,
                "output": self._output,
                "providers": ",".join(self._session.get_providers()),
                "onnxruntime": ort.__version__,
                "compute_dtype": compute_dtype,
                **(details or {}),
            },
            # The weights' hash covers the graph; input/output pick what of it runs.
            fingerprint=model_fingerprint(
                backend="onnxruntime",
                weights=dict(weights_sha256 or {}),
                preprocessing=preprocessing,
                pooling=pooling,
                compute_dtype=compute_dtype,
                input=self._input,
                output=self._output,
                spatial_pool=spatial_pool,
                libraries=("onnxruntime", "pillow"),
            ),
        )

    def info(self) -> ModelInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._preprocessing(image)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        batch = np.stack(inputs).astype(self._dtype, copy=False)
        if self._one_at_a_time and len(batch) > 1:
            parts = [self._run(batch[i : i + 1]) for i in range(len(batch))]
            return np.concatenate(parts)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (output,) = self._session.run([self._output], {self._input: batch})
        output = np.asarray(output)
        if output.ndim == 4 and self._spatial_pool == "mean":
            output = output.mean(axis=(2, 3))
        elif output.ndim != 2:
            output = output.reshape(len(batch), -1)
        return output.astype(np.float32, copy=False)


def load(name: str, options: OnnxOptions, runtime: Runtime) -> OnnxBackend:
    if options.weights is None:
        raise BackendLoadError(f"{name}: give the .onnx file with --weights (or the 'weights' option)")
    path = resolve_weights_path(options.weights)
    model: Path | bytes = path
    if options.output:
        edited = with_output(path, options.output)
        if edited is not None:
            model = edited
    weights_sha = file_sha256(path)
    backend = OnnxBackend(
        name,
        model,
        options.preprocessing,
        input_name=options.input,
        output_name=options.output,
        spatial_pool=options.spatial_pool,
        device=runtime.device,
        threads=runtime.threads,
        max_batch=runtime.max_batch,
        dim=options.dim,
        revision=f"sha256:{weights_sha}",
        weights_sha256={path.name: weights_sha},
        pooling=options.pooling,
        normalized=options.normalized,
        details={"weights": path.name},
    )
    log.info("loaded %s from %s (output %s)", name, path, backend.info().details["output"])
    return backend
