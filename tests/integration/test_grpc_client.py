"""GrpcEmbeddingClient against real gRPC servers on loopback: streaming, overload, restarts, auth."""

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from services.common import wire
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


def test_overload_is_back_pressure_not_a_stream_failure():
    model = CountingModel(overload_first=2)
    with BackgroundServer(model) as server:
        client = GrpcEmbeddingClient(server.address, batch_size=10, backoff_s=0.01)
        results = list(client.embed(items(30)))
        client.close()
    assert sorted(r.id for r in results) == sorted(i.id for i in items(30))
    assert client.rejections == 2 and client.retries == 0  # refused batches resent, stream kept
    assert all(count == 1 for count in model.embedded.values())


def test_unary_embed_overload_stays_resource_exhausted():
    model = CountingModel(overload_first=1)
    with BackgroundServer(model) as server:
        with grpc.insecure_channel(server.address) as channel:
            from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc

            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.EmbedderStub(channel).Embed(wire.request_to_pb(items(2)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_batch_refused_past_the_overload_deadline_fails_clearly():
    model = CountingModel(overload_first=10_000)
    with BackgroundServer(model) as server:
        client = GrpcEmbeddingClient(server.address, batch_size=10, overload_deadline_s=0.3, max_backoff_s=0.05)
        with pytest.raises(EmbeddingServiceError, match="refused for overload .* overload_deadline_s=0.3"):
            list(client.embed(items(30)))
        client.close()
    assert not model.embedded


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
        with pytest.raises(EmbeddingServiceError, match="cannot connect .*TLS on one side only"):  # plaintext to TLS
            GrpcEmbeddingClient(address, max_retries=0, connect_timeout_s=2).info()


class StartStopModel(CountingModel):
    """Records start()/close(), as BatchingEmbedder and ProxyModel expose them."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


def test_failed_start_on_a_taken_port_closes_the_model_and_its_loop_thread():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    model = StartStopModel()
    threads_before = set(threading.enumerate())
    try:
        server = BackgroundServer(model, ServerSettings(port=taken.getsockname()[1]))
        with pytest.raises(OSError, match="could not bind"):
            server.start()
    finally:
        taken.close()
    assert (model.started, model.closed) == (1, 1)
    assert not server._thread.is_alive() and server._loop.is_closed()
    assert not [t for t in set(threading.enumerate()) - threads_before if t.name == "grpc-server"]


def test_stopped_background_server_closes_its_event_loop():
    server = BackgroundServer(CountingModel()).start()
    server.stop()
    assert server._loop.is_closed()


def test_empty_auth_token_file_refuses_to_start_instead_of_serving_without_auth(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("\n")  # a secret volume that was never filled
    model = StartStopModel()
    with pytest.raises(ValueError, match="is empty"):
        BackgroundServer(model, ServerSettings(port=0, auth_token_file=token_file)).start()
    assert model.started == 0


def test_vector_bytes_that_are_not_float32_become_that_items_error():
    from services.common import wire
    from services.common.proto.vsbench.v1 import embedding_pb2 as pb

    response = pb.EmbedResponse(results=[
        pb.EmbeddingResult(id="good", vector=np.ones(DIM, "<f4").tobytes()),
        pb.EmbeddingResult(id="torn", vector=b"\x00" * 7),
    ])
    good, torn = wire.response_from_pb(response)
    assert good.ok and good.vector.shape == (DIM,)
    assert torn.error.code == ErrorCode.INVALID_OUTPUT and "7 bytes" in torn.error.message


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection dropped"


class _ScriptedStreams:
    """Drives EmbedStream calls by hand so one thread interleaving is forced every time: the first
    stream fails while gRPC's request thread still holds its request iterator, and that thread
    asks for one more request only once the retry stream has started (a real server cannot pin
    this order, which is why this one test scripts the calls)."""

    def __init__(self) -> None:
        self.calls = 0
        self.retry_started = threading.Event()
        self.old_iterator_done = threading.Event()
        self.old_iterator_gave: list = []
        self.answered: list[str] = []

    def EmbedStream(self, requests, metadata=()):
        self.calls += 1
        return self._first(requests) if self.calls == 1 else self._retry(requests)

    def _first(self, requests):
        next(requests)  # one batch sent, never answered

        def late_request_thread():
            self.retry_started.wait(5)
            self.old_iterator_gave.extend(requests)  # whatever the old iterator still hands out
            self.old_iterator_done.set()

        threading.Thread(target=late_request_thread, daemon=True).start()
        return _Call(iter(()), error=_Unavailable())

    def _retry(self, requests):
        self.retry_started.set()
        assert self.old_iterator_done.wait(5)

        def answers():
            for request in requests:
                batch = wire.request_from_pb(request)
                self.answered.extend(item.id for item in batch)
                yield wire.response_to_pb([Embedding(i.id, vector=vector_for(i.data)) for i in batch],
                                          request.request_id)

        return _Call(answers())


class _Call:
    def __init__(self, responses, error=None) -> None:
        self._responses = responses
        self._error = error

    def __iter__(self):
        yield from self._responses
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        pass


def test_failed_streams_request_thread_never_feeds_the_retry_stream():
    # Regression: the request generator read its stop event, window and pending map through the
    # closure, so after a retry rebound them, the failed stream's request thread pulled a batch into
    # the new stream's pending map that no server ever saw: a spurious "stream ended" retry.
    client = GrpcEmbeddingClient("127.0.0.1:1", batch_size=5, max_in_flight=1, backoff_s=0.01)
    client._info = ModelInfo("scripted", DIM, "none", False, "r1", 5, "test")
    streams = _ScriptedStreams()
    client._stub = streams
    try:
        results = list(client.embed(items(20)))
    finally:
        client.close()
    assert streams.old_iterator_gave == []  # the old iterator stopped instead of taking a batch
    assert client.retries == 1 and streams.calls == 2
    assert sorted(r.id for r in results) == sorted(i.id for i in items(20))
    assert Counter(streams.answered) == Counter(i.id for i in items(20))
