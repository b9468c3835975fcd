"""A Qdrant server (compose / k8s) through qdrant-client; qdrant-client's local mode uses the same code.

`QdrantServerStore(url=...)` talks to a server. `location=":memory:"` or `path=...` run
qdrant-client's local mode instead: far too slow to be the default (about 5 queries/s and 400 s to
upsert 60k x 1024 on the project machine) but it runs every call of this class without a server,
which is how the tests cover the server code path (no Qdrant server binary can be installed here).

Exact search: query_batch_points with SearchParams(exact=True) on Distance.DOT, a filter on the
`split` payload (keyword-indexed) and, per query, must_not HasId(its own point) for the intra
self-match. Equal scores are ranked deterministically (see _common.ranked_search).

The API key comes from the QDRANT_API_KEY environment variable when none is passed; it is never
logged or shown in repr().

Distributed Qdrant: `shard_number`, `replication_factor` and `write_consistency_factor` are sent with
create_collection when given (None: the server's default, docs/deployment.md "Qdrant at scale").
Local mode keeps no shards or replicas (its get_collection reports None for all three), so they are
refused there rather than silently dropped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import numpy as np

from services.evaluator.stores._common import (
    RawHit,
    StoreError,
    check_batch,
    check_fingerprint,
    check_name,
    check_queries,
    matrix_by_lookup,
    ranked_search,
    stored_block,
)
from services.evaluator.stores.base import Hit, StoredMatrix, StoredVectors, point_id

API_KEY_ENV = "QDRANT_API_KEY"
DEFAULT_UPSERT_BATCH = 256
_RETRIEVE_BATCH = 1024
_QUERY_BATCH = 64
# Collection metadata key holding the model fingerprint of the stored vectors.
FINGERPRINT_KEY = "vsbench_fingerprint"
# Qdrant's per-collection distribution parameters (create_collection keywords of qdrant-client).
DISTRIBUTION_FIELDS = ("shard_number", "replication_factor", "write_consistency_factor")


def distribution_params(
    *,
    local: bool,
    error: type[Exception] = StoreError,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    write_consistency_factor: int | None = None,
) -> dict[str, int]:
    """The distribution parameters given (None left out), checked: integers >= 1, a server only
    (local mode has no cluster), and no more write acknowledgements than replicas (every write
    would fail)."""
    given = {
        "shard_number": shard_number,
        "replication_factor": replication_factor,
        "write_consistency_factor": write_consistency_factor,
    }
    asked = {k: v for k, v in given.items() if v is not None}
    for key, value in asked.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{key} must be an integer >= 1, got {value!r}")
    if asked and local:
        raise error(
            f"{', '.join(asked)}: qdrant-client's local mode has no shards or replicas; "
            "give the url of a Qdrant server (cluster)"
        )
    wcf, rf = asked.get("write_consistency_factor"), asked.get("replication_factor")
    if wcf is not None and rf is not None and wcf > rf:
        raise error(f"write_consistency_factor {wcf} exceeds replication_factor {rf}: no write could succeed")
    return asked


def check_distribution(
    params, asked: Mapping[str, int], name: str, where: str, error: type[Exception] = StoreError
) -> None:
    """An existing collection must have the distribution asked for: vsbench sets it only when it
    creates a collection (shard_number cannot change afterwards), so a mismatch is refused rather
    than ignored."""
    for key, value in asked.items():
        have = getattr(params, key, None)
        if have is not None and int(have) != value:
            raise error(
                f"collection {name!r} on {where} has {key} {have}, asked for {value} "
                "(set when a collection is created: ask for what it has, or drop the collection)"
            )


class QdrantServerStore:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | Path | None = None,
        *,
        timeout: int = 120,
        prefer_grpc: bool = False,
        check_compatibility: bool = True,
        upsert_batch: int = DEFAULT_UPSERT_BATCH,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> None:
        given = [n for n, v in (("url", url), ("location", location), ("path", path)) if v is not None]
        if len(given) != 1:
            raise StoreError(
                f"QdrantServerStore needs exactly one of url, location, path; got {given or 'none'}"
            )
        self._distribution = distribution_params(
            local=url is None,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )
        from qdrant_client import QdrantClient, models  # lazy: heavy, and only this store needs it

        self.models = models
        self.upsert_batch = max(1, int(upsert_batch))
        self._local = url is None
        if url is not None:
            self._where = url
            key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
            self.client = QdrantClient(
                url=url,
                api_key=key,
                timeout=timeout,
                prefer_grpc=prefer_grpc,
                check_compatibility=check_compatibility,
            )
        elif path is not None:
            self._where = f"local:{path}"
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
        else:
            self._where = f"local:{location}"
            self.client = QdrantClient(location=location)
        self._dims: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"QdrantServerStore({self._where!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _quiet_local(self):
        """Local mode warns that search params and payload indexes do nothing there; we send them
        anyway so the server path is what runs."""
        if not self._local:
            yield
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Local mode|local Qdrant).*", category=UserWarning)
            yield

    # -- collections ---------------------------------------------------------------------------

    def _collection_dim(self, name: str) -> int | None:
        if not self.client.collection_exists(check_name(name)):
            return None
        params = self.client.get_collection(name).config.params.vectors
        if not isinstance(params, self.models.VectorParams):
            raise StoreError(
                f"collection {name!r} on {self._where} uses named vectors; vsbench needs one unnamed vector"
            )
        if params.distance != self.models.Distance.DOT:
            raise StoreError(
                f"collection {name!r} on {self._where} uses {params.distance.value} distance, vsbench needs Dot"
            )
        return int(params.size)

    def collection_fingerprint(self, name: str) -> str | None:
        if not self.client.collection_exists(check_name(name)):
            return None
        metadata = self.client.get_collection(name).config.metadata or {}
        return str(metadata.get(FINGERPRINT_KEY, ""))

    def drop_collection(self, name: str) -> None:
        self._dims.pop(name, None)
        if self.client.collection_exists(check_name(name)):
            self.client.delete_collection(name)

    def ensure_collection(self, name: str, dim: int, fingerprint: str = "") -> None:
        dim = int(dim)
        if dim < 1:
            raise StoreError(f"collection {name!r}: dim must be >= 1, got {dim}")
        stored = self._collection_dim(name)
        if stored is not None and stored != dim:
            raise StoreError(
                f"collection {name!r} on {self._where} holds {stored}-d vectors, asked for {dim}-d"
            )
        if stored is not None:
            check_fingerprint(name, self.collection_fingerprint(name), fingerprint)
            self._check_distribution(name)
        if stored is None:
            m = self.models
            try:
                self.client.create_collection(
                    name,
                    vectors_config=m.VectorParams(size=dim, distance=m.Distance.DOT),
                    metadata={FINGERPRINT_KEY: fingerprint},
                    **self._distribution,
                )
            except Exception:
                # Sharded embed pods race to create the same collection: losing the race is fine
                # as long as what the winner made has our dimension.
                if self._collection_dim(name) != dim:
                    raise
                check_fingerprint(name, self.collection_fingerprint(name), fingerprint)
                self._check_distribution(name)
            with self._quiet_local():
                self.client.create_payload_index(
                    name, "split", field_schema=m.PayloadSchemaType.KEYWORD, wait=True
                )
        self._dims[name] = dim

    def _check_distribution(self, name: str) -> None:
        if self._distribution:
            params = self.client.get_collection(name).config.params
            check_distribution(params, self._distribution, name, self._where)

    def _dim(self, name: str) -> int:
        if name not in self._dims:
            stored = self._collection_dim(name)
            if stored is None:
                raise StoreError(
                    f"collection {name!r} does not exist on {self._where} (ensure_collection creates it)"
                )
            self._dims[name] = stored
        return self._dims[name]

    # -- writes --------------------------------------------------------------------------------

    def upsert(
        self, name: str, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        ids, arr, full_payloads = check_batch(name, self._dim(name), image_ids, vectors, payloads)
        for start in range(0, len(ids), self.upsert_batch):
            stop = start + self.upsert_batch
            batch = self.models.Batch(
                ids=[point_id(i) for i in ids[start:stop]],
                vectors=arr[start:stop].tolist(),
                payloads=full_payloads[start:stop],
            )
            self.client.upsert(name, points=batch, wait=True)

    # -- reads ---------------------------------------------------------------------------------

    def existing_ids(self, name: str, image_ids: Sequence[str]) -> set[str]:
        self._dim(name)
        found: set[str] = set()
        ids = [str(i) for i in image_ids]
        for start in range(0, len(ids), _RETRIEVE_BATCH):
            by_point = {point_id(i): i for i in ids[start : start + _RETRIEVE_BATCH]}
            for record in self.client.retrieve(
                name, ids=list(by_point), with_payload=False, with_vectors=False
            ):
                found.add(by_point[str(record.id)])
        return found

    def fetch(self, name: str, image_ids: Sequence[str], batch_size: int = 4096) -> Iterator[StoredVectors]:
        dim = self._dim(name)
        ids = [str(i) for i in image_ids]
        batch_size = max(1, int(batch_size))
        for start in range(0, len(ids), batch_size):
            block = ids[start : start + batch_size]
            records = {
                str(r.id): r
                for r in self.client.retrieve(
                    name, ids=[point_id(i) for i in block], with_payload=True, with_vectors=True
                )
            }
            stored = stored_block(block, records, dim)
            if stored is not None:
                yield stored

    def search_exact(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        split: str | None = "gallery",
        exclude_ids: Sequence[str | None] | None = None,
        tie_order: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """See VectorStore.search_exact. tie_order (optional): image id -> gallery position; equal
        scores are ranked by it (default: by image id). split=None searches the whole collection."""
        m = self.models
        q, excludes = check_queries(name, self._dim(name), queries, k, exclude_ids)
        must = (
            [m.FieldCondition(key="split", match=m.MatchValue(value=str(split)))]
            if split is not None
            else None
        )
        filters = [
            m.Filter(
                must=must, must_not=[m.HasIdCondition(has_id=[point_id(ex)])] if ex is not None else None
            )
            if (must or ex is not None)
            else None
            for ex in excludes
        ]
        params = m.SearchParams(exact=True)

        def run(rows: Sequence[int], limit: int) -> list[list[RawHit]]:
            out: list[list[RawHit]] = []
            for start in range(0, len(rows), _QUERY_BATCH):
                requests = [
                    m.QueryRequest(
                        query=q[row].tolist(),
                        filter=filters[row],
                        params=params,
                        limit=limit,
                        with_payload=["image_id"],
                    )
                    for row in rows[start : start + _QUERY_BATCH]
                ]
                with self._quiet_local():
                    responses = self.client.query_batch_points(name, requests=requests)
                for response in responses:
                    out.append([RawHit(p.payload["image_id"], p.score) for p in response.points])
            return out

        return ranked_search(run, q.shape[0], k, excludes, engine_excludes=True, tie_order=tie_order)

    def matrix(self, name: str, image_ids) -> StoredMatrix:
        return matrix_by_lookup(self, name, image_ids)

    def count(self, name: str) -> int:
        self._dim(name)
        return int(self.client.count(name, exact=True).count)

    def close(self) -> None:
        self.client.close()
