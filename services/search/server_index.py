"""A catalog collection on a Qdrant server through qdrant-client (compose, k8s).

The CollectionMeta lives in Qdrant's collection metadata under `vsbench_search` (plus the
evaluator's `vsbench_fingerprint` key, so both tools read the same fingerprint). Calls that fail
because the server is unreachable or answers 5xx are retried with backoff up to `retries` times,
then raise IndexUnavailable; the client reconnects by itself once the server is back.

`path=` / `location=` run qdrant-client's local mode (no server): the same client calls, used by
the tests since no Qdrant server binary can be installed here. Local mode ignores HNSW and
quantization (it always scans exactly); a server honours them. `shard_number` /
`replication_factor` / `write_consistency_factor` (a Qdrant cluster's) go with create_collection;
local mode has no cluster, so they are refused there.
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from services.evaluator.stores._common import check_batch, check_name
from services.evaluator.stores.base import point_id
from services.evaluator.stores.qdrant_server import (
    API_KEY_ENV,
    FINGERPRINT_KEY,
    check_distribution,
    distribution_params,
)
from services.search.index import (
    RESCORE_OVERSAMPLING,
    CatalogIndexError,
    CollectionMeta,
    IndexedHit,
    IndexUnavailable,
)

log = logging.getLogger(__name__)
META_KEY = "vsbench_search"
_UPSERT_BATCH = 256
_SCROLL_PAGE = 1024
T = TypeVar("T")


def is_unavailable(exc: BaseException) -> bool:
    """A failure of reaching the server (retryable), as opposed to a request it refused."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException):  # connection refused / reset / timeout
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is not None and exc.status_code >= 500
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


