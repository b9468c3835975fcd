"""`load_triton_backend`: a registered model preprocessed here, as its options say, and run on
Triton (backends/triton.py). The fingerprint covers what the embedder can know of the Triton
model; see triton.py's docstring and docs/models.md.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.common.fingerprint import file_sha256
from services.embedder.backends.errors import BackendLoadError
from services.embedder.backends.options import BackendOptions
from services.embedder.backends.provenance import canonical
from services.embedder.backends.registry import resolve_options
from services.embedder.backends.triton import Preprocess, TritonBackend, TritonTarget

log = logging.getLogger(__name__)

# Files of an exported model folder (vsbench export triton) that Triton computes with.
EXPORTED_MODEL_FILES = ("1/model.onnx", "1/model.plan")


def _hf_preprocessor(options: BackendOptions) -> tuple[Preprocess, str, Any]:
    """Models preprocessed by their transformers image processor: read preprocessor_config.json
    from the weights option (the checkpoint directory, or the exported Triton model folder, which
    holds a copy) or the offline hub cache."""
    from services.embedder.backends.hf import resolve_weights
    from services.embedder.backends.hf_processors import (
        describe_processor,
        load_image_processor,
        processor_record,
    )

    path = resolve_weights(
        getattr(options, "model_id", None),
        getattr(options, "weights", None),
        required=("preprocessor_config.json",),
    )
    processor = load_image_processor(path)
    local = threading.local()

    def preprocess(image: Image.Image) -> np.ndarray:
        # One processor copy per thread, as the local backend does (processors are not thread-safe).
        mine = getattr(local, "processor", None)
        if mine is None:
            mine = local.processor = copy.deepcopy(processor)
        pixels = mine(images=[image.convert("RGB")], return_tensors="np")["pixel_values"]
        return np.asarray(pixels[0], dtype=np.float32)

    return preprocess, describe_processor(processor), processor_record(processor)


# kind -> how to build the local preprocessing when the options have no `Preprocessing` of their own.
LIBRARY_PREPROCESSORS: dict[str, Callable[[BackendOptions], tuple[Preprocess, str, Any]]] = {
    "hf": _hf_preprocessor,
}


def exported_model_files(folder: str | None) -> dict[str, str]:
    """{file: sha256} of the model files in an exported model folder, when `folder` is one."""
    if not folder:
        return {}
    root = Path(folder).expanduser()
    return {name: file_sha256(root / name) for name in EXPORTED_MODEL_FILES if (root / name).is_file()}


def load_triton_backend(
    name: str,
    url: str,
    *,
    triton_model: str | None = None,
    model_version: str = "",
    weights: str | None = None,
    max_batch: int = 64,
    timeout_s: float = 30.0,
    connect_timeout_s: float = 10.0,
    ssl: bool = False,
    root_certificates: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> TritonBackend:
    """The registered model `name`, preprocessed here as its spec says, run by Triton at `url`
    (host:port of Triton's gRPC endpoint) under `triton_model` (default: the same name).
    `weights` may name the exported model folder: its files then enter the fingerprint."""
    spec, options = resolve_options(name, weights)
    preprocessing = getattr(options, "preprocessing", None)
    if preprocessing is not None:
        preprocess: Preprocess = preprocessing
        description, record = preprocessing.describe(), canonical(preprocessing)
    elif spec.kind in LIBRARY_PREPROCESSORS:
        preprocess, description, record = LIBRARY_PREPROCESSORS[spec.kind](options)
    else:
        raise BackendLoadError(
            f"{name}: its preprocessing runs inside its model library ({spec.kind}); the triton backend "
            f"supports models with a Preprocessing or of kinds {sorted(LIBRARY_PREPROCESSORS)}"
        )
    target = TritonTarget(
        url=url,
        model=triton_model or name,
        version=model_version,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        ssl=ssl,
        root_certificates=root_certificates,
        headers=dict(headers or {}),
    )
    backend = TritonBackend(
        name,
        target,
        preprocess,
        description,
        # ONNX models name their tensors (open-nsfw: input:0 -> Reshape:0), as the export keeps them.
        input_name=getattr(options, "input", None),
        output_name=getattr(options, "output", None),
        max_batch=max_batch,
        normalized=spec.normalized,
        details={"pooling": spec.pooling, "local_spec_weights": str(spec.weights or "")},
        preprocessing_record=record,
        pooling=spec.pooling,
        exported_files=exported_model_files(weights),
    )
    log.info("%s served by Triton model %r at %s", name, target.model, target.url)
    return backend
