"""The Triton path end to end, against a real tritonserver (2.51, from PyPI nvidia-pytriton).

    vsbench export triton  ->  model repository  ->  tritonserver on 127.0.0.1 (gRPC)
    python -m services.embedder --backend triton --triton-url ...  ->  our gRPC API  ->  vectors

The server runs from its own venv under <repo>/.cache/pytriton-venv (created by the first run,
~1-2 minutes of pip from PyPI, reused after; triton_support/server.py says why). If that venv
cannot be built the tests fail with pip's output: they never skip.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.common.types import ErrorCode, ImageItem
from services.embedder.backends.registry import load_backend
from services.embedder.batching import embed_sync
from services.embedder.triton_export import ExportError, export_triton, shipped_photos
from tests.hub_processors import DINOV2_PROCESSOR
from tests.integration.triton_support.server import (
    TritonSetupError,
    as_python_backend,
    ensure_triton_env,
    running_triton,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODELS = ("efficientnet-lite0", "open-nsfw")
HF_MODEL = "dinov2-large"  # a tiny random DINOv2 of the real class, saved with the real processor config
TRITON_MAX_BATCH = 8  # small, so the embedder's batches of 16 are split into concurrent requests
PHOTOS = 20
# onnxruntime (in Triton) vs torch / onnxruntime (local) on the same preprocessed tensors.
TOLERANCE = {"efficientnet-lite0": 1e-4, "open-nsfw": 1e-5}


@pytest.fixture(scope="module")
def triton_env():
    started = time.monotonic()
    env = ensure_triton_env()  # raises TritonSetupError (test error, not skip) when pip fails
    how = f"created in {env.created_in_s:.0f}s" if env.created_in_s else "reused"
    print(f"\npytriton venv: {env.venv} ({how}; ready in {time.monotonic() - started:.1f}s)")
    return env


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    import transformers

    directory = tmp_path_factory.mktemp("dinov2")
    config = transformers.Dinov2Config(
        image_size=224,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.Dinov2Model(config).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR))  # facebook/dinov2-large's
    return directory


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_dinov2):
    repository = tmp_path_factory.mktemp("triton-repository")
    options = dict(
        max_batch=TRITON_MAX_BATCH, preferred=(4, 8), max_queue_delay_us=2000, instance_kind="KIND_CPU"
    )
    results = {name: export_triton(name, repository, **options) for name in MODELS}
    results[HF_MODEL] = export_triton(HF_MODEL, repository, weights=str(tiny_dinov2), **options)
    return repository, results


@pytest.fixture(scope="module")
def triton(triton_env, exported, tmp_path_factory):
    repository, _ = exported
    served = tmp_path_factory.mktemp("triton-served")
    for name in (*MODELS, HF_MODEL):
        as_python_backend(repository / name, served)
    with running_triton(triton_env, served) as server:
        print(f"tritonserver ready in {server.started_in_s:.1f}s at {server.url}")
        yield server


@pytest.fixture(scope="module")
def photos() -> list[ImageItem]:
    paths = shipped_photos(PHOTOS)
    assert len(paths) == PHOTOS, "the quickstart's shipped photos are missing"
    return [ImageItem(path.name, path.read_bytes()) for path in paths]


def local_vectors(model: str, items: list[ImageItem], weights: str | None = None) -> np.ndarray:
    backend = load_backend(model, weights=weights)
    try:
        results = embed_sync(backend, items, max_batch=16)
    finally:
        backend.close()
    assert all(r.ok for r in results)
    return np.stack([r.vector for r in results])


def test_a_failed_pytriton_install_fails_loudly(tmp_path):
    # What a CI run without PyPI, or with a broken pin, gets: pip's own words, no skip.
    with pytest.raises(TritonSetupError, match=r"pip install nvidia-pytriton==0\.0\.0 \(PyPI\) .* failed"):
        ensure_triton_env(tmp_path / "venv", requirements=("nvidia-pytriton==0.0.0",))
    assert not (tmp_path / "venv" / ".vsbench-requirements").exists()  # the next run retries


# --- the exported repository ---------------------------------------------------------------------


def test_export_writes_a_triton_repository(exported):
    import onnx

    repository, results = exported
    lite = results["efficientnet-lite0"]
    config = (repository / "efficientnet-lite0" / "config.pbtxt").read_text()
    for line in (
        'name: "efficientnet-lite0"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {TRITON_MAX_BATCH}",
        'name: "pixel_values"',
        "dims: [ 3, 224, 224 ]",
        'name: "embedding"',
        "dims: [ 1280 ]",
        "preferred_batch_size: [ 4, 8 ]",
        "max_queue_delay_microseconds: 2000",
        "kind: KIND_CPU",
    ):
        assert line in config
    # The batch axis is symbolic on the input and the output of both graphs.
    for name in MODELS:
        graph = onnx.load(str(repository / name / "1" / "model.onnx")).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
        assert graph.output[0].type.tensor_type.shape.dim[0].dim_param
    # Verified at export on real photos: max abs diff reported, tiny for an fp32 export.
    assert lite.verified_images > 0 and lite.max_abs_diff is not None and lite.max_abs_diff < 1e-4
    nsfw = results["open-nsfw"]
    assert (nsfw.input_name, nsfw.output_name, nsfw.input_dims, nsfw.dim) == (
        "input:0",
        "Reshape:0",
        (224, 224, 3),
        1024,
    )
    metadata = json.loads((repository / "open-nsfw" / "vsbench.json").read_text())
    assert "JPEG re-encode q75" in metadata["preprocessing"] and "BGR" in metadata["preprocessing"]
    readme = (repository / "README.md").read_text()
    assert "--minShapes=pixel_values:1x3x224x224" in readme
    assert "--optShapes=pixel_values:8x3x224x224" in readme
    assert "--maxShapes=pixel_values:8x3x224x224" in readme
    assert "--maxShapes=\\'input:0\\':8x224x224x3" in readme  # trtexec needs the ':' name quoted


def test_export_refuses_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="no Triton exporter for models of kind 'histogram'"):
        export_triton("histogram", tmp_path)
    with pytest.raises(ExportError, match="instance_kind"):
        export_triton("efficientnet-lite0", tmp_path, instance_kind="GPU")
    assert not any(tmp_path.iterdir())  # nothing half-written
    # A failed verification (an impossible tolerance here) leaves no model folder and no staging.
    repository = tmp_path / "repository"
    with pytest.raises(ExportError, match="differs from the local backend"):
        export_triton("open-nsfw", repository, tolerance=-1.0)
    assert not (repository / "open-nsfw").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["repository"]


# --- a real Triton behind the embedder ------------------------------------------------------------


class EmbedderProcess:
    """`python -m services.embedder ...` on 127.0.0.1, port 0; `address` from its READY line."""

    def __init__(self, *args: str, timeout_s: float = 120) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.embedder", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        self.stderr: list[str] = []
        self._stderr_reader = threading.Thread(
            target=lambda: self.stderr.extend(self.proc.stderr), daemon=True
        )
        self._stderr_reader.start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.address = ""
        deadline = time.monotonic() + timeout_s
        while not self.address and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("READY "):
                self.address = line.split()[1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr_reader.join(10)
        return int(self.proc.returncode)


@pytest.mark.parametrize("model", MODELS)
def test_embedder_in_front_of_triton_matches_the_local_backend(triton, photos, model):
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    embedder = EmbedderProcess(
        "--model",
        model,
        "--backend",
        "triton",
        "--triton-url",
        triton.url,
        "--max-batch",
        "16",
        "--max-wait-ms",
        "20",
    )
    try:
        assert embedder.address, f"embedder did not start:\n{''.join(embedder.stderr[-20:])}"
        broken = ImageItem("not-an-image", b"\x00\x01 definitely not a JPEG")
        with GrpcEmbeddingClient(embedder.address, batch_size=len(photos) + 1) as client:
            info = client.info()
            results = list(client.embed([*photos, broken]))
    finally:
        assert embedder.stop() == 0

    assert info.backend == "triton" and info.name == model
    assert info.details["triton_url"] == triton.url and info.details["triton_platform"] == "python"
    assert info.details["preprocessing_location"].startswith("embedder")
    assert [r.id for r in results] == [p.id for p in photos] + ["not-an-image"]
    assert results[-1].error is not None and results[-1].error.code == ErrorCode.INVALID_IMAGE
    remote = np.stack([r.vector for r in results[:-1]])
    local = local_vectors(model, photos)
    assert remote.shape == local.shape == (PHOTOS, info.dim)
    difference = float(np.abs(remote - local).max())
    print(f"{model}: embedder->Triton vs local on {PHOTOS} photos: max abs diff {difference:.3g}")
    assert difference <= TOLERANCE[model] * max(1.0, float(np.abs(local).max()))


def test_triton_backend_splits_large_batches_and_triton_batches_them(triton, photos):
    import tritonclient.grpc as grpcclient

    from services.embedder.backends.triton_loader import load_triton_backend

    backend = load_triton_backend("efficientnet-lite0", triton.url)
    stats = grpcclient.InferenceServerClient(triton.url)
    try:
        before = stats.get_inference_statistics("efficientnet-lite0", as_json=True)["model_stats"][0]
        inputs = [backend.preprocess(_decode(item.data)) for item in photos]
        # 20 items > max_batch_size 8: three requests in flight at once (8 + 8 + 4).
        vectors = backend.forward(inputs)
        after = stats.get_inference_statistics("efficientnet-lite0", as_json=True)["model_stats"][0]
    finally:
        backend.close()
        stats.close()
    served = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert vectors.shape == (PHOTOS, 1280) and np.isfinite(vectors).all()
    assert served == PHOTOS  # every item reached the model exactly once
    assert 1 <= executions <= 3  # never more runs than requests (the batcher may merge them)
    assert np.allclose(vectors[:2], local_vectors("efficientnet-lite0", photos[:2]), atol=1e-4)


def test_transformers_model_preprocessed_by_its_processor_in_front_of_triton(
    triton, exported, tiny_dinov2, photos
):
    """A transformers model: exported through torch.onnx with its pooling, preprocessed in the
    embedder by its own image processor, read from the exported model folder's copy."""
    from services.embedder.backends.triton_loader import load_triton_backend

    repository, results = exported
    assert results[HF_MODEL].max_abs_diff is not None and results[HF_MODEL].max_abs_diff < 1e-4
    backend = load_triton_backend(HF_MODEL, triton.url, weights=str(repository / HF_MODEL))
    try:
        info = backend.info()
        remote = np.stack([r.vector for r in embed_sync(backend, photos[:6])])
    finally:
        backend.close()
    assert info.backend == "triton" and info.dim == 32  # the tiny model's width, read from Triton
    assert "256" in info.preprocessing and "224" in info.preprocessing
    local = local_vectors(HF_MODEL, photos[:6], weights=str(tiny_dinov2))
    assert float(np.abs(remote - local).max()) < 1e-4


