"""The gRPC EmbeddingClient: streams batches over EmbedStream with bounded requests in flight,
retries with backoff on UNAVAILABLE / RESOURCE_EXHAUSTED / stalls, and resends only the batches
that were never answered.

Patience is split by what the address does:
- nothing accepts the connection (refused, unreachable): EmbeddingServiceError after
  `connect_timeout_s`, naming the address; there is no server to wait for.
- it accepts but the server is not ready (UNAVAILABLE while starting or draining): retried with
  backoff within `wait_ready_s` per call and `max_retries` calls.
- the server refuses a batch because it is overloaded (EmbedResponse.rejected): back-pressure,
  not failure. That batch is resent after the server's retry_after_ms (with jitter, growing when
  the same batch is refused again) on the same stream; only a batch refused for longer than
  `overload_deadline_s` fails the run.
"""

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
from services.common.types import CallUsage, Embedding, ImageItem, InputRole, ModelInfo
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
        connect_timeout_s: float = 5.0,
        overload_deadline_s: float = 600.0,
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
        self._connect_timeout_s = connect_timeout_s
        self._overload_deadline_s = overload_deadline_s
        self._connected = False
        self._info: ModelInfo | None = None
        self.retries = 0  # streams restarted, for the run's record
        self.rejections = 0  # batches the server refused for overload and that were resent

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

    def _connect(self) -> None:
        """Fail fast when nothing accepts connections at the address (a typo, a dead server)."""
        if self._connected:
            return
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self._connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise EmbeddingServiceError(
                f"cannot connect to the embedding server at {self.address}: no working connection within "
                f"{self._connect_timeout_s:g} s (refused, unreachable, or TLS on one side only; is the "
                "server running and the address right?)"
            ) from None
        self._connected = True

    # ---- API -----------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        if self._info is None:
            self._connect()

            def call() -> pb.ModelInfo:
                return self._stub.Info(
                    pb.InfoRequest(), metadata=self._metadata, timeout=self._wait_ready_s, wait_for_ready=True
                )

            self._info = wire.info_from_pb(self._call_with_retries(call, "Info"))
        return self._info

    def embed(
        self, items: Iterable[ImageItem], usage: CallUsage | None = None, role: InputRole | None = None
    ) -> Iterator[Embedding]:
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
        hold_until = [0.0]  # monotonic time before which no request is sent (overload back-off)
        refused_since: dict[int, tuple[float, int]] = {}  # id(batch) -> (first refusal, refusals)

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
                    # Overload back-off: hold every request (not only the refused one) until the
                    # server said room frees up; stop wakes us when the stream ends meanwhile.
                    while (wait := hold_until[0] - time.monotonic()) > 0:
                        if stop.wait(wait):
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
                    yield wire.request_to_pb(batch, request_id, role)

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
                    rejection = wire.response_rejection(response)
                    if rejection is not None:
                        self._back_off(batch, rejection, refused_since, hold_until)
                        with pending_lock:
                            resend.appendleft(batch)  # first in line once the hold ends
                        window.release()
                        continue
                    refused_since.pop(id(batch), None)
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

    def _back_off(
        self,
        batch: list[ImageItem],
        rejection: tuple[str, int],
        refused_since: dict[int, tuple[float, int]],
        hold_until: list[float],
    ) -> None:
        """Schedule a refused batch's resend, or fail when it has been refused for too long."""
        reason, retry_after_ms = rejection
        now = time.monotonic()
        first, count = refused_since.get(id(batch), (now, 0))
        count += 1
        refused_since[id(batch)] = (first, count)
        if now - first > self._overload_deadline_s:
            raise EmbeddingServiceError(
                f"EmbedStream on {self.address}: a batch was refused for overload for "
                f"{now - first:.0f} s (over overload_deadline_s={self._overload_deadline_s:g}): {reason}"
            )
        self.rejections += 1
        # Jitter (x1..x2) spreads clients refused together; repeated refusals of the same batch
        # wait longer (up to x8), so a persistently full server is not polled in lockstep.
        base = max(retry_after_ms / 1000.0, 0.001) * min(8, 2 ** (count - 1))
        delay = min(self._max_backoff_s, base * (1 + random.random()))
        hold_until[0] = max(hold_until[0], now + delay)
        log.debug("%s refused a batch (%s); resending in %.0f ms", self.address, reason, delay * 1000)

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
