"""What both Qdrant stores share: input checks and the deterministic exact top-k on top of Qdrant.

Qdrant's exact search orders equal scores arbitrarily (the order falls out of its bounded priority
queue: it is neither point id nor insertion order, and the same query with limit 5 and limit 20 can
keep different members of a tie group). The protocol wants one rule, score descending then gallery
order ascending, so `ranked_search` asks Qdrant for one extra hit, and when the k-th and the next
score are equal it asks again with a larger limit until the whole tie group at the cut-off is in,
then sorts by (score desc, tie key asc). Ties are rare with real embeddings, so the second pass
almost never runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import VsbenchError
from services.evaluator.stores.base import Hit, StoredMatrix, StoredVectors, point_id

# Both stores use the name as is: a folder for Qdrant Edge, a collection for a server.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Payload fields every point carries (base.VectorStore); only image_id is required by the stores.
PAYLOAD_FIELDS = ("image_id", "product_id", "split", "dataset", "model")


class StoreError(VsbenchError, ValueError):
    """Bad input to a vector store (nothing was written)."""


class FingerprintMismatch(StoreError):
    """The collection holds vectors of another model than the one now serving under that name."""

    def __init__(self, collection: str, stored: str, served: str) -> None:
        from services.common.fingerprint import short

        self.collection, self.stored, self.served = collection, stored, served
        super().__init__(
            f"collection {collection!r} holds vectors of model fingerprint {short(stored) if stored else '(none recorded)'}"
            f" but the model now answers with {short(served) if served else '(none)'}; vectors are never mixed: "
            "rerun with --reembed to replace them in a fresh collection, or give the model another name"
        )


def check_fingerprint(collection: str, stored: str | None, served: str) -> None:
    """Raise FingerprintMismatch unless an existing collection's fingerprint equals the served one."""
    if stored is not None and stored != served:
        raise FingerprintMismatch(collection, stored, served)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise StoreError(
            f"collection name {name!r} is not usable: use 1-200 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (pipeline.collection_name() builds such names)"
        )
    return name


def check_batch(
    name: str, dim: int, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
) -> tuple[list[str], np.ndarray, list[dict]]:
    """Validate one upsert completely before anything is written; returns (ids, float32 rows, payloads
    with image_id set)."""
    ids = [str(i) for i in image_ids]
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise StoreError(f"{name}: vectors must be a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise StoreError(f"{name}: vector dim {arr.shape[1]} does not match the collection's dim {dim}")
    if not (len(ids) == arr.shape[0] == len(payloads)):
        raise StoreError(
            f"{name}: {len(ids)} image ids, {arr.shape[0]} vectors and {len(payloads)} payloads: counts must match"
        )
    if len(set(ids)) != len(ids):
        raise StoreError(f"{name}: duplicate image ids in one upsert")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = ids[int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])]
        raise StoreError(f"{name}: vector of image {bad!r} has NaN or inf values")
    out = []
    for image_id, payload in zip(ids, payloads):
        if payload.get("image_id", image_id) != image_id:
            raise StoreError(f"{name}: payload image_id {payload['image_id']!r} != image id {image_id!r}")
        out.append({**payload, "image_id": image_id})
    return ids, arr, out


def check_queries(
    name: str, dim: int, queries: np.ndarray, k: int, exclude_ids: Sequence[str | None] | None
) -> tuple[np.ndarray, list[str | None]]:
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != dim:
        raise StoreError(f"{name}: queries must have shape (n, {dim}), got {q.shape}")
    if k < 1:
        raise StoreError(f"k must be >= 1, got {k}")
    if exclude_ids is None:
        excludes: list[str | None] = [None] * q.shape[0]
    else:
        excludes = [None if e is None else str(e) for e in exclude_ids]
        if len(excludes) != q.shape[0]:
            raise StoreError(f"{name}: exclude_ids needs one entry (an image id or None) per query")
    return q, excludes