def test_clear_errors_when_triton_or_the_model_is_missing(triton):
    from services.embedder.backends.triton import TritonError
    from services.embedder.backends.triton_loader import load_triton_backend
    from tests.integration.triton_support.server import free_port

    with pytest.raises(
        TritonError, match=r"Triton at 127\.0\.0\.1:\d+ is not reachable: StatusCode.UNAVAILABLE"
    ):
        load_triton_backend("efficientnet-lite0", f"127.0.0.1:{free_port()}", connect_timeout_s=5)
    with pytest.raises(
        TritonError,
        match="'efficientnet-lite2' .* is not ready; models on that server: "
        "dinov2-large v1 READY, efficientnet-lite0 v1 READY, open-nsfw v1 READY",
    ):
        load_triton_backend("efficientnet-lite2", triton.url)
    # The right server, the wrong model for this preprocessing (HWC open-nsfw vs CHW Lite0).
    with pytest.raises(
        TritonError, match=r"local preprocessing makes \[3, 224, 224\] .* takes \[224, 224, 3\]"
    ):
        load_triton_backend("efficientnet-lite0", triton.url, triton_model="open-nsfw")


def test_embedder_exits_with_a_clear_message_when_triton_is_down():
    from tests.integration.triton_support.server import free_port

    url = f"127.0.0.1:{free_port()}"
    embedder = EmbedderProcess(
        "--model", "efficientnet-lite0", "--backend", "triton", "--triton-url", url, timeout_s=60
    )
    code = embedder.proc.wait(60)
    assert embedder.stop() == code == 1 and not embedder.address
    assert any(f"Triton at {url} is not reachable" in line for line in embedder.stderr)


def _decode(data: bytes):
    from services.embedder.images import decode_image

    return decode_image(data)
