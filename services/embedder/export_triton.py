"""Write an NVIDIA Triton model repository for a registered model.

    <out>/<model>/config.pbtxt      platform onnxruntime_onnx, dynamic batching, instance group
    <out>/<model>/1/model.onnx      batch axis dynamic (TensorRT: see <out>/README.md)
    <out>/<model>/vsbench.json      what the embedder in front of Triton must do before sending
    <out>/README.md                 how to build a TensorRT plan on the GPU node and serve it

How the ONNX file is made depends on the model's kind, looked up in ONNX_EXPORTERS (data, not
branches): torch models are exported with torch.onnx.export and a dynamic batch axis, ONNX models
are copied (with the graph cut at the spec's output tensor when it is an intermediate one).

Preprocessing stays in the embedder (see docs/triton.md): the Triton model takes the float32
tensor the local backend's `preprocess` makes, so the repository is checked by running the ONNX
file in onnxruntime on a few real photos and comparing with the local backend's vectors.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from services.common.errors import VsbenchError
from services.embedder.backends.registry import ModelSpec, get_spec, load_backend, resolve_weights_path

log = logging.getLogger(__name__)

INSTANCE_KINDS: tuple[str, ...] = ("KIND_GPU", "KIND_CPU")

# Tensor names of the graphs we export ourselves (copied ONNX files keep their own).
TORCH_INPUT_NAME = "pixel_values"
TORCH_OUTPUT_NAME = "embedding"
ONNX_OPSET = 17
METADATA_FILE = "vsbench.json"
# Real photos shipped with the quickstart, used to verify an export when no images are given.
SHIPPED_PHOTOS = ("services.evaluator.quickstart", "photos")


@dataclass(frozen=True)
class OnnxGraph:
    """What an exporter wrote: the file and its image input / embedding output tensor names."""

    path: Path
    input_name: str
    output_name: str


@dataclass
class ExportResult:
    model_name: str
    model_dir: Path
    onnx_path: Path
    config_path: Path
    readme_path: Path
    input_name: str
    output_name: str
    input_dims: tuple[int, ...]
    dim: int
    max_batch: int
    verified_images: int = 0
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None

    def summary(self) -> str:
        line = (
            f"{self.model_name}: {self.onnx_path} input {self.input_name} {list(self.input_dims)} -> "
            f"output {self.output_name} [{self.dim}], max_batch_size {self.max_batch}"
        )
        if self.max_abs_diff is not None:
            line += (
                f"; onnxruntime vs local backend on {self.verified_images} images: max abs diff "
                f"{self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g})"
            )
        return line


class ExportError(VsbenchError, RuntimeError):
    """The model cannot be exported, or the export does not reproduce the local backend."""


# --- exporters: one per spec kind ------------------------------------------------------------

Exporter = Callable[[ModelSpec, Path, "str | None", np.ndarray], OnnxGraph]

# spec.kind -> "module:function" (imported on first use, like the registry's backend factories).
# An exporter writes `model.onnx` into the version folder it is given, from the spec, optional
# weights override and one preprocessed example batch (for tracing).
ONNX_EXPORTERS: dict[str, str | Exporter] = {
    "efficientnet-lite": "services.embedder.export_triton:export_efficientnet",
    "onnx": "services.embedder.export_triton:copy_onnx",
    "hf": "services.embedder.export_triton:export_transformers",
}


def _exporter_for(kind: str) -> Exporter:
    from services.embedder.backends.registry import resolve_lazy

    return resolve_lazy(
        ONNX_EXPORTERS, kind,
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
    spec: ModelSpec, version_dir: Path, weights: str | None, example: np.ndarray
) -> OnnxGraph:
    """EfficientNet-Lite as the local backend runs it (BatchNorm folded), plus its average pool."""
    import torch

    from services.embedder.backends.efficientnet import build_model

    ref = weights if weights is not None else spec.weights
    if ref is None:
        raise ExportError(f"{spec.name}: no weights given")
    state_dict = torch.load(resolve_weights_path(ref), map_location="cpu", weights_only=True)
    model = build_model(
        str(spec.options["variant"]),
        state_dict,
        fuse_batchnorm=bool(spec.options.get("fuse_batchnorm", True)),
    )

    class PooledFeatures(torch.nn.Module):
        def __init__(self, network: Any) -> None:
            super().__init__()
            self.network = network

        def forward(self, pixels: Any) -> Any:
            return self.network.extract_features(pixels).mean(dim=(2, 3))

    return _torch_to_onnx(PooledFeatures(model), example, version_dir / "model.onnx")


def export_transformers(
    spec: ModelSpec, version_dir: Path, weights: str | None, example: np.ndarray
) -> OnnxGraph:
    """A transformers vision model and the spec's pooling, as TransformersImageBackend runs them."""
    import torch
    import transformers

    from services.embedder.backends.hf import POOLINGS, quiet_transformers, resolve_weights

    path = resolve_weights(spec.weights, weights, required=("config.json", "preprocessor_config.json"))
    model_class = getattr(transformers, str(spec.options.get("model_class", "AutoModel")))
    pooling = POOLINGS[str(spec.options.get("pooling", "pooler"))]
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


