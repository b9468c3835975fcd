"""The text files of a Triton model repository: config.pbtxt, the README with TensorRT notes, and
the vsbench.json each exported model carries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

METADATA_FILE = "vsbench.json"


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
