"""The search itself, without gRPC: embed a query (or take its vector), search the index, group
hits by product, decide accept / reject by the collection's threshold.

Errors say whose fault a failure is: QueryError (the request: INVALID_ARGUMENT), ServiceDown (the
embedder or Qdrant did not answer within their retry budgets: UNAVAILABLE), CollectionMismatch
(the collection was embedded with another model than the one serving: the service will not start).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.common.errors import VsbenchError
from services.common.fingerprint import short
from services.common.types import ErrorCode, ImageItem, InputRole, ModelInfo
from services.common.vectors import UnusableVector
from services.evaluator.clients.base import EmbeddingServiceError
from services.search.build import Embedder, query_vector
from services.search.index import (
    CatalogIndex,
    CatalogIndexError,
    CollectionMeta,
    IndexedHit,
    IndexUnavailable,
    decide,
    search_products,
)

MAX_PRODUCT_FILTER = 1024
# Per-item embedder errors that are the request's fault; any other code is the service's.
_CALLER_ERRORS = (ErrorCode.INVALID_IMAGE, ErrorCode.IMAGE_TOO_LARGE)


class QueryError(VsbenchError, ValueError):
    """The request cannot be answered as sent (bad image, wrong vector size, k out of range)."""


class ServiceDown(VsbenchError, ConnectionError):
    """The embedder or the vector index did not answer within its retry budget."""


class CollectionMismatch(VsbenchError, ValueError):
    """The collection's vectors come from another model than the one the embedder serves."""


class ModelChanged(VsbenchError, RuntimeError):
    """Since the service started, the embedder began serving another model than the collection's."""


@dataclass(frozen=True)
class SearchResult:
    hits: list[IndexedHit]
    accepted: bool
    threshold: float | None
    embed_seconds: float
    search_seconds: float


@dataclass(frozen=True)
class EngineLimits:
    default_k: int = 10
    max_k: int = 100
    max_image_bytes: int = 20 * 1024 * 1024
    ef: int | None = None  # HNSW candidates per search; None = Qdrant's default (ef_construct)


class SearchEngine:
    def __init__(self, embedder: Embedder, index: CatalogIndex, limits: EngineLimits | None = None) -> None:
        self.embedder = embedder
        self.index = index
        self.limits = limits or EngineLimits()
        self._meta: CollectionMeta | None = None
        self.mismatch: str | None = None  # set by recheck_model while the embedder serves another model

    @property
    def meta(self) -> CollectionMeta:
        assert self._meta is not None, "check() first"
        return self._meta

    def check(self) -> CollectionMeta:
        """Refuse to serve a collection that the serving model did not embed (raises
        CollectionMismatch naming both fingerprints), or one that does not exist."""
        meta = self.index.meta()
        if meta is None:
            raise CatalogIndexError(f"collection {self.index.collection!r} does not exist; build it with `vsbench index`")
        try:
            info = self.embedder.info()
        except EmbeddingServiceError as exc:
            raise ServiceDown(f"cannot check the serving model: {exc}") from None
        if info.fingerprint != meta.fingerprint or info.dim != meta.dim:
            raise CollectionMismatch(
                f"collection {self.index.collection!r} was embedded with model fingerprint {short(meta.fingerprint)} "
                f"({meta.model.get('name', '?')}, {meta.dim}-d) but the embedder serves {short(info.fingerprint)} "
                f"({info.name}, {info.dim}-d); rebuild it with `vsbench index --reembed` or serve the indexed model"
            )
        self._meta = meta
        return meta

    def recheck_model(self, current: ModelInfo) -> str | None:
        """Compare the model the embedder serves now (after a restart or a rollout) with the
        collection's; returns (and remembers, so searches are refused) the mismatch, None when equal."""
        meta = self.meta
        if current.fingerprint == meta.fingerprint and current.dim == meta.dim:
            self.mismatch = None
        else:
            self.mismatch = (
                f"the embedder now serves model fingerprint {short(current.fingerprint)} ({current.name}), but "
                f"collection {self.index.collection!r} holds vectors of {short(meta.fingerprint)}; serve the indexed "
                "model again or rebuild the collection with `vsbench index --reembed`"
            )
        return self.mismatch

    def _k(self, k: int) -> int:
        if k == 0:
            return self.limits.default_k
        if k < 0 or k > self.limits.max_k:
            raise QueryError(f"k must be between 1 and {self.limits.max_k} (0 = {self.limits.default_k}), got {k}")
        return k

    def _products(self, product_ids: Sequence[str]) -> list[str]:
        if len(product_ids) > MAX_PRODUCT_FILTER:
            raise QueryError(f"at most {MAX_PRODUCT_FILTER} product ids per filter, got {len(product_ids)}")
        return [str(p) for p in product_ids]

    def embed(self, data: bytes) -> np.ndarray:
        if self.mismatch is not None:
            raise ModelChanged(self.mismatch)
        if not data:
            raise QueryError("the image is empty")
        if len(data) > self.limits.max_image_bytes:
            raise QueryError(f"the image is {len(data)} bytes, over the limit of {self.limits.max_image_bytes}")
        try:
            results = list(self.embedder.embed([ImageItem("query", data)], role=InputRole.QUERY))
        except EmbeddingServiceError as exc:
            raise ServiceDown(str(exc)) from None
        if len(results) != 1:
            raise ServiceDown(f"the embedder answered {len(results)} results for one image")
        result = results[0]
        if result.error is not None:
            if result.error.code in _CALLER_ERRORS:
                raise QueryError(f"{result.error.code.name}: {result.error.message}")
            raise ServiceDown(f"the embedder failed the image: {result.error}")
        try:
            return query_vector(result.vector, self.meta.dim)
        except UnusableVector as exc:
            raise ServiceDown(f"the embedder returned an unusable vector: {exc}") from None

    def search_vector(self, vector: Sequence[float] | np.ndarray, k: int = 0, product_ids: Sequence[str] = (),
                      embed_seconds: float = 0.0) -> SearchResult:
        k, products = self._k(k), self._products(product_ids)
        try:
            unit = query_vector(vector, self.meta.dim)
        except UnusableVector as exc:
            raise QueryError(f"query vector: {exc}") from None
        started = time.perf_counter()
        try:
            hits = search_products(self.index, unit, k, products, self.limits.ef)
        except IndexUnavailable as exc:
            raise ServiceDown(str(exc)) from None
        elapsed = time.perf_counter() - started
        top = hits[0].score if hits else None
        return SearchResult(hits=hits, accepted=decide(top, self.meta.threshold), threshold=self.meta.threshold,
                            embed_seconds=embed_seconds, search_seconds=elapsed)

    def search_image(self, data: bytes, k: int = 0, product_ids: Sequence[str] = ()) -> SearchResult:
        self._k(k)
        self._products(product_ids)
        started = time.perf_counter()
        vector = self.embed(data)
        return self.search_vector(vector, k, product_ids, embed_seconds=time.perf_counter() - started)