class ServerCatalogIndex:
    def __init__(
        self, collection: str, *, url: str | None = None, path: str | Path | None = None,
        location: str | None = None, api_key: str | None = None, timeout: int = 30,
        retries: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 4.0,
        shard_number: int | None = None, replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> None:
        self._distribution = distribution_params(
            local=url is None, error=CatalogIndexError, shard_number=shard_number,
            replication_factor=replication_factor, write_consistency_factor=write_consistency_factor)
        from qdrant_client import QdrantClient, models

        self.models = models
        self.collection = check_name(collection)
        self._local = url is None
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        if url is not None:
            self._where = url
            key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
            self.client = QdrantClient(url=url, api_key=key, timeout=timeout, check_compatibility=False)
        elif path is not None:
            self._where = f"local:{path}"
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
        else:
            self._where = f"local:{location}"
            self.client = QdrantClient(location=location)
        self._meta: CollectionMeta | None = None

    def __repr__(self) -> str:
        return f"ServerCatalogIndex({self._where!r}, {self.collection!r})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                with self._quiet_local():
                    return fn()
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                attempt += 1
                if attempt > self.retries:
                    raise IndexUnavailable(
                        f"Qdrant at {self._where} did not answer {what} after {self.retries} retries: {exc}"
                    ) from None
                log.warning("Qdrant %s %s: %s; retry %d", self._where, what, type(exc).__name__, attempt)
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))

    @contextmanager
    def _quiet_local(self):
        if not self._local:
            yield
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Local mode|local Qdrant).*", category=UserWarning)
            yield

    # -- collection ----------------------------------------------------------------------------
    def meta(self) -> CollectionMeta | None:
        if self._meta is not None:
            return self._meta
        if not self._call("collection_exists", lambda: self.client.collection_exists(self.collection)):
            return None
        config = self._call("get_collection", lambda: self.client.get_collection(self.collection)).config
        metadata = config.metadata or {}
        if META_KEY not in metadata:
            raise CatalogIndexError(
                f"collection {self.collection!r} on {self._where} has no {META_KEY} metadata: not a vsbench search collection"
            )
        check_distribution(config.params, self._distribution, self.collection, self._where, CatalogIndexError)
        self._meta = CollectionMeta.from_dict(dict(metadata[META_KEY]))
        return self._meta

    def _metadata(self, meta: CollectionMeta) -> dict:
        return {META_KEY: meta.to_dict(), FINGERPRINT_KEY: meta.fingerprint}

    def create(self, meta: CollectionMeta) -> None:
        m, p = self.models, meta.params
        if self.meta() is not None:
            raise CatalogIndexError(f"collection {self.collection!r} already exists on {self._where}")
        quantization = {
            "none": None,
            "scalar": m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True)),
            "binary": m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True)),
        }[p.quantization]
        optimizers = m.OptimizersConfigDiff(indexing_threshold=p.indexing_threshold_kb) if p.indexing_threshold_kb is not None else None
        self._call("create_collection", lambda: self.client.create_collection(
            self.collection,
            vectors_config=m.VectorParams(size=meta.dim, distance=m.Distance.DOT),
            hnsw_config=m.HnswConfigDiff(m=p.m, ef_construct=p.ef_construct, full_scan_threshold=p.full_scan_threshold_kb),
            quantization_config=quantization,
            optimizers_config=optimizers,
            metadata=self._metadata(meta),
            **self._distribution,
        ))
        for key in ("product_id", "image_id"):
            self._call("create_payload_index", lambda key=key: self.client.create_payload_index(
                self.collection, key, field_schema=m.PayloadSchemaType.KEYWORD, wait=True))
        self._meta = meta

    def write_meta(self, meta: CollectionMeta) -> None:
        self._call("update_collection", lambda: self.client.update_collection(
            self.collection, metadata=self._metadata(meta)))
        self._meta = meta

    def drop(self) -> None:
        if self._call("collection_exists", lambda: self.client.collection_exists(self.collection)):
            self._call("delete_collection", lambda: self.client.delete_collection(self.collection))
        self._meta = None

    def _require(self) -> CollectionMeta:
        meta = self.meta()
        if meta is None:
            raise CatalogIndexError(f"collection {self.collection!r} does not exist on {self._where}")
        return meta

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        ids, arr, full = check_batch(self.collection, self._require().dim, image_ids, vectors, payloads)
        for start in range(0, len(ids), _UPSERT_BATCH):
            stop = start + _UPSERT_BATCH
            batch = self.models.Batch(ids=[point_id(i) for i in ids[start:stop]], vectors=arr[start:stop].tolist(),
                                      payloads=full[start:stop])
            self._call("upsert", lambda batch=batch: self.client.upsert(self.collection, points=batch, wait=True))

    def delete(self, image_ids: Sequence[str]) -> None:
        if image_ids:
            selector = self.models.PointIdsList(points=[point_id(str(i)) for i in image_ids])
            self._call("delete", lambda: self.client.delete(self.collection, points_selector=selector, wait=True))

    def optimize(self) -> None:
        """A server optimizes (builds the HNSW graph) in the background by itself."""

    # -- reads ---------------------------------------------------------------------------------
    def payloads(self) -> dict[str, dict]:
        self._require()
        out: dict[str, dict] = {}
        offset = None
        while True:
            records, offset = self._call("scroll", lambda offset=offset: self.client.scroll(
                self.collection, offset=offset, limit=_SCROLL_PAGE, with_payload=True, with_vectors=False))
            for record in records:
                payload = dict(record.payload or {})
                out[str(payload["image_id"])] = payload
            if offset is None:
                return out

    def search(
        self, vector: np.ndarray, limit: int, product_ids: Sequence[str] = (), ef: int | None = None,
        exact: bool = False,
    ) -> list[IndexedHit]:
        m, meta = self.models, self._require()
        flt = None
        if product_ids:
            flt = m.Filter(must=[m.FieldCondition(key="product_id", match=m.MatchAny(any=[str(p) for p in product_ids]))])
        quantized = meta.params.quantization != "none"
        params = m.SearchParams(
            hnsw_ef=ef, exact=exact,
            quantization=m.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING) if quantized else None,
        )
        query = np.asarray(vector, dtype=np.float32).tolist()
        response = self._call("query_points", lambda: self.client.query_points(
            self.collection, query=query, limit=int(limit), query_filter=flt, search_params=params, with_payload=True))
        return [
            IndexedHit(image_id=str((p.payload or {}).get("image_id", "")), product_id=str((p.payload or {}).get("product_id", "")),
                       location=str((p.payload or {}).get("location", "")), score=float(p.score))
            for p in response.points
        ]

    def count(self) -> int:
        self._require()
        return int(self._call("count", lambda: self.client.count(self.collection, exact=True)).count)

    def close(self) -> None:
        self.client.close()
