"""One gRPC `Embedder` servicer over any async model; the embedder and the api_proxy both use it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Protocol, Sequence, runtime_checkable

import grpc

from services.common import metrics, wire
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
from services.common.types import CallUsage, Embedding, ImageItem, InputRole, ModelInfo

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Raised by a model when its queues are full. Unary Embed answers RESOURCE_EXHAUSTED; inside
    an EmbedStream only that request is refused (EmbedResponse.rejected) and the stream goes on.
    `retry_after_ms` is the model's estimate of when room frees up (None: DEFAULT_RETRY_AFTER_MS)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


# When a model does not estimate: about one forward pass of a small CPU model.
DEFAULT_RETRY_AFTER_MS = 100


class AsyncEmbedder(Protocol):
    """What a server needs from a model: a description and an async batch call.

    `embed` returns one Embedding per item, in item order; a bad item gets an Embedding with an
    error, never an exception. It raises Overloaded when it cannot accept more work now.
    """

    def info(self) -> ModelInfo: ...

    async def embed(self, items: Sequence[ImageItem]) -> list[Embedding]: ...


@runtime_checkable
class BilledEmbedder(Protocol):
    """A model whose calls cost something (the api_proxy): each call also says what it cost, and
    the servicer puts that on the response so a run adds up its own usage. It also receives the
    request's input role (None = its configured default): vendors embed queries and catalogue
    images differently. Models that are not BilledEmbedders ignore roles."""

    def info(self) -> ModelInfo: ...

    async def embed_billed(
        self, items: Sequence[ImageItem], role: InputRole | None = None
    ) -> tuple[list[Embedding], CallUsage]: ...


# A stream may have this many batches being processed at once; later batches wait in gRPC's
# own flow control, so a fast client cannot make the server buffer without bound.
STREAM_WINDOW = 4


class EmbeddingServicer(pb_grpc.EmbedderServicer):
    def __init__(self, model: AsyncEmbedder, stream_window: int = STREAM_WINDOW) -> None:
        self._model = model
        self._info = model.info()
        self._info_pb = wire.info_to_pb(self._info)
        self._stream_window = stream_window
        self._billed = isinstance(model, BilledEmbedder)

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        # Optional hook: a model with counters that change while serving (the api_proxy's usage)
        # exposes them as `info_details() -> dict[str, str]`, merged into every answer.
        live = getattr(self._model, "info_details", None)
        if live is None:
            return self._info_pb
        answer = pb.ModelInfo()
        answer.CopyFrom(self._info_pb)
        answer.details.update(live())
        return answer

    async def _answer(self, request: pb.EmbedRequest, method: str) -> pb.EmbedResponse:
        """Embed one request; raises grpc-mappable exceptions (Overloaded, ValueError)."""
        name = self._info.name
        started = time.perf_counter()
        items = wire.request_from_pb(request)
        role = wire.request_role(request)
        if self._info.max_batch and len(items) > self._info.max_batch:
            raise ValueError(f"batch of {len(items)} items exceeds max_batch {self._info.max_batch}")
        usage = None
        if not items:
            results = []
        elif self._billed:
            results, usage = await self._model.embed_billed(items, role)
        else:
            results = await self._model.embed(items)
        if len(results) != len(items) or any(r.id != i.id for r, i in zip(results, items)):
            raise RuntimeError("model returned results that do not match the request items")
        failed = 0
        for result in results:
            if result.error is not None:
                failed += 1
                metrics.ITEM_ERRORS.labels(name, result.error.code.name).inc()
        metrics.ITEMS.labels(name, "ok").inc(len(results) - failed)
        metrics.ITEMS.labels(name, "error").inc(failed)
        metrics.LATENCY.labels(name, method).observe(time.perf_counter() - started)
        metrics.REQUESTS.labels(name, method, "OK").inc()
        return wire.response_to_pb(results, request_id=request.request_id, usage=usage)

    def _rejection(self, exc: Overloaded, request_id: str) -> pb.EmbedResponse:
        metrics.REQUESTS.labels(self._info.name, "EmbedStream", "REJECTED").inc()
        retry_after_ms = exc.retry_after_ms if exc.retry_after_ms is not None else DEFAULT_RETRY_AFTER_MS
        return wire.rejection_to_pb(f"server overloaded: {exc}", max(0, int(retry_after_ms)), request_id)

    async def _abort_for(self, exc: BaseException, method: str, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, Overloaded):
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {exc}"
        elif isinstance(exc, ValueError):
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        else:
            log.exception("embed failed", exc_info=exc)
            code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        metrics.REQUESTS.labels(self._info.name, method, code.name).inc()
        await context.abort(code, message)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        try:
            return await self._answer(request, "Embed")
        except Exception as exc:  # noqa: BLE001 - mapped to a status code
            await self._abort_for(exc, "Embed", context)
            raise  # unreachable: abort raises

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        done = object()
        outbox: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(self._stream_window)
        tasks: set[asyncio.Task] = set()

        async def handle(request: pb.EmbedRequest) -> None:
            try:
                await outbox.put(await self._answer(request, "EmbedStream"))
            except Overloaded as exc:
                # Back-pressure, not failure: refuse this request alone; the client resends it
                # later and the stream (with its other admitted batches) carries on.
                await outbox.put(self._rejection(exc, request.request_id))
            except Exception as exc:  # noqa: BLE001 - forwarded to the writer
                await outbox.put(exc)
            finally:
                window.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(handle(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            except Exception as exc:  # noqa: BLE001 - client went away or sent garbage
                await outbox.put(exc)
            await outbox.put(done)

        reader = asyncio.create_task(read())
        try:
            while True:
                message = await outbox.get()
                if message is done:
                    break
                if isinstance(message, BaseException):
                    await self._abort_for(message, "EmbedStream", context)
                yield message
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
