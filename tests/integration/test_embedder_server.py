"""A real embedder server: `python -m services.embedder --port 0` as a subprocess on loopback,
spoken to through the generated gRPC stubs, health checking and reflection."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from services.common import wire
from services.common.grpc_server import SERVICE_NAME, channel_options
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.types import ErrorCode, ImageItem

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90


class EmbedderProcess:
    """`python -m services.embedder ...` with its READY line parsed and its output kept."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.embedder", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        self.address = ""
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("READY "):
                self.address = line.split()[1]
                break
        if not self.address:
            self.stop()
            raise RuntimeError(f"server did not start: {''.join(self.stderr_lines[-30:])}")
        self.channel = grpc.insecure_channel(self.address, options=channel_options(64))
        self.stub = pb_grpc.EmbedderStub(self.channel)

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        return self.proc.returncode


def photo(seed: int, size: tuple[int, int] = (480, 360), quality: int = 88) -> bytes:
    """A noisy, textured JPEG (~70 KB at the default size) that compresses like a product photo."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(30, 220, size=3)
    pixels = (
        base + (xx / width)[..., None] * rng.integers(-90, 90, size=3) + rng.normal(0, 18, (height, width, 3))
    )
    pixels += 40 * np.sin(xx / rng.uniform(3, 12))[..., None] * np.cos(yy / rng.uniform(3, 12))[..., None]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def request(items: list[ImageItem], request_id: str = "") -> pb.EmbedRequest:
    return wire.request_to_pb(items, request_id=request_id)


@pytest.fixture(scope="module")
def server():
    # A real model (EfficientNet-Lite0, weights from its pip package) and a small admission queue
    # so overload is reachable from a test.
    process = EmbedderProcess(
        "--model",
        "efficientnet-lite0",
        "--max-batch",
        "16",
        "--max-wait-ms",
        "5",
        "--decode-workers",
        "2",
        "--max-queue",
        "80",
        "--max-request-items",
        "64",
        "--threads",
        "2",
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [photo(seed) for seed in range(64)]


def test_info_describes_the_model(server):
    info = wire.info_from_pb(server.stub.Info(pb.InfoRequest(), timeout=10))
    assert info.name == "efficientnet-lite0" and info.dim == 1280 and info.dtype == "float32"
    assert info.max_batch == 64 and info.backend == "torch" and info.revision.startswith("sha256:")
    assert "224x224" in info.preprocessing


def test_embed_returns_vectors_in_order(server, images):
    items = [ImageItem(f"id-{i}", images[i]) for i in range(3)]
    response = server.stub.Embed(request(items, "r1"), timeout=60)
    results = wire.response_from_pb(response)
    assert response.request_id == "r1"
    assert [r.id for r in results] == ["id-0", "id-1", "id-2"]
    assert all(r.ok and r.vector.shape == (1280,) and np.isfinite(r.vector).all() for r in results)


def test_bad_images_are_answered_per_item(server, images):
    items = [
        ImageItem("good", images[0]),
        ImageItem("empty", b""),
        ImageItem("text", b"not an image"),
        ImageItem("cut", images[1][:2000]),
    ]
    results = {r.id: wire.embedding_from_pb(r) for r in server.stub.Embed(request(items), timeout=60).results}
    assert results["good"].ok
    for bad in ("empty", "text", "cut"):
        assert results[bad].error.code == ErrorCode.INVALID_IMAGE, results[bad]


def test_64_photo_batch_fits_the_message_limits(server, images):
    total = sum(len(data) for data in images)
    assert total > 4 * 1024 * 1024  # over gRPC's 4 MiB default: the raised limit is what lets it through
    items = [ImageItem(str(i), data) for i, data in enumerate(images)]
    response = server.stub.Embed(request(items), timeout=300)
    assert len(response.results) == 64 and all(r.WhichOneof("outcome") == "vector" for r in response.results)


def test_embed_stream_answers_every_request(server, images):
    requests = [
        request([ImageItem(f"{b}-{i}", images[b * 2 + i]) for i in range(2)], f"batch-{b}") for b in range(4)
    ]
    responses = list(server.stub.EmbedStream(iter(requests), timeout=120))
    assert sorted(r.request_id for r in responses) == [f"batch-{b}" for b in range(4)]
    for response in responses:
        assert len(response.results) == 2
        assert all(r.id.startswith(response.request_id.split("-")[1]) for r in response.results)


def test_health_check_is_serving(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = ProtoReflectionDescriptorDatabase(server.channel).get_services()
    assert SERVICE_NAME in services and "grpc.health.v1.Health" in services


def test_overload_is_resource_exhausted_and_admitted_requests_complete(server, images):
    # max-queue 80: two requests of 40 are admitted, further ones are refused at once.
    items = [ImageItem(str(i), images[i % 64]) for i in range(40)]

    def call(_: int):
        try:
            return server.stub.Embed(request(items), timeout=300)
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(call, range(5)))
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    answered = [o for o in outcomes if not isinstance(o, grpc.RpcError)]
    assert refused and all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused), outcomes
    assert answered and all(len(o.results) == 40 for o in answered)


def test_oversized_request_is_invalid_argument(server, images):
    items = [ImageItem(str(i), b"x") for i in range(65)]
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Embed(request(items), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sigterm_drains_in_flight_request_then_exits_zero():
    process = EmbedderProcess(
        "--model",
        "efficientnet-lite0",
        "--max-batch",
        "16",
        "--threads",
        "2",
        "--grace-seconds",
        "60",
        "--no-warmup",
    )
    try:
        # 64 photos take seconds on a CPU: still running when the signal arrives 0.3 s later.
        items = [ImageItem(str(i), photo(100 + i)) for i in range(64)]
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(process.stub.Embed, request(items), timeout=120)
            time.sleep(0.3)
            assert not in_flight.done()
            process.proc.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert len(response.results) == 64 and all(
            r.WhichOneof("outcome") == "vector" for r in response.results
        )
        assert process.proc.wait(60) == 0
        assert any("draining" in line for line in process.stderr_lines)
    finally:
        process.stop()


def test_bad_model_name_fails_fast_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "-m", "services.embedder", "--model", "nope", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "unknown model 'nope'" in proc.stderr


def test_env_settings_apply(tmp_path):
    process = EmbedderProcess(
        env={"VSBENCH_EMBEDDER_MODEL": "histogram", "VSBENCH_EMBEDDER_MAX_REQUEST_ITEMS": "7"}
    )
    try:
        info = process.stub.Info(pb.InfoRequest(), timeout=10)
        assert info.name == "histogram" and info.max_batch == 7
    finally:
        assert process.stop() == 0


def test_auth_token_file_guards_embed_but_not_health(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    process = EmbedderProcess("--model", "histogram", "--auth-token-file", str(token_file))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            process.stub.Info(pb.InfoRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", "Bearer s3cret-token"),)
        assert process.stub.Info(pb.InfoRequest(), timeout=10, metadata=metadata).name == "histogram"
        health = health_pb2_grpc.HealthStub(process.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert not any("s3cret-token" in line for line in process.stderr_lines)
    finally:
        assert process.stop() == 0


def test_taken_port_fails_with_a_clear_message_not_a_traceback():
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "services.embedder", "--model", "histogram", "--no-warmup",
             "--port", str(taken.getsockname()[1])],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
    assert proc.returncode == 1 and "could not bind" in proc.stderr
    assert "Traceback" not in proc.stderr and "READY" not in proc.stdout


def test_every_size_limit_setting_has_a_flag():
    from services.embedder.__main__ import build_settings, parse_args

    settings = build_settings(parse_args(["--max-image-bytes", "1000", "--max-pixels", "2000"]))
    assert (settings.max_image_bytes, settings.max_pixels) == (1000, 2000)
    assert settings.decode_limits().max_bytes == 1000