def copy_onnx(spec: ModelSpec, version_dir: Path, weights: str | None, example: np.ndarray) -> OnnxGraph:
    """Copy an ONNX model's file; cut the graph at spec.options['output'] when that tensor is an
    intermediate one (open-nsfw's pooled features), exactly as the onnxruntime backend does."""
    import onnx

    from services.embedder.backends.onnx import with_output

    ref = weights if weights is not None else spec.weights
    if ref is None:
        raise ExportError(f"{spec.name}: give the .onnx file with --weights")
    source = resolve_weights_path(ref)
    target = version_dir / "model.onnx"
    output = spec.options.get("output")
    edited = with_output(source, str(output)) if output else None
    if edited is not None:
        target.write_bytes(edited)
    else:
        shutil.copyfile(source, target)
    model = onnx.load(str(target), load_external_data=False)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    input_name = str(spec.options.get("input") or inputs[0].name)
    output_name = str(output or model.graph.output[0].name)
    graph_input = next((i for i in inputs if i.name == input_name), None)
    if graph_input is None:
        raise ExportError(f"{spec.name}: the graph has no input {input_name!r}")
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param and batch_dim.dim_value > 0:
        # Triton's max_batch_size > 0 needs a dynamic first axis; a fixed one would make every
        # batched request fail at run time, so refuse here.
        raise ExportError(
            f"{spec.name}: {source.name} has a fixed batch dimension {batch_dim.dim_value} on input "
            f"{input_name!r}; Triton's dynamic batching needs a dynamic one (re-export the model with a "
            f"dynamic batch axis)"
        )
    return OnnxGraph(target, input_name, output_name)


# --- config.pbtxt and README ------------------------------------------------------------------


def config_pbtxt(
    model_name: str,
    *,
    input_name: str,
    output_name: str,
    input_dims: Sequence[int],
    dim: int,
    max_batch: int,
    preferred: Sequence[int],
    max_queue_delay_us: int,
    instance_kind: str,
    instance_count: int,
    platform: str = "onnxruntime_onnx",
) -> str:
    """Triton's model configuration (protobuf text format); the batch axis is implicit in dims."""
    preferred_sizes = ", ".join(str(size) for size in preferred)
    return (
        f'name: "{model_name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {max_batch}\n"
        "input [\n"
        "  {\n"
        f'    name: "{input_name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {', '.join(str(d) for d in input_dims)} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output_name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {dim} ]\n"
        "  }\n"
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred_sizes} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        f"    count: {instance_count}\n"
        f"    kind: {instance_kind}\n"
        "  }\n"
        "]\n"
    )


def trtexec_command(
    model_name: str, input_name: str, input_dims: Sequence[int], max_batch: int, opt_batch: int
) -> str:
    # trtexec splits shape specs at ':'; a name that contains one must be single-quoted.
    quoted = f"\\'{input_name}\\'" if ":" in input_name else input_name
    shape = "x".join(str(d) for d in input_dims)
    return (
        f"trtexec --onnx={model_name}/1/model.onnx --saveEngine={model_name}/1/model.plan \\\n"
        f"    --minShapes={quoted}:1x{shape} \\\n"
        f"    --optShapes={quoted}:{opt_batch}x{shape} \\\n"
        f"    --maxShapes={quoted}:{max_batch}x{shape} \\\n"
        f"    --fp16"
    )


