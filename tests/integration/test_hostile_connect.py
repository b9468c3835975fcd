"""Issue 11 item 3: a dead address fails fast with one clear line; a server that is starting gets
patience. Real gRPC servers on loopback; no timing thresholds (the bound is a parameter)."""

from __future__ import annotations

import inspect
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from services.common import wire
from services.common.errors import VsbenchError
from services.common.grpc_server import BackgroundServer
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.settings import ServerSettings
from services.common.types import ModelInfo
from services.evaluator.clients.base import EmbeddingServiceError
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from tests.integration.test_grpc_client import CountingModel, items


def unused_port() -> int:
    """A port nothing listens on: bound (so the kernel picks it) and closed again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_default_connect_timeout_is_seconds_not_minutes():
    default = inspect.signature(GrpcEmbeddingClient).parameters["connect_timeout_s"].default
    assert 0 < default <= 10


@pytest.mark.parametrize("call", ["info", "embed"])
def test_refused_port_raises_one_line_error_naming_the_address(call):
    address = f"127.0.0.1:{unused_port()}"
    client = GrpcEmbeddingClient(address, connect_timeout_s=0.5)
    with pytest.raises(EmbeddingServiceError) as caught:
        if call == "info":
            client.info()
        else:
            list(client.embed(items(3)))
    client.close()
    message = str(caught.value)
    assert isinstance(caught.value, VsbenchError)  # the CLI prints it as one line, no traceback
    assert address in message and "cannot connect" in message and "\n" not in message
    assert client.retries == 0  # nothing was retried: no Info call was ever made


def test_a_server_that_binds_late_is_waited_for_within_the_connect_timeout():
    port = unused_port()
    model = CountingModel()
    started: list[BackgroundServer] = []

    def start_later() -> None:
        time.sleep(1.0)
        started.append(BackgroundServer(model, ServerSettings(port=port)).start())

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with GrpcEmbeddingClient(f"127.0.0.1:{port}", connect_timeout_s=60) as client:
            assert client.info().name == "counting"
            assert len(list(client.embed(items(5)))) == 5
    finally:
        thread.join()
        for server in started:
            server.stop()


class StartingServicer(pb_grpc.EmbedderServicer):
    """Accepts connections but answers UNAVAILABLE (as a server still loading its model would)
    for the first `unavailable_for` Info calls."""

    def __init__(self, unavailable_for: int) -> None:
        self.calls = 0
        self.unavailable_for = unavailable_for

    def Info(self, request, context):
        self.calls += 1
        if self.calls <= self.unavailable_for:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model still loading")
        return wire.info_to_pb(ModelInfo("starting", 8, "none", False, "r1", 16, "test"))


def test_a_connected_server_that_is_starting_gets_patience():
    servicer = StartingServicer(unavailable_for=4)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EmbedderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = GrpcEmbeddingClient(f"127.0.0.1:{port}", connect_timeout_s=5, backoff_s=0.01, max_retries=6)
        assert client.info().name == "starting"
        client.close()
    finally:
        server.stop(0)
    assert servicer.calls == 5  # four UNAVAILABLE answers retried, the fifth answered


def test_patience_for_a_starting_server_still_ends():
    servicer = StartingServicer(unavailable_for=100)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EmbedderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = GrpcEmbeddingClient(f"127.0.0.1:{port}", backoff_s=0.01, max_retries=2)
        with pytest.raises(EmbeddingServiceError, match="Info on .* failed: UNAVAILABLE: model still loading"):
            client.info()
        client.close()
    finally:
        server.stop(0)
    assert servicer.calls == 3
