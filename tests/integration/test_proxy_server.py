"""End to end: `python -m services.api_proxy` as a real gRPC server (subprocess, --port 0) in front of
a fake vendor, called through the generated stub with a required bearer token; afterwards nothing
the run wrote (stdout, stderr, cache files, gRPC answers) contains the vendor key or the token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import wire
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.types import ErrorCode, ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import HERMETIC_SET
from tests.fakes.vendors import CohereVendor, FakeVendorServer, Fault, expected_vector

VENDOR_KEY = "co-live-SECRET-0123456789abcdef"
GRPC_TOKEN = "grpc-token-SECRET-9876543210"
DIM = 512


def start_proxy(tmp_path: Path, fake: FakeVendorServer) -> tuple[subprocess.Popen, str, list[str]]:
    token_file = tmp_path / "grpc-token"
    token_file.write_text(GRPC_TOKEN + "\n")
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CO_API_KEY": VENDOR_KEY,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **HERMETIC_SET,
    }
    command = [
        sys.executable, "-m", "services.api_proxy", "--provider", "cohere", "--model", "embed-v4.0",
        "--dimension", str(DIM), "--host", "127.0.0.1", "--port", "0", "--base-url", fake.url,
        "--cache-dir", str(tmp_path / "cache"), "--auth-token-file", str(token_file),
        "--rpm", "0", "--ipm", "0", "--concurrency", "4", "--timeout", "2",
        "--backoff-initial", "0.001", "--backoff-max", "0.01", "--grace-seconds", "1", "--log-level", "DEBUG",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout_lines: list[str] = []
    ready = threading.Event()

    def read_stdout() -> None:
        for line in process.stdout:
            stdout_lines.append(line)
            if line.startswith("READY "):
                ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    if not ready.wait(timeout=60):
        process.kill()
        raise AssertionError(f"no READY line; stderr: {process.stderr.read()[-2000:]}")
    address = next(line for line in stdout_lines if line.startswith("READY ")).split()[1]
    return process, address, stdout_lines


@pytest.mark.slow
def test_proxy_server_end_to_end_with_bearer_token_and_no_secret_leaks(tmp_path):
    images = make_images(7, start=1000)
    vendor = CohereVendor(DIM, key=VENDOR_KEY)
    faults = [
        Fault("429", retry_after="0"),
        Fault("status", status=503),
        # A vendor that echoes the key back in a final error: the proxy must not repeat it.
        Fault("status", status=422, message=f"invalid api token {VENDOR_KEY}: rejected"),
    ]
    with FakeVendorServer(vendor, faults=faults) as fake:
        process, address, stdout_lines = start_proxy(tmp_path, fake)
        answers: list[str] = []
        try:
            with grpc.insecure_channel(address) as channel:
                stub = pb_grpc.EmbedderStub(channel)
                auth = (("authorization", f"Bearer {GRPC_TOKEN}"),)

                # Health and reflection stay open; everything else needs the token.
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    with pytest.raises(grpc.RpcError) as denied:
                        stub.Info(pb.InfoRequest(), metadata=metadata, timeout=10)
                    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

                info = stub.Info(pb.InfoRequest(), metadata=auth, timeout=10)
                assert (info.name, info.dim, info.backend) == ("cohere/embed-v4.0", DIM, "cohere")
                answers.append(str(info))

                # First batch: a 429 and a 503 are retried; the third attempt gets the 422 for the batch
                # of 3, which is split to single images that all succeed.
                first = [ImageItem(f"a{i}", data) for i, data in enumerate(images[:3])] + [ImageItem("junk", b"xx")]
                response = stub.Embed(wire.request_to_pb(first, request_id="r1"), metadata=auth, timeout=30)
                answers.append(str(response))
                results = wire.response_from_pb(response)
                assert response.request_id == "r1" and [r.id for r in results] == ["a0", "a1", "a2", "junk"]
                # This call's own cost: 429, 503, 422 for the batch of 3, then its two halves.
                first_usage = wire.response_usage(response)
                for result, data in zip(results[:3], images[:3]):
                    assert result.ok, result.error
                    np.testing.assert_array_equal(result.vector, expected_vector(data, DIM))
                assert results[3].error.code == ErrorCode.INVALID_IMAGE

                # A stream: the second request repeats images, answered from the cache.
                requests = [
                    wire.request_to_pb([ImageItem(f"s{i}", d) for i, d in enumerate(images[3:])], request_id="s1"),
                    wire.request_to_pb([ImageItem("again", images[0]), ImageItem("again2", images[4])],
                                       request_id="s2"),
                ]
                streamed = {r.request_id: r for r in stub.EmbedStream(iter(requests), metadata=auth, timeout=30)}
                answers += [str(r) for r in streamed.values()]
                assert set(streamed) == {"s1", "s2"}
                for result in wire.response_from_pb(streamed["s2"]):
                    assert result.ok
                stream_usage = [wire.response_usage(streamed[k]) for k in ("s1", "s2")]

                usage = json.loads(stub.Info(pb.InfoRequest(), metadata=auth, timeout=10).details["lifetime_usage"])
                answers.append(json.dumps(usage))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        stderr = process.stderr.read()

    assert process.returncode == 0, stderr[-2000:]
    assert first_usage.to_dict() == {"billed_images": 3, "cached_images": 0, "requests": 5, "retries": 2,
                                     "rate_limited": 1, "cost_usd": round(3 * 0.00047, 6)}
    # The stream's two requests run concurrently: whichever sends images[4] pays for it, the other
    # gets it as cached; images[0] is a cache hit. Together: 4 billed, 2 cached, in one vendor request
    # or two.
    assert sum(u.billed_images for u in stream_usage) == 4 and sum(u.cached_images for u in stream_usage) == 2
    assert sum(u.requests for u in stream_usage) in (1, 2) and sum(u.retries for u in stream_usage) == 0
    assert usage["http_429"] == 1 and usage["retries"] == 2
    # Stream batches run concurrently: a repeat is a cache hit or joins the identical request in flight.
    assert usage["images_embedded"] == 7 and usage["cache_hits"] + usage["deduplicated"] == 2
    assert usage["errors"] == {"INVALID_IMAGE": 1}
    assert usage["estimated_cost_usd"] > 0
    assert fake.rejections == []  # every request had the documented shape (the 422 was scripted)

    # Nothing the run wrote or answered holds a secret.
    written = ["".join(stdout_lines), stderr, *answers]
    written += [p.read_bytes().decode("latin-1") for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    for text in written:
        assert VENDOR_KEY not in text
        assert GRPC_TOKEN not in text
    assert "READY 127.0.0.1:" in stdout_lines[0]
    assert "cohere/embed-v4.0" in stderr  # the logs did run, at DEBUG


def test_in_process_server_serves_lifetime_usage_through_info(monkeypatch):
    """BackgroundServer + the servicer's info_details hook: the operator's running totals move
    between two Info calls."""
    from services.api_proxy.model import ProxyModel
    from services.common.grpc_server import BackgroundServer
    from services.common.settings import ServerSettings
    from tests.fakes.proxy import apply_environ, make_vendor, proxy_settings, vendor_environ

    vendor = make_vendor("gemini", dim=768)
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor) as fake:
        model = ProxyModel.from_settings(proxy_settings("gemini", fake))
        with BackgroundServer(model, ServerSettings(port=0, auth_token="t0ken-value")) as server:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.EmbedderStub(channel)
                auth = (("authorization", "Bearer t0ken-value"),)
                before = json.loads(stub.Info(pb.InfoRequest(), metadata=auth).details["lifetime_usage"])
                batch = [ImageItem(str(i), d) for i, d in enumerate(make_images(8, start=77))]
                response = stub.Embed(wire.request_to_pb(batch), metadata=auth, timeout=30)
                after = json.loads(stub.Info(pb.InfoRequest(), metadata=auth).details["lifetime_usage"])
    assert before["images_embedded"] == 0 and after["images_embedded"] == 8
    assert after["requests"] == 2  # 8 images in Gemini batches of at most 6
    assert all(r.ok for r in wire.response_from_pb(response))


def test_each_response_carries_the_usage_of_its_own_request(monkeypatch, tmp_path):
    """Per-call usage over real gRPC on loopback: Embed and EmbedStream answers each hold what that
    request cost; a repeat is cached, not billed; the fingerprint and role come with Info."""
    from services.api_proxy.model import ProxyModel
    from services.common.grpc_server import BackgroundServer
    from services.common.settings import ServerSettings
    from tests.fakes.proxy import apply_environ, make_vendor, proxy_settings, vendor_environ

    images = make_images(5, start=900)
    vendor = make_vendor("cohere", dim=256)
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor, faults=[Fault("429", retry_after="0")]) as fake:
        settings = proxy_settings("cohere", fake, no_cache=False, cache_dir=tmp_path, input_role="query")
        model = ProxyModel.from_settings(settings)
        with BackgroundServer(model, ServerSettings(port=0)) as server:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.EmbedderStub(channel)
                info = wire.info_from_pb(stub.Info(pb.InfoRequest(), timeout=10))
                first = stub.Embed(wire.request_to_pb([ImageItem(f"a{i}", d) for i, d in enumerate(images[:3])]),
                                   timeout=30)
                second = stub.Embed(wire.request_to_pb([ImageItem("b0", images[0]), ImageItem("b1", images[3])]),
                                    timeout=30)
                streamed = list(stub.EmbedStream(iter([
                    wire.request_to_pb([ImageItem("s0", images[4])], request_id="s0"),
                ]), timeout=30))
    assert info.fingerprint.startswith("sha256:") and info.details["input_role"] == "query"
    assert all(r.ok for r in wire.response_from_pb(first) + wire.response_from_pb(second))
    assert wire.response_usage(first).to_dict() == {
        "billed_images": 3, "cached_images": 0, "requests": 2, "retries": 1, "rate_limited": 1,
        "cost_usd": round(3 * 0.00047, 6)}
    assert wire.response_usage(second).to_dict() == {
        "billed_images": 1, "cached_images": 1, "requests": 1, "retries": 0, "rate_limited": 0,
        "cost_usd": round(0.00047, 6)}
    [only] = streamed
    assert (wire.response_usage(only).billed_images, wire.response_usage(only).requests) == (1, 1)
    assert {r.role for r in fake.received} == {"search_query"} and fake.rejections == []


def test_missing_credentials_stop_the_server_with_a_clear_message(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **HERMETIC_SET}
    done = subprocess.run(
        [sys.executable, "-m", "services.api_proxy", "--provider", "cohere", "--port", "0", "--no-cache"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "CO_API_KEY" in done.stderr and "READY" not in done.stdout
