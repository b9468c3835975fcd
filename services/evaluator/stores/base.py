"""SEAM: where embeddings live between embedding and scoring.

One collection per (dataset, model). Point ids are derived from image ids (uuid5) so upserts are
idempotent and a killed run resumes by asking which image ids are already stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

# Fixed namespace: the same image id always maps to the same point id, across runs and stores.
POINT_NAMESPACE = uuid.UUID("5b3f7a9e-2d6c-4c1e-9a57-6f1f0c8e4b21")


def point_id(image_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, image_id))


@dataclass(frozen=True)
class StoredVectors:
    """Vectors read back from a store, in a deterministic order (the order of `image_ids` asked
    for, or insertion order when all are read)."""

    image_ids: list[str]
    vectors: np.ndarray  # (n, dim) float32
    payloads: list[dict]


@dataclass(frozen=True)
class StoredMatrix:
    """The vectors stored for a column of image ids, read for scoring without one Python object per
    image: `stored[i]` says whether ids[i] has a vector; `blocks()` yields the stored ones' vectors
    in the ids' order, a bounded block at a time (memory-mapped slices where the store has them;
    float16 or float32, not necessarily normalised: the search normalises)."""

    stored: np.ndarray
    blocks: Callable[[], Iterator[np.ndarray]]


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float


class VectorStore(Protocol):
    """Payload of every point: image_id, product_id, split, dataset, model."""

    def ensure_collection(self, name: str, dim: int, fingerprint: str = "") -> None:
        """Create if absent (Distance.DOT on normalised vectors), recording the model fingerprint of
        the vectors it will hold. StoreError if dim differs; FingerprintMismatch if the collection
        exists with another fingerprint (one made before fingerprints counts as "")."""

    def collection_fingerprint(self, name: str) -> str | None:
        """The fingerprint recorded for a collection ("" if none), or None if it does not exist."""

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its vectors (no error if absent): `--reembed` starts afresh."""

    def existing_ids(self, name: str, image_ids: Sequence[str]) -> set[str]:
        """Which of these image ids already have a vector stored."""

    def upsert(self, name: str, image_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        """Insert or replace; vectors are L2-normalised float32."""

    def fetch(self, name: str, image_ids: Sequence[str], batch_size: int = 4096) -> Iterator[StoredVectors]:
        """Read stored vectors back in blocks, in the order of `image_ids` (missing ids skipped)."""

    def search_exact(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        split: str | None = "gallery",
        exclude_ids: Sequence[str | None] | None = None,
        tie_order: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Qdrant's exact search (full scan, dot product) restricted to one split; `exclude_ids`
        gives per query an image id to leave out (intra self-match); `tie_order` maps image id to
        gallery position so equal scores follow the protocol's tie rule (default: by image id)."""

    def matrix(self, name: str, image_ids: "pa.Array") -> StoredMatrix:
        """Which of a column of image ids are stored, and their vectors as blocks in that order."""

    def count(self, name: str) -> int: ...

    def close(self) -> None: ...
