"""A catalog collection in Qdrant Edge (qdrant-edge-py): the Qdrant engine in this process.

Layout: `<store>/<collection>/` holds the shard; `vsbench_search.json` beside the engine's files
holds the CollectionMeta (the engine has no collection metadata). Only one process may hold a shard
open at a time (the engine's lock), so index first, then serve.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from services.evaluator.stores._common import check_batch, check_name
from services.evaluator.stores.base import point_id
from services.search.index import (
    RESCORE_OVERSAMPLING,
    CatalogIndexError,
    CollectionMeta,
    IndexedHit,
)

META_FILE = "vsbench_search.json"
_EDGE_CONFIG_FILE = "edge_config.json"
_UPSERT_BATCH = 1024
_SCROLL_PAGE = 4096


class EdgeCatalogIndex:
    def __init__(self, store: str | Path, collection: str) -> None:
        import qdrant_edge  # lazy: only the Edge backend needs it

        self._q = qdrant_edge
        self.collection = check_name(collection)
        self.folder = Path(store) / collection
        self._shard = None
        self._meta: CollectionMeta | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EdgeCatalogIndex({str(self.folder)!r})"

    # -- collection ----------------------------------------------------------------------------
    def meta(self) -> CollectionMeta | None:
        path = self.folder / META_FILE
        if not path.is_file():
            if (self.folder / _EDGE_CONFIG_FILE).is_file():
                raise CatalogIndexError(
                    f"{self.folder} holds a Qdrant Edge shard without {META_FILE}: not a vsbench search collection"
                )
            return None
        if self._meta is None:
            self._meta = CollectionMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
        return self._meta

    def _config(self, meta: CollectionMeta):
        q, p = self._q, meta.params
        quantization = {
            "none": None,
            "scalar": q.ScalarQuantizationConfig(type=q.ScalarType.Int8, always_ram=True),
            "binary": q.BinaryQuantizationConfig(always_ram=True),
        }[p.quantization]
        return q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=meta.dim, distance=q.Distance.Dot),
            hnsw_config=q.HnswIndexConfig(m=p.m, ef_construct=p.ef_construct, full_scan_threshold=p.full_scan_threshold_kb),
            quantization_config=quantization,
            optimizers=q.EdgeOptimizersConfig(indexing_threshold=p.indexing_threshold_kb),
        )

    def create(self, meta: CollectionMeta) -> None:
        if self.meta() is not None:
            raise CatalogIndexError(f"collection {self.collection!r} already exists in {self.folder.parent}")
        q = self._q
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = q.EdgeShard.create(str(self.folder), self._config(meta))
        for key in ("product_id", "image_id"):
            shard.update(q.UpdateOperation.create_field_index(key, q.PayloadSchemaType.Keyword))
        shard.flush()
        self._shard = shard
        self.write_meta(meta)

    def write_meta(self, meta: CollectionMeta) -> None:
        path = self.folder / META_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        self._meta = meta

    def drop(self) -> None:
        self.close()
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._meta = None

    def _open(self):
        with self._lock:
            if self._shard is None:
                meta = self.meta()
                if meta is None:
                    raise CatalogIndexError(f"collection {self.collection!r} does not exist in {self.folder.parent}")
                try:
                    self._shard = self._q.EdgeShard.load(str(self.folder))
                except Exception as exc:  # the bindings raise a bare Exception
                    if "WouldBlock" in str(exc):
                        raise CatalogIndexError(
                            f"collection {self.collection!r} in {self.folder} is open in another process "
                            "(a running search service?); stop that one first"
                        ) from exc
                    raise
            return self._shard

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        meta = self.meta()
        assert meta is not None
        ids, arr, full = check_batch(self.collection, meta.dim, image_ids, vectors, payloads)
        q, shard = self._q, self._open()
        for start in range(0, len(ids), _UPSERT_BATCH):
            stop = start + _UPSERT_BATCH
            shard.update(q.UpdateOperation.upsert_points([
                q.Point(point_id(i), row.tolist(), payload)
                for i, row, payload in zip(ids[start:stop], arr[start:stop], full[start:stop])
            ]))

    def delete(self, image_ids: Sequence[str]) -> None:
        if image_ids:
            self._open().update(self._q.UpdateOperation.delete_points([point_id(str(i)) for i in image_ids]))

    def optimize(self) -> None:
        shard = self._open()
        shard.optimize()
        shard.flush()

    # -- reads ---------------------------------------------------------------------------------
    def payloads(self) -> dict[str, dict]:
        shard, q = self._open(), self._q
        out: dict[str, dict] = {}
        offset = None
        while True:
            records, offset = shard.scroll(q.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, with_payload=True,
                                                           with_vector=False))
            for record in records:
                payload = dict(record.payload or {})
                out[str(payload["image_id"])] = payload
            if offset is None:
                return out

    def search(
        self, vector: np.ndarray, limit: int, product_ids: Sequence[str] = (), ef: int | None = None,
        exact: bool = False,
    ) -> list[IndexedHit]:
        q, shard, meta = self._q, self._open(), self.meta()
        assert meta is not None
        flt = None
        if product_ids:
            flt = q.Filter(must=[q.FieldCondition("product_id", match=q.MatchAny([str(p) for p in product_ids]))])
        quantized = meta.params.quantization != "none"
        params = q.SearchParams(
            hnsw_ef=ef, exact=exact,
            quantization=q.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING) if quantized else None,
        )
        points = shard.query(q.QueryRequest(
            limit=int(limit), query=q.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            filter=flt, params=params, with_payload=True,
        ))
        return [_hit(p.payload or {}, p.score) for p in points]

    def count(self) -> int:
        return int(self._open().count(self._q.CountRequest(exact=True)))

    def close(self) -> None:
        with self._lock:
            shard, self._shard = self._shard, None
        if shard is not None:
            shard.flush()
            shard.close()


def _hit(payload: dict, score: float) -> IndexedHit:
    return IndexedHit(
        image_id=str(payload.get("image_id", "")), product_id=str(payload.get("product_id", "")),
        location=str(payload.get("location", "")), score=float(score),
    )
