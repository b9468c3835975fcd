"""GrpcEmbeddingClient against real gRPC servers on loopback: streaming, overload, restarts, auth."""

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter

import numpy as np
import pytest

from services.common.grpc_server import BackgroundServer
from services.common.servicer import Overloaded
from services.common.settings import ServerSettings
from services.common.types import Embedding, ErrorCode, ImageItem, ModelInfo
from services.evaluator.clients.base import EmbeddingServiceError
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from tests.tls import self_signed

DIM = 8


def vector_for(data: bytes) -> np.ndarray:
    digest = hashlib.sha256(data).digest()
    return np.frombuffer(digest[: DIM * 4], dtype=np.uint8).astype(np.float32)[:DIM] + 1


class CountingModel:
    """An AsyncEmbedder that counts calls and can refuse the first `overload_first` batches."""

    def __init__(self, overload_first: int = 0, delay_s: float = 0.0, max_batch: int = 16) -> None:
        self.calls = 0
        self.embedded = Counter()
        self.overload_left = overload_first
        self.delay_s = delay_s
        self.max_batch = max_batch

    def info(self) -> ModelInfo:
        return ModelInfo("counting", DIM, "none", False, "r1", self.max_batch, "test")

    async def embed(self, items):
        self.calls += 1
        if self.overload_left > 0:
            self.overload_left -= 1
            raise Overloaded("queue full")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = []
        for item in items:
            if item.data == b"bad":
                out.append(Embedding.failed(item.id, ErrorCode.INVALID_IMAGE, "cannot decode"))
            else:
                self.embedded[item.id] += 1
                out.append(Embedding(item.id, vector=vector_for(item.data)))
        return out


def items(n):
    return [ImageItem(f"img{i}", f"payload-{i}".encode()) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_returns_every_item_once_with_per_item_errors():
    model = CountingModel()
    with BackgroundServer(model) as server:
        with GrpcEmbeddingClient(server.address, batch_size=7, max_in_flight=3) as client:
            data = items(100) + [ImageItem("broken", b"bad")]
            results = list(client.embed(iter(data)))
    assert Counter(r.id for r in results) == Counter(i.id for i in data)
    broken = next(r for r in results if r.id == "broken")
    assert broken.error.code is ErrorCode.INVALID_IMAGE
    good = {r.id: r.vector for r in results if r.ok}
    assert np.array_equal(good["img3"], vector_for(b"payload-3"))
    assert model.calls == 15  # ceil(101 / 7) batches, nothing sent twice


def test_resource_exhausted_is_retried_with_backoff():
    model = CountingModel(overload_first=2)
    with BackgroundServer(model) as server:
        client = GrpcEmbeddingClient(server.address, batch_size=10, backoff_s=0.01)
        results = list(client.embed(items(30)))
        client.close()
    assert sorted(r.id for r in results) == sorted(i.id for i in items(30))
    assert client.retries >= 1
    assert all(count == 1 for count in model.embedded.values())


def test_server_restart_mid_stream_resends_only_unanswered_batches():
    port = free_port()
    settings = ServerSettings(port=port)
    first = CountingModel(delay_s=0.02)
    second = CountingModel()
    server = BackgroundServer(first, settings).start()
    restarted: list[BackgroundServer] = []

    def restart_after_some_work():
        while sum(first.embedded.values()) < 40:
            time.sleep(0.005)
        server.stop(grace=0)
        time.sleep(0.3)
        restarted.append(BackgroundServer(second, settings).start())

    thread = threading.Thread(target=restart_after_some_work)
    thread.start()
    try:
        client = GrpcEmbeddingClient(f"127.0.0.1:{port}", batch_size=5, max_in_flight=2, backoff_s=0.05)
        results = list(client.embed(items(200)))
        client.close()
    finally:
        thread.join()
        for s in restarted:
            s.stop()
    ids = [r.id for r in results]
    assert len(ids) == 200 and len(set(ids)) == 200  # nothing lost, nothing delivered twice
    assert client.retries >= 1
    assert sum(second.embedded.values()) > 0  # the rest really came from the restarted server


def test_non_retryable_status_fails_clearly():
    model = CountingModel(max_batch=4)
    with BackgroundServer(model) as server:
        # batch_size above max_batch is clamped by the client, so force an oversize request:
        client = GrpcEmbeddingClient(server.address, batch_size=4)
        client.info()
        client._info = ModelInfo("counting", DIM, "none", False, "r1", 0, "test")  # hide max_batch
        client._batch_size = 9
        with pytest.raises(EmbeddingServiceError, match="INVALID_ARGUMENT: batch of 9 items exceeds max_batch 4"):
            list(client.embed(items(9)))
        client.close()


def test_bearer_token_required_when_configured():
    model = CountingModel()
    with BackgroundServer(model, ServerSettings(port=0, auth_token="s3cret")) as server:
        with pytest.raises(EmbeddingServiceError, match="UNAUTHENTICATED"):
            GrpcEmbeddingClient(server.address, auth_token="wrong", max_retries=0).info()
        with GrpcEmbeddingClient(server.address, auth_token="s3cret") as client:
            assert len(list(client.embed(items(5)))) == 5


def test_tls_channel_with_the_servers_ca(tmp_path):
    cert, key = self_signed(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")
    model = CountingModel()
    with BackgroundServer(model, ServerSettings(port=0, tls_cert=cert, tls_key=key)) as server:
        address = f"localhost:{server.port}"
        with GrpcEmbeddingClient(address, tls_ca=cert.read_bytes()) as client:
            assert len(list(client.embed(items(10)))) == 10
        with pytest.raises(EmbeddingServiceError, match="DEADLINE_EXCEEDED|UNAVAILABLE"):  # plaintext to TLS
            GrpcEmbeddingClient(address, max_retries=0, wait_ready_s=2).info()
