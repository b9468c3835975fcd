"""The gRPC EmbeddingClient: streams batches over EmbedStream with bounded requests in flight,
retries with backoff on UNAVAILABLE / RESOURCE_EXHAUSTED / stalls, and resends only the batches
that were never answered."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import deque
from typing import Iterable, Iterator

import grpc

from services.common import wire
from services.common.grpc_server import channel_options
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.settings import DEFAULT_MAX_MESSAGE_MB
from services.common.types import CallUsage, Embedding, ImageItem, ModelInfo
from services.evaluator.clients.base import EmbeddingServiceError

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,  # our own stall watchdog cancels a stuck stream
        grpc.StatusCode.ABORTED,
    }
)


def make_channel(
    address: str,
    *,
    tls_ca: bytes | None = None,
    tls: bool = False,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
) -> grpc.Channel:
    """A channel with our message limits; `dns:///host:port` addresses round-robin across all
    resolved replicas (a Kubernetes headless Service)."""
    options = channel_options(max_message_mb) + [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if tls or tls_ca is not None:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca), options=options)
    return grpc.insecure_channel(address, options=options)


class GrpcEmbeddingClient:
    def __init__(
        self,
        address: str,
        *,
        batch_size: int | None = None,
        max_in_flight: int = 4,
        stall_timeout_s: float = 300.0,
        max_retries: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        tls_ca: bytes | None = None,
        tls: bool = False,
        auth_token: str | None = None,
        wait_ready_s: float = 30.0,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    ) -> None:
        self.address = address
        self._channel = make_channel(address, tls_ca=tls_ca, tls=tls, max_message_mb=max_message_mb)
        self._stub = pb_grpc.EmbedderStub(self._channel)
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._batch_size = batch_size
        self._max_in_flight = max(1, max_in_flight)
        self._stall_timeout_s = stall_timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._wait_ready_s = wait_ready_s
        self._info: ModelInfo | None = None
        self.retries = 0  # streams restarted, for the run's record

    # ---- helpers -------------------------------------------------------------------------
    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self._max_backoff_s, self._backoff_s * (2 ** (attempt - 1)))
        time.sleep(delay * (0.5 + random.random() / 2))  # jitter: replicas do not retry in lockstep

    def _call_with_retries(self, fn, what: str):
        attempt = 0
        while True:
            try:
                return fn()
            except grpc.RpcError as err:
                attempt += 1
                if err.code() not in RETRYABLE or attempt > self._max_retries:
                    raise EmbeddingServiceError(
                        f"{what} on {self.address} failed: {err.code().name}: {err.details()}"
                    ) from None
                log.warning("%s on %s: %s, retry %d", what, self.address, err.code().name, attempt)
                self._sleep_backoff(attempt)

    # ---- API -----------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        if self._info is None:
            def call() -> pb.ModelInfo:
                return self._stub.Info(
                    pb.InfoRequest(), metadata=self._metadata, timeout=self._wait_ready_s, wait_for_ready=True
                )

            self._info = wire.info_from_pb(self._call_with_retries(call, "Info"))
        return self._info

    def embed(self, items: Iterable[ImageItem], usage: CallUsage | None = None) -> Iterator[Embedding]:
        info = self.info()
        batch_size = self._batch_size or min(32, info.max_batch or 32)
        if info.max_batch:
            batch_size = min(batch_size, info.max_batch)
        source = iter(items)
        source_lock = threading.Lock()
        source_done = False
        resend: deque[list[ImageItem]] = deque()
        request_ids = itertools.count()
        failures = 0

        while True:
            if source_done and not resend:
                return
            pending: dict[str, list[ImageItem]] = {}
            pending_lock = threading.Lock()
            window = threading.Semaphore(self._max_in_flight)
            stop = threading.Event()
            producer_error: list[BaseException] = []

            # This attempt's state is bound as arguments, not read through the closure: gRPC's
            # request thread of a failed stream can wake after the loop has rebound these names,
            # and must then see its own (set) stop event, not take batches for the next stream.
            def requests(
                pending=pending, pending_lock=pending_lock, window=window, stop=stop, producer_error=producer_error
            ) -> Iterator[pb.EmbedRequest]:
                nonlocal source_done
                while True:
                    window.acquire()
                    if stop.is_set():
                        return
                    if resend:
                        batch = resend.popleft()
                    else:
                        try:
                            with source_lock:
                                batch = list(itertools.islice(source, batch_size))
                        except BaseException as exc:  # surfaced in the caller's thread
                            producer_error.append(exc)
                            return
                        if not batch:
                            source_done = True
                            return
                    request_id = str(next(request_ids))
                    with pending_lock:
                        pending[request_id] = batch
                    yield wire.request_to_pb(batch, request_id)

            # No wait_for_ready here: a dead server must surface as UNAVAILABLE so the backoff and
            # retry budget apply (waiting for readiness would hang forever on a server that is gone).
            call = self._stub.EmbedStream(requests(), metadata=self._metadata)
            watchdog = _Watchdog(self._stall_timeout_s, call.cancel)
            try:
                for response in call:
                    watchdog.kick()
                    with pending_lock:
                        batch = pending.pop(response.request_id, None)
                    if batch is None:
                        continue  # an answer to a batch we already gave up on
                    window.release()
                    failures = 0
                    if usage is not None and (answered := wire.response_usage(response)) is not None:
                        usage.add(answered)
                    yield from wire.response_from_pb(response)
                if producer_error:
                    raise producer_error[0]
                with pending_lock:
                    leftover = list(pending.values())
                if leftover:
                    # The server closed the stream without answering everything (e.g. it was
                    # stopped mid-call): as retryable as a dropped connection.
                    raise _StreamEnded(len(leftover))
            except (grpc.RpcError, _StreamEnded) as err:
                if producer_error:
                    raise producer_error[0] from None
                failures += 1
                self.retries += 1
                code = err.code() if isinstance(err, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                details = err.details() if isinstance(err, grpc.RpcError) else str(err)
                if code not in RETRYABLE or failures > self._max_retries:
                    raise EmbeddingServiceError(
                        f"EmbedStream on {self.address} failed: {code.name}: {details}"
                    ) from None
                log.warning("EmbedStream on %s: %s; resending %d batches (retry %d)",
                            self.address, code.name, len(pending), failures)
                with pending_lock:
                    # Unanswered batches go first so nothing is lost or reordered needlessly.
                    resend.extendleft(reversed(list(pending.values())))
                    pending.clear()
                self._sleep_backoff(failures)
            finally:
                stop.set()
                window.release()
                watchdog.stop()
                call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcEmbeddingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _StreamEnded(Exception):
    def __init__(self, unanswered: int) -> None:
        super().__init__(f"stream ended with {unanswered} batches unanswered")


class _Watchdog:
    """Cancels a stream when no answer arrived for `timeout` seconds (a hung server)."""

    def __init__(self, timeout: float, on_stall) -> None:
        self._timeout = timeout
        self._on_stall = on_stall
        self._deadline = time.monotonic() + timeout
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="grpc-stall-watchdog")
        self._thread.start()

    def kick(self) -> None:
        self._deadline = time.monotonic() + self._timeout

    def _run(self) -> None:
        while not self._stopped.wait(min(1.0, self._timeout)):
            if time.monotonic() > self._deadline:
                log.warning("no answer for %.0fs; cancelling the stream", self._timeout)
                self._on_stall()
                return

    def stop(self) -> None:
        self._stopped.set()
