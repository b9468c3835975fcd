"""Checking an export: the ONNX file in onnxruntime against the local backend, on real photos."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from services.embedder.triton_export.onnx_export import ExportError

# Real photos shipped with the quickstart, used to verify an export when no images are given.
SHIPPED_PHOTOS = ("services.evaluator.quickstart", "photos")


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


def verification_images(images: Sequence[Path] | None, limit: int) -> list[Image.Image]:
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