def readme_text(entries: Sequence[dict[str, Any]]) -> str:
    """The repository's README: one section per exported model (read from their vsbench.json)."""
    sections = [_readme_section(entry) for entry in entries]
    return (
        "# Triton model repository\n\n"
        "Written by `vsbench export triton`; each model folder holds `config.pbtxt`, `1/model.onnx` and\n"
        "`vsbench.json` (the preprocessing the embedder applies before sending: Triton receives tensors).\n"
        "Serve it with `tritonserver --model-repository=$PWD` and put the embedder in front:\n"
        "`python -m services.embedder --model NAME --backend triton --triton-url TRITON_HOST:8001`.\n\n"
        "A TensorRT plan is specific to the GPU model and the TensorRT version, so build it on the node\n"
        "that serves it, with the `trtexec` of the TensorRT release the tritonserver image was built with\n"
        "(NGC `tensorrt` and `tritonserver` images of the same YY.MM tag match). Then, in the model's\n"
        '`config.pbtxt`, replace `platform: "onnxruntime_onnx"` with `platform: "tensorrt_plan"` (Triton\n'
        "loads `1/model.plan`), keep `max_batch_size` at or below the `--maxShapes` batch, and compare the\n"
        "plan's vectors with the ONNX ones before switching traffic (`--fp16` changes the numbers a\n"
        "little). Without a plan, `onnxruntime_onnx` runs on the GPU through onnxruntime's CUDA provider.\n\n"
        + "\n".join(sections)
    )


def _readme_section(entry: dict[str, Any]) -> str:
    name, dims = entry["model"], entry["input_dims"]
    if entry.get("max_abs_diff_vs_local") is not None:
        verified = (
            f"Verified at export: onnxruntime vs the local backend on {entry['verified_images']} real "
            f"photos, max abs diff {entry['max_abs_diff_vs_local']:.3g} "
            f"(relative {entry['max_rel_diff_vs_local']:.3g})."
        )
    else:
        verified = "Not verified at export (--no-verify)."
    command = trtexec_command(name, entry["input"], dims, entry["max_batch"], entry["opt_batch"])
    return (
        f"## `{name}`\n\n"
        f"- input `{entry['input']}` FP32 [-1, {', '.join(map(str, dims))}], output `{entry['output']}` "
        f"FP32 [-1, {entry['dim']}], max_batch_size {entry['max_batch']}\n"
        f"- preprocessing (in the embedder): {entry['preprocessing']}\n"
        f"- {verified}\n\n"
        f"TensorRT plan, from the repository root on the GPU node:\n\n"
        f"    " + command.replace("\n", "\n    ") + "\n"
    )


def read_metadata(repository: Path) -> list[dict[str, Any]]:
    """vsbench.json of every model exported into `repository`, by model name."""
    return [json.loads(path.read_text()) for path in sorted(repository.glob(f"*/{METADATA_FILE}"))]


# --- verification -----------------------------------------------------------------------------


def shipped_photos(limit: int) -> list[Path]:
    """A few of the real photos that ship with the quickstart (sorted, so runs are repeatable)."""
    try:
        root = importlib.resources.files(SHIPPED_PHOTOS[0]).joinpath(SHIPPED_PHOTOS[1])
    except ModuleNotFoundError:
        return []
    folder = Path(str(root))
    if not folder.is_dir():
        return []
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return photos[:limit]


def _verification_images(images: Sequence[Path] | None, limit: int) -> list[Image.Image]:
    paths = list(images) if images is not None else shipped_photos(limit)
    if not paths:
        raise ExportError("no images to verify the export with (give some, or pass verify=False)")
    loaded = []
    for path in paths:
        with Image.open(path) as image:
            loaded.append(image.convert("RGB"))
    return loaded


