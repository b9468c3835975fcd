"""What goes into a backend's fingerprint (services.common.fingerprint): weights, preprocessing,
pooling, dtypes and the versions of the libraries that compute the vectors.

Each backend names the libraries that change its numbers (the model runtime, and Pillow where it
resizes locally); unrelated libraries stay out so that upgrading them keeps stored vectors valid.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from services.common.fingerprint import fingerprint, tree_sha256

# Files of a checkpoint directory that decide its vectors: weights, configs (model and
# processor), remote code. Tokenizer vocabularies and READMEs do not.
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".py")


def library_versions(*distributions: str) -> dict[str, str]:
    """{distribution: installed version} ("not installed" where absent)."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def canonical(value: Any) -> Any:
    """Preprocessing records as JSON data: dataclasses and pydantic models become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def checkpoint_files(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of the files in a checkpoint directory that change its vectors
    (hidden folders such as a download's .cache/ are left out)."""
    hashes = tree_sha256(directory, CHECKPOINT_SUFFIXES)
    return {
        path: digest
        for path, digest in hashes.items()
        if not any(part.startswith(".") for part in path.split("/"))
    }


def model_fingerprint(
    *,
    backend: str,
    weights: Mapping[str, str],
    preprocessing: Any,
    pooling: str,
    dtype: str = "float32",
    compute_dtype: str = "float32",
    libraries: Sequence[str] = (),
    **more: Any,
) -> str:
    """ "sha256:<hex>" over everything listed. `weights`: {file name: sha256}; `more`: any other
    setting that changes the numbers (an ONNX output tensor, a task adapter, ...)."""
    return fingerprint(
        {
            "backend": backend,
            "weights": dict(weights),
            "preprocessing": canonical(preprocessing),
            "pooling": pooling,
            "dtype": dtype,
            "compute_dtype": compute_dtype,
            "libraries": library_versions(*libraries),
            **{key: canonical(value) for key, value in more.items()},
        }
    )
