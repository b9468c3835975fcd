"""`vsbench export triton`: write an NVIDIA Triton model repository for a registered model.

    <out>/<model>/config.pbtxt      platform onnxruntime_onnx, dynamic batching, instance group
    <out>/<model>/1/model.onnx      batch axis dynamic (TensorRT: see <out>/README.md)
    <out>/<model>/vsbench.json      what the embedder in front of Triton must do before sending
    <out>/README.md                 how to build a TensorRT plan on the GPU node and serve it

onnx_export.py makes the ONNX file per kind, repository.py writes config.pbtxt / README.md /
vsbench.json, verify.py checks the file against the local backend, export.py puts it together.

Preprocessing stays in the embedder (see docs/triton.md): the Triton model takes the float32
tensor the local backend's `preprocess` makes, so the repository is checked by running the ONNX
file in onnxruntime on a few real photos and comparing with the local backend's vectors.
"""

from services.embedder.triton_export.export import INSTANCE_KINDS, ExportResult, export_triton
from services.embedder.triton_export.onnx_export import ONNX_EXPORTERS, ExportError, OnnxGraph
from services.embedder.triton_export.repository import (
    config_pbtxt,
    read_metadata,
    readme_text,
    trtexec_command,
)
from services.embedder.triton_export.verify import compare_with_onnxruntime, shipped_photos

__all__ = [
    "INSTANCE_KINDS",
    "ONNX_EXPORTERS",
    "ExportError",
    "ExportResult",
    "OnnxGraph",
    "compare_with_onnxruntime",
    "config_pbtxt",
    "export_triton",
    "read_metadata",
    "readme_text",
    "shipped_photos",
    "trtexec_command",
]
