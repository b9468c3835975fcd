"""The Search gRPC servicer: maps the engine's answers and errors onto the wire."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc

from services.common.proto.vsbench.v1 import search_pb2 as spb
from services.common.proto.vsbench.v1 import search_pb2_grpc as spb_grpc
from services.search import metrics
from services.search.engine import ModelChanged, QueryError, SearchEngine, SearchResult, ServiceDown
from services.search.index import IndexUnavailable

log = logging.getLogger(__name__)


def result_to_pb(result: SearchResult) -> spb.SearchResponse:
    response = spb.SearchResponse(
        hits=[spb.ProductHit(product_id=h.product_id, image_id=h.image_id, score=h.score, location=h.location)
              for h in result.hits],
        decision=spb.DECISION_ACCEPT if result.accepted else spb.DECISION_REJECT,
        embed_seconds=result.embed_seconds,
        search_seconds=result.search_seconds,
    )
    if result.threshold is not None:
        response.threshold = result.threshold
    return response


class SearchServicer(spb_grpc.SearchServicer):
    def __init__(self, engine: SearchEngine, workers: int = 32) -> None:
        self.engine = engine
        # Embedding and Qdrant calls block; a dedicated pool so concurrency is not capped by
        # asyncio's default executor (cores + 4 threads).
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search")
        self._collection = engine.index.collection

    async def Search(self, request: spb.SearchRequest, context: grpc.aio.ServicerContext) -> spb.SearchResponse:
        kind = request.WhichOneof("query") or "none"
        loop = asyncio.get_running_loop()
        try:
            if kind == "image":
                result = await loop.run_in_executor(
                    self._pool, self.engine.search_image, request.image, request.k, list(request.product_ids))
            elif kind == "vector":
                result = await loop.run_in_executor(
                    self._pool, self.engine.search_vector, list(request.vector.values), request.k,
                    list(request.product_ids))
            else:
                raise QueryError("the request has neither an image nor a vector")
        except QueryError as exc:
            metrics.SEARCHES.labels(self._collection, kind, "invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelChanged as exc:
            metrics.SEARCHES.labels(self._collection, kind, "model_changed").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ServiceDown as exc:
            metrics.SEARCHES.labels(self._collection, kind, "unavailable").inc()
            log.warning("search unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.SEARCHES.labels(self._collection, kind, "ok").inc()
        metrics.DECISIONS.labels(self._collection, "accept" if result.accepted else "reject").inc()
        if kind == "image":
            metrics.STAGE_SECONDS.labels(self._collection, "embed").observe(result.embed_seconds)
        metrics.STAGE_SECONDS.labels(self._collection, "search").observe(result.search_seconds)
        return result_to_pb(result)

    async def Describe(self, request: spb.DescribeRequest, context: grpc.aio.ServicerContext) -> spb.CollectionInfo:
        meta = self.engine.meta
        loop = asyncio.get_running_loop()
        try:
            points = await loop.run_in_executor(self._pool, self.engine.index.count)
        except IndexUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        info = spb.CollectionInfo(
            collection=self.engine.index.collection, fingerprint=meta.fingerprint, model=str(meta.model.get("name", "")),
            dim=meta.dim, points=points, threshold_source=meta.threshold_source,
        )
        if meta.threshold is not None:
            info.threshold = meta.threshold
        return info

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
