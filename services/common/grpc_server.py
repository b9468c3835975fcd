"""serve(): the one way every vsbench gRPC server starts.

Standard health checking and reflection, message size limits, optional TLS and bearer-token auth,
Prometheus metrics, and a graceful drain on SIGTERM/SIGINT (health flips to NOT_SERVING, in-flight
calls get `grace_seconds` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import ConfigError, ServeError
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.servicer import AsyncEmbedder, EmbeddingServicer
from services.common.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name
_UNAUTHENTICATED_OK = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def channel_options(max_message_mb: int) -> list[tuple[str, int | str]]:
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


class _BearerAuth(grpc.aio.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>`; health and reflection stay open."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(_UNAUTHENTICATED_OK):
            return await continuation(handler_call_details)
        supplied = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(supplied).encode(), self._expected):
            return await continuation(handler_call_details)

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        handler = await continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(deny) if handler.response_streaming else (
                grpc.stream_unary_rpc_method_handler(deny)
            )
        return grpc.unary_unary_rpc_method_handler(deny)


def _server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    try:
        root = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
        pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    model: AsyncEmbedder

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        close = getattr(self.model, "close", None)
        if close is not None:
            await close()


def server_security(settings: ServerSettings) -> tuple[list, grpc.ServerCredentials | None, bool]:
    """(interceptors, TLS credentials, auth on?) from the settings; reads the token and TLS files,
    so it runs before anything is started (ConfigError on an unreadable or incomplete setting)."""
    token = settings.resolved_auth_token()
    return ([_BearerAuth(token)] if token else []), _server_credentials(settings), bool(token)


async def open_server(
    settings: ServerSettings,
    interceptors: list,
    credentials: grpc.ServerCredentials | None,
    register: Callable[[grpc.aio.Server], None],
    service_name: str,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Every vsbench server's conventions around the services `register` adds: message limits
    (and the optional max connection age), health and reflection for `service_name`, the bind
    (ServeError when taken), Prometheus metrics; returns once serving, health SERVING."""
    options = channel_options(settings.max_message_mb)
    if settings.max_connection_age_s:
        # In-flight streams get a grace period; the evaluator's client resends what was unanswered.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 60_000),
        ]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports "address in use" as RuntimeError
        raise ServeError(f"could not bind {address}: {exc}") from None
    if port == 0:
        raise ServeError(f"could not bind {address}")
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
    await server.start()
    for service in ("", service_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def run_until_signal(running, grace_seconds: float, on_ready=None) -> None:
    """Call on_ready(running) (sync or async), then serve until SIGTERM or SIGINT and drain
    gracefully through running.stop(grace_seconds)."""
    if on_ready is not None:
        maybe = on_ready(running)
        if asyncio.iscoroutine(maybe):
            await maybe
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining for up to %.1fs", grace_seconds)
    await running.stop(grace_seconds)


async def start(model: AsyncEmbedder, settings: ServerSettings) -> RunningServer:
    """Start serving `model` in the running event loop and return once the port is bound.

    Raises OSError (port taken, unreadable TLS or token file) or ValueError (bad settings); the
    model is closed again when it was started, so a failed start leaks no threads.
    """
    # Everything that reads files or can refuse the settings runs before the model starts.
    interceptors, credentials, auth = server_security(settings)
    startup = getattr(model, "start", None)
    if startup is not None:
        await startup()
    try:
        server, port, health_servicer = await open_server(
            settings, interceptors, credentials,
            lambda server: pb_grpc.add_EmbedderServicer_to_server(EmbeddingServicer(model), server), SERVICE_NAME,
        )
    except BaseException:
        close = getattr(model, "close", None)
        if close is not None:
            await close()
        raise
    log.info("serving %s on %s:%d (tls=%s, auth=%s)", model.info().name, settings.host, port,
             credentials is not None, auth)
    return RunningServer(server=server, port=port, health=health_servicer, model=model)


async def serve_until_signal(
    model: AsyncEmbedder,
    settings: ServerSettings,
    on_ready: Callable[[RunningServer], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully."""
    await run_until_signal(await start(model, settings), settings.grace_seconds, on_ready)


class BackgroundServer:
    """Runs a server on its own event loop thread: for tests, benches and the in-process quickstart.

        with BackgroundServer(model, ServerSettings(port=0)) as server:
            client = GrpcEmbeddingClient(server.address)
    """

    def __init__(self, model: AsyncEmbedder, settings: ServerSettings | None = None) -> None:
        self._model = model
        self._settings = settings or ServerSettings(port=0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="grpc-server")
        self._running: RunningServer | None = None

    @property
    def port(self) -> int:
        assert self._running is not None, "server not started"
        return self._running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        try:
            self._running = asyncio.run_coroutine_threadsafe(
                start(self._model, self._settings), self._loop
            ).result()
        except BaseException:
            self.stop()  # a failed start must not leave the loop thread running
            raise
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(grace), self._loop).result()
            self._running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()  # its selector and self-pipe are file descriptors

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
