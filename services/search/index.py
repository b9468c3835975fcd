"""The catalog index: one Qdrant collection with an HNSW graph, and what it must carry to be served.

A collection holds one point per catalog image (payload product_id / image_id / location) and,
beside the vectors, its `CollectionMeta`: the model fingerprint the vectors were made with, the
open-set threshold a benchmark run chose for that model, and the index parameters. Two backends
keep it: Qdrant Edge in-process (edge_index.py, the metadata in a sidecar JSON) and a Qdrant
server (server_index.py, the metadata in Qdrant's collection metadata).

Unlike the evaluator's stores (services/evaluator/stores/: exact search, for measuring), this index
is for answering: approximate HNSW search with a tunable `ef`, optional quantization with rescoring.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

from services.common.errors import VsbenchError

QUANTIZATIONS = ("none", "scalar", "binary")
Quantization = Literal["none", "scalar", "binary"]
META_VERSION = 1
# Oversampling of quantized candidates before they are re-scored with the original vectors.
RESCORE_OVERSAMPLING = 2.0


class CatalogIndexError(VsbenchError, ValueError):
    """A collection that cannot be built or served as asked (nothing was changed)."""


class IndexUnavailable(VsbenchError, ConnectionError):
    """The vector index (a Qdrant server) did not answer within the retry budget."""


@dataclass(frozen=True)
class IndexParams:
    """HNSW graph and quantization of a collection, in Qdrant's terms: the graph is built for a
    segment once it holds `indexing_threshold_kb` of vectors (None: Qdrant's default, 10 MB; 0: never),
    and a search over fewer than `full_scan_threshold_kb` of vectors scans them exactly instead."""

    m: int = 16
    ef_construct: int = 100
    quantization: Quantization = "none"
    indexing_threshold_kb: int | None = None
    full_scan_threshold_kb: int = 10_000

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise CatalogIndexError(f"quantization {self.quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
        if self.m < 0 or self.ef_construct < 4:
            raise CatalogIndexError(f"HNSW m must be >= 0 and ef_construct >= 4, got m={self.m} ef_construct={self.ef_construct}")
        if self.indexing_threshold_kb is not None and self.indexing_threshold_kb < 0:
            raise CatalogIndexError("indexing_threshold_kb must be >= 0")
        if self.full_scan_threshold_kb < 1:
            raise CatalogIndexError("full_scan_threshold_kb must be >= 1")

    @classmethod
    def from_dict(cls, data: dict) -> "IndexParams":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class CollectionMeta:
    """What a served collection promises: vectors of `fingerprint`, accept above `threshold`."""

    fingerprint: str
    model: dict
    dim: int
    params: IndexParams
    threshold: float | None = None
    threshold_source: str = ""  # "<run id> <record path>", "" when no threshold was taken
    dataset: dict = field(default_factory=dict)
    version: int = META_VERSION

    def to_dict(self) -> dict:
        data = asdict(self)
        data["params"] = asdict(self.params)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CollectionMeta":
        try:
            return cls(
                fingerprint=str(data["fingerprint"]),
                model=dict(data.get("model", {})),
                dim=int(data["dim"]),
                params=IndexParams.from_dict(dict(data.get("params", {}))),
                threshold=None if data.get("threshold") is None else float(data["threshold"]),
                threshold_source=str(data.get("threshold_source", "")),
                dataset=dict(data.get("dataset", {})),
                version=int(data.get("version", META_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogIndexError(f"collection metadata is not a vsbench search collection's: {exc}") from None


@dataclass(frozen=True, slots=True)
class IndexedHit:
    image_id: str
    product_id: str
    location: str
    score: float


class CatalogIndex(Protocol):
    """One collection of a Qdrant backend. `search` is approximate (HNSW, `ef` candidates)."""

    collection: str

    def meta(self) -> CollectionMeta | None: ...  # None: the collection does not exist
    def create(self, meta: CollectionMeta) -> None: ...
    def write_meta(self, meta: CollectionMeta) -> None: ...
    def drop(self) -> None: ...
    def payloads(self) -> dict[str, dict]: ...  # image id -> payload of every stored point
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None: ...
    def delete(self, image_ids: Sequence[str]) -> None: ...
    def optimize(self) -> None: ...
    def search(
        self, vector: np.ndarray, limit: int, product_ids: Sequence[str] = (), ef: int | None = None,
        exact: bool = False,
    ) -> list[IndexedHit]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def group_by_product(hits: Sequence[IndexedHit], k: int) -> list[IndexedHit]:
    """The best hit of each product, best first, at most k. Hits must come sorted by score
    descending. A catalog image without a product (a distractor) is its own group."""
    seen: set[str] = set()
    out: list[IndexedHit] = []
    for hit in hits:
        key = hit.product_id if hit.product_id else f"\0{hit.image_id}"
        if key in seen:
            continue
        seen.add(key)
        out.append(hit)
        if len(out) == k:
            break
    return out


def search_products(
    index: CatalogIndex, vector: np.ndarray, k: int, product_ids: Sequence[str] = (), ef: int | None = None
) -> list[IndexedHit]:
    """Top k products: asks the index for more images until k distinct products are in or the
    collection has no more (a product with many near-identical photos fills the first page)."""
    limit = max(4 * k, 16)
    while True:
        hits = index.search(vector, limit, product_ids, ef)
        products = group_by_product(hits, k)
        if len(products) >= k or len(hits) < limit:
            return products
        limit *= 4


def decide(top_score: float | None, threshold: float | None) -> bool:
    """Accept (True) when the top score is above the threshold (the open-set analysis' rule,
    services/evaluator/analytics/open_set.py: accept s > t); no threshold accepts any answer."""
    if top_score is None:
        return False
    return threshold is None or top_score > threshold


def open_index(
    collection: str, *, store: str | Path | None = None, qdrant_url: str | None = None,
    qdrant_path: str | Path | None = None, qdrant_location: str | None = None,
    distribution: dict[str, int] | None = None,
) -> CatalogIndex:
    """`store`: a Qdrant Edge folder; `qdrant_url`: a Qdrant server (or qdrant-client's local mode
    by `qdrant_path` / `qdrant_location`, which runs the same client code without a server).
    `distribution`: shard_number / replication_factor / write_consistency_factor of a Qdrant
    server's new collection (a cluster's; refused for Qdrant Edge and local mode)."""
    given = [n for n, v in (("store", store), ("qdrant_url", qdrant_url), ("qdrant_path", qdrant_path),
                            ("qdrant_location", qdrant_location)) if v is not None]
    if len(given) != 1:
        raise CatalogIndexError(f"give exactly one of --store (Qdrant Edge) and --qdrant-url, got {given or 'none'}")
    distribution = distribution or {}
    if store is not None:
        if distribution:
            flags = ", ".join("--" + key.replace("_", "-") for key in distribution)
            raise CatalogIndexError(f"{flags}: Qdrant Edge is one process, with no shards or replicas; "
                                    "give --qdrant-url of a Qdrant cluster")
        from services.search.edge_index import EdgeCatalogIndex

        return EdgeCatalogIndex(store, collection)
    from services.search.server_index import ServerCatalogIndex

    return ServerCatalogIndex(
        collection, url=qdrant_url, path=qdrant_path, location=qdrant_location, **distribution)


def meta_json(meta: CollectionMeta) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)
