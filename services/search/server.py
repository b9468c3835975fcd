"""Serving the Search service on the project's server conventions (services/common/grpc_server.py):
standard health and reflection, message limits, optional TLS and bearer auth, Prometheus metrics,
and a graceful drain on SIGTERM/SIGINT (health NOT_SERVING, in-flight calls get grace_seconds).

The catalog is checked before the port opens: a collection embedded with another model than the
one the embedder serves is refused (CollectionMismatch names both fingerprints).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2

from services.common.grpc_server import open_server, run_until_signal, server_security
from services.common.proto.vsbench.v1 import search_pb2 as spb
from services.common.proto.vsbench.v1 import search_pb2_grpc as spb_grpc
from services.common.types import ModelInfo
from services.evaluator.clients.base import EmbeddingServiceError
from services.search.engine import EngineLimits, SearchEngine
from services.search.index import open_index
from services.search.service import SearchServicer
from services.search.settings import SearchSettings

log = logging.getLogger(__name__)
SERVICE_NAME = spb.DESCRIPTOR.services_by_name["Search"].full_name


def model_probe(settings: SearchSettings) -> Callable[[], ModelInfo]:
    """Asks the embedder which model it serves now, on a fresh connection (the query client caches
    the answer it got at start)."""
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    def probe() -> ModelInfo:
        with GrpcEmbeddingClient(settings.embedder, tls=settings.embedder_tls, auth_token=settings.embedder_token(),
                                 max_retries=0, connect_timeout_s=5.0, wait_ready_s=5.0) as client:
            return client.info()

    return probe


async def _watch_model(engine: SearchEngine, probe: Callable[[], ModelInfo], every_s: float,
                       health_servicer: health.aio.HealthServicer) -> None:
    """While the embedder serves another model than the collection's, searches are refused
    (FAILED_PRECONDITION) and health says NOT_SERVING; both recover when the right model is back.
    An embedder that does not answer changes nothing here (queries report UNAVAILABLE)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        try:
            current = await loop.run_in_executor(None, probe)
        except EmbeddingServiceError:
            continue
        mismatch = engine.recheck_model(current)
        status = health_pb2.HealthCheckResponse.NOT_SERVING if mismatch else health_pb2.HealthCheckResponse.SERVING
        if mismatch:
            log.error("%s", mismatch)
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, status)


def build_engine(settings: SearchSettings) -> SearchEngine:
    """Open the collection and the embedder client, and check they belong together."""
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    index = open_index(settings.collection, store=settings.store, qdrant_url=settings.qdrant_url)
    if hasattr(index, "retries"):
        index.retries = settings.qdrant_retries
    embedder = GrpcEmbeddingClient(
        settings.embedder, tls=settings.embedder_tls, auth_token=settings.embedder_token(),
        max_retries=settings.embed_retries, backoff_s=settings.embed_backoff_s,
        max_backoff_s=settings.embed_max_backoff_s, stall_timeout_s=settings.embed_timeout_s,
        max_in_flight=1, max_message_mb=settings.max_message_mb,
    )
    engine = SearchEngine(embedder, index, EngineLimits(
        default_k=settings.default_k, max_k=settings.max_k, max_image_bytes=settings.max_image_bytes, ef=settings.ef))
    try:
        engine.check()
    except BaseException:
        embedder.close()
        index.close()
        raise
    return engine


@dataclass
class RunningSearch:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: SearchServicer
    watcher: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.servicer.close()
        engine = self.servicer.engine
        engine.embedder.close()
        engine.index.close()


async def start(engine: SearchEngine, settings: SearchSettings,
                probe: Callable[[], ModelInfo] | None = None) -> RunningSearch:
    """Serve `engine`; with `probe`, re-check the embedder's model every settings.model_check_s."""
    interceptors, credentials, auth = server_security(settings)
    servicer = SearchServicer(engine, workers=settings.workers)
    server, port, health_servicer = await open_server(
        settings, interceptors, credentials, lambda server: spb_grpc.add_SearchServicer_to_server(servicer, server),
        SERVICE_NAME,
    )
    log.info("serving collection %s on %s:%d (tls=%s, auth=%s)", engine.index.collection, settings.host, port,
             credentials is not None, auth)
    watcher = None
    if probe is not None:
        watcher = asyncio.create_task(_watch_model(engine, probe, settings.model_check_s, health_servicer))
    return RunningSearch(server=server, port=port, health=health_servicer, servicer=servicer, watcher=watcher)


async def serve_until_signal(
    engine: SearchEngine, settings: SearchSettings,
    on_ready: Callable[[RunningSearch], Awaitable[None] | None] | None = None,
) -> None:
    await run_until_signal(await start(engine, settings, model_probe(settings)), settings.grace_seconds, on_ready)


class BackgroundSearchServer:
    """The service on its own event-loop thread (tests, benches)."""

    def __init__(self, engine: SearchEngine, settings: SearchSettings) -> None:
        self._engine, self._settings = engine, settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="search-server")
        self._running: RunningSearch | None = None

    @property
    def address(self) -> str:
        assert self._running is not None
        return self._running.address

    def start(self) -> "BackgroundSearchServer":
        self._thread.start()
        self._running = asyncio.run_coroutine_threadsafe(start(self._engine, self._settings), self._loop).result()
        return self

    def stop(self) -> None:
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.stop(1.0), self._loop).result()
            self._running = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "BackgroundSearchServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