def rows_to_array(rows: Sequence[Sequence[float]], dim: int) -> np.ndarray:
    out = np.empty((len(rows), dim), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def stored_block(image_ids: Sequence[str], records: Mapping[str, object], dim: int) -> StoredVectors | None:
    """The records retrieved for one block of image ids (keyed by point id), in the asked order;
    ids without a stored point are skipped. None when none of them is stored."""
    kept = [(i, records[point_id(i)]) for i in image_ids if point_id(i) in records]
    if not kept:
        return None
    return StoredVectors(
        image_ids=[i for i, _ in kept],
        vectors=rows_to_array([r.vector for _, r in kept], dim),
        payloads=[dict(r.payload or {}) for _, r in kept],
    )


@dataclass(frozen=True, slots=True)
class RawHit:
    image_id: str
    score: float


# run(query_rows, limit) -> per query, hits sorted by score descending as the engine returns them.
RunQueries = Callable[[Sequence[int], int], list[list[RawHit]]]


def ranked_search(
    run: RunQueries,
    n_queries: int,
    k: int,
    excludes: Sequence[str | None],
    *,
    engine_excludes: bool,
    tie_order: Mapping[str, int] | None = None,
) -> list[list[Hit]]:
    """Exact top-k per query under the rule score desc, then tie key asc (tie_order[image_id] when
    given, else the image id). engine_excludes: the engine already left out each query's excluded
    id (a filter); otherwise one extra hit is asked for and the excluded id dropped here."""
    extra = 0 if engine_excludes else 1
    limit = k + 1 + extra
    results: list[list[Hit] | None] = [None] * n_queries
    pending = list(range(n_queries))

    def tie_key(image_id: str):
        if tie_order is None:
            return image_id
        try:
            return tie_order[image_id]
        except KeyError:
            raise StoreError(f"tie_order has no position for stored image {image_id!r}") from None

    while pending:
        answers = run(pending, limit)
        retry = []
        for row, raw in zip(pending, answers):
            exhausted = len(raw) < limit  # the engine had no more candidates
            hits = [h for h in raw if h.image_id != excludes[row]] if excludes[row] is not None else raw
            # Complete when every hit scoring like the k-th is in: the last one returned scores lower.
            if exhausted or (len(hits) > k and hits[-1].score < hits[k - 1].score):
                hits = sorted(hits, key=lambda h: (-h.score, tie_key(h.image_id)))[:k]
                results[row] = [Hit(image_id=h.image_id, score=float(h.score)) for h in hits]
            else:
                retry.append(row)
        pending = retry
        limit *= 4
    return results  # type: ignore[return-value]


MATRIX_BATCH = 4096


def matrix_by_lookup(store, name: str, image_ids, batch: int = MATRIX_BATCH) -> StoredMatrix:
    """StoredMatrix for a store that looks ids up one batch at a time (existing_ids, fetch): Python
    strings exist only for the batch at hand."""
    n = len(image_ids)
    stored = np.zeros(n, dtype=bool)
    for start in range(0, n, batch):
        chunk = image_ids.slice(start, batch).to_pylist()
        found = store.existing_ids(name, chunk)
        stored[start : start + len(chunk)] = [i in found for i in chunk]

    def blocks():
        for start in range(0, n, batch):
            rows = np.flatnonzero(stored[start : start + batch])
            if rows.size == 0:
                continue
            ids = image_ids.slice(start, batch).take(rows).to_pylist()
            got = 0
            for block in store.fetch(name, ids, batch_size=batch):
                if block.image_ids != ids[got : got + len(block.image_ids)]:
                    raise StoreError(f"{name}: vectors vanished while being read (was the collection written to?)")
                got += len(block.image_ids)
                yield block.vectors
            if got != len(ids):
                raise StoreError(f"{name}: {len(ids) - got} vectors vanished while being read")

    return StoredMatrix(stored=stored, blocks=blocks)


def exact_hits(
    name: str,
    dim: int,
    queries: np.ndarray,
    k: int,
    candidate_ids: Sequence[str],
    vectors_of: Callable[[list[str]], np.ndarray],
    exclude_ids: Sequence[str | None] | None = None,
    tie_order: Mapping[str, int] | None = None,
) -> list[list[Hit]]:
    """search_exact of a store that holds its vectors itself (NPZ files, embedding directories):
    exact dot products over the candidates, equal scores by `tie_order` (default: image id), as
    the Qdrant stores rank them. vectors_of(ids) -> (len(ids), dim) float32 rows."""
    from services.evaluator.search import exact_topk

    q, excludes = check_queries(name, dim, queries, k, exclude_ids)
    # Gallery order = the tie key, so exact_topk's "gallery position ascending" is the rule asked for.
    order = (lambda i: (tie_order.get(i, len(tie_order)), i)) if tie_order is not None else None
    candidates = sorted(candidate_ids, key=order)
    if not candidates:
        return [[] for _ in range(q.shape[0])]
    position = {image_id: n for n, image_id in enumerate(candidates)}
    exclude = np.array([position.get(ex, -1) if ex is not None else -1 for ex in excludes], dtype=np.int64)
    topk = exact_topk(q, vectors_of(candidates), min(k, len(candidates)), exclude=exclude, engine="numpy")
    return [
        [Hit(candidates[int(i)], float(s)) for i, s in zip(topk.indices[row], topk.scores[row]) if i >= 0]
        for row in range(q.shape[0])
    ]
