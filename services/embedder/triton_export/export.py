"""`export_triton`: write and verify one model of a Triton model repository (see the package
docstring for the layout)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from services.embedder.backends.registry import load_backend, resolve_options
from services.embedder.triton_export.onnx_export import ExportError, exporter_for
from services.embedder.triton_export.repository import METADATA_FILE, config_pbtxt, read_metadata, readme_text
from services.embedder.triton_export.verify import compare_with_onnxruntime, verification_images

log = logging.getLogger(__name__)

INSTANCE_KINDS: tuple[str, ...] = ("KIND_GPU", "KIND_CPU")


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
        raise ExportError(f"instance_kind must be one of {INSTANCE_KINDS}, got {instance_kind!r}")
    if max_batch < 1 or instance_count < 1 or max_queue_delay_us < 0:
        raise ExportError("max_batch and instance_count must be >= 1, max_queue_delay_us >= 0")
    preferred = sorted({int(size) for size in preferred if 0 < int(size) <= max_batch})
    if not preferred:
        raise ExportError(f"no preferred batch size within 1..{max_batch}")
    spec, options = resolve_options(model_name, weights)
    exporter = exporter_for(spec.kind)

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
        photos = verification_images(images, verify_images) if verify else []
        probe = [Image.new("RGB", (320, 240), (90, 140, 200)), Image.new("RGB", (200, 300), (20, 20, 20))]
        batch = np.stack(
            [np.asarray(backend.preprocess(image), dtype=np.float32) for image in probe + photos]
        )
        info = backend.info()
        input_dims = tuple(int(d) for d in batch.shape[1:])
        version_dir = staging / "1"
        version_dir.mkdir()
        graph = exporter(model_name, options, version_dir, batch)
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
                    "local_fingerprint": info.fingerprint,
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