def compare_with_onnxruntime(
    onnx_path: Path, input_name: str, output_name: str, batch: np.ndarray, expected: np.ndarray
) -> tuple[float, float]:
    """Run the file in onnxruntime on `batch`; (max abs diff, max abs diff / max |expected|)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (output,) = session.run([output_name], {input_name: batch})
    output = np.asarray(output, dtype=np.float32).reshape(len(batch), -1)
    if output.shape != expected.shape:
        raise ExportError(
            f"{onnx_path}: onnxruntime gives shape {output.shape}, the local backend {expected.shape}"
        )
    diff = float(np.abs(output - expected).max())
    return diff, diff / max(float(np.abs(expected).max()), 1e-12)


# --- the entry point --------------------------------------------------------------------------


def export_triton(
    model_name: str,
    out_dir: str | Path,
    max_batch: int = 64,
    preferred: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
    *,
    weights: str | None = None,
    verify: bool = True,
    images: Sequence[Path] | None = None,
    verify_images: int = 6,
    tolerance: float = 1e-3,
    overwrite: bool = True,
) -> ExportResult:
    """Write `<out_dir>/<model_name>/` (+ README.md) for Triton; see the module docstring.

    With `verify`, the ONNX file runs in onnxruntime on `images` (default: a few shipped photos)
    and must match the local backend within `tolerance` relative to the largest vector component.
    """
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance_kind must be one of {INSTANCE_KINDS}, got {instance_kind!r}")
    if max_batch < 1 or instance_count < 1 or max_queue_delay_us < 0:
        raise ValueError("max_batch and instance_count must be >= 1, max_queue_delay_us >= 0")
    preferred = sorted({int(size) for size in preferred if 0 < int(size) <= max_batch})
    if not preferred:
        raise ValueError(f"no preferred batch size within 1..{max_batch}")
    spec = get_spec(model_name)
    exporter = _exporter_for(spec.kind)

    out = Path(out_dir)
    model_dir = out / model_name
    if model_dir.exists() and not overwrite:
        raise ExportError(f"{model_dir} exists")
    backend = load_backend(model_name, weights=weights, device="cpu", max_batch=max_batch)
    out.mkdir(parents=True, exist_ok=True)
    # Built beside the repository and moved in when complete: a failed or interrupted export
    # never leaves a half-written model where a polling Triton would try to load it.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-{model_name}-", dir=out.resolve().parent))
    try:
        photos = _verification_images(images, verify_images) if verify else []
        probe = [Image.new("RGB", (320, 240), (90, 140, 200)), Image.new("RGB", (200, 300), (20, 20, 20))]
        batch = np.stack(
            [np.asarray(backend.preprocess(image), dtype=np.float32) for image in probe + photos]
        )
        info = backend.info()
        input_dims = tuple(int(d) for d in batch.shape[1:])
        version_dir = staging / "1"
        version_dir.mkdir()
        graph = exporter(spec, version_dir, weights, batch)
        result = ExportResult(
            model_name=model_name,
            model_dir=model_dir,
            onnx_path=model_dir / graph.path.relative_to(staging),
            config_path=model_dir / "config.pbtxt",
            readme_path=out / "README.md",
            input_name=graph.input_name,
            output_name=graph.output_name,
            input_dims=input_dims,
            dim=int(info.dim),
            max_batch=max_batch,
        )
        if verify:
            expected = backend.forward(list(batch[len(probe) :]))
            diff, relative = compare_with_onnxruntime(
                graph.path, graph.input_name, graph.output_name, batch[len(probe) :], expected
            )
            result.verified_images, result.max_abs_diff, result.max_rel_diff = len(photos), diff, relative
            if relative > tolerance:
                raise ExportError(
                    f"{model_name}: the ONNX export differs from the local backend by {diff:.3g} "
                    f"(relative {relative:.3g} > {tolerance:g}) on {len(photos)} images"
                )
        (staging / "config.pbtxt").write_text(
            config_pbtxt(
                model_name,
                input_name=result.input_name,
                output_name=result.output_name,
                input_dims=input_dims,
                dim=result.dim,
                max_batch=max_batch,
                preferred=preferred,
                max_queue_delay_us=max_queue_delay_us,
                instance_kind=instance_kind,
                instance_count=instance_count,
            )
        )
        (staging / METADATA_FILE).write_text(
            json.dumps(
                {
                    "model": model_name,
                    "kind": spec.kind,
                    "dim": result.dim,
                    "input": result.input_name,
                    "output": result.output_name,
                    "input_dims": list(input_dims),
                    "max_batch": max_batch,
                    "opt_batch": max(preferred),
                    "preprocessing": info.preprocessing,
                    "revision": info.revision,
                    "verified_images": result.verified_images,
                    "max_abs_diff_vs_local": result.max_abs_diff,
                    "max_rel_diff_vs_local": result.max_rel_diff,
                },
                indent=2,
            )
            + "\n"
        )
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.move(str(staging), str(model_dir))
    finally:
        backend.close()
        shutil.rmtree(staging, ignore_errors=True)
    result.readme_path.write_text(readme_text(read_metadata(out)))
    log.info("%s", result.summary())
    return result
