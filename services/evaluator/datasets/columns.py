"""A dataset's ids and labels as columns: what scoring needs, without one Python object per image.

Ids are an Arrow string array (offsets + bytes: ~4 B + the id's length per item), labels integer
codes into one product dictionary shared by gallery and queries, so a 5M-item gallery with 40-byte
ids costs ~240 MB instead of the ~1.6 GB of ImageRecord objects (docs/performance.md, "Metadata").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from services.evaluator import arrow_kernels as ak

DISTRACTOR = -1


@dataclass(frozen=True)
class DatasetColumns:
    """gallery_codes / query_codes: product codes (-1 = distractor, never relevant); a query whose
    product has no gallery image gets a code no gallery item has (it is unanswerable).
    query_positions: in an intra dataset, each query's position in the gallery (the queries are
    the gallery's labelled images); None for inter datasets."""

    gallery_ids: pa.Array
    gallery_codes: np.ndarray
    query_ids: pa.Array
    query_codes: np.ndarray
    products: pa.Array
    query_positions: np.ndarray | None = None

    @property
    def intra(self) -> bool:
        return self.query_positions is not None

    def query_products(self, rows: np.ndarray | None = None) -> list[str]:
        codes = self.query_codes if rows is None else self.query_codes[rows]
        return ak.take(self.products, codes).to_pylist()

    def counts(self) -> dict[str, int]:
        return {
            "query_images": len(self.query_ids),
            "gallery_images": len(self.gallery_ids),
            # as counted so far: a query labelled "" (code -1) counts as one more product
            "query_products": self._distinct(self.query_codes) + int((self.query_codes < 0).any()),
            "gallery_products": self._distinct(self.gallery_codes),
            "distractors": int((self.gallery_codes < 0).sum()),
        }

    def _distinct(self, codes: np.ndarray) -> int:
        """Products among codes (-1, a distractor, is none): codes index `products`, so a count per
        code does it in one pass, where np.unique would sort."""
        return int(np.count_nonzero(np.bincount(codes[codes >= 0], minlength=len(self.products))))

    def nbytes(self) -> int:
        """Memory held by the columns (the figure docs/performance.md reports per 1M items)."""
        arrays = (self.gallery_codes, self.query_codes) + (
            () if self.query_positions is None else (self.query_positions,)
        )
        return (
            self.gallery_ids.nbytes + self.query_ids.nbytes + self.products.nbytes + sum(a.nbytes for a in arrays)
        )


def string_column(values: pa.Array | pa.ChunkedArray | Sequence[str] | np.ndarray) -> pa.Array:
    """One contiguous Arrow string array (nulls become "")."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    elif not isinstance(values, pa.Array):
        values = pa.array(values, type=pa.string()) if not isinstance(values, np.ndarray) else pa.array(values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    if values.null_count:
        values = values.fill_null("")
    return values


def encode_labels(gallery_labels: pa.Array, query_labels: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(gallery codes, query codes, products): one dictionary over both splits, "" -> -1."""
    both = pa.concat_arrays([string_column(gallery_labels), string_column(query_labels)])
    encoded = ak.dictionary_encode(both)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    products = encoded.dictionary
    empty = ak.index_of(products, "")
    if empty >= 0:
        codes = np.where(codes == empty, np.int32(DISTRACTOR), codes)
    n = len(gallery_labels)
    return codes[:n], codes[n:], products


def inter_columns(
    gallery_ids: pa.Array, gallery_labels: pa.Array, query_ids: pa.Array, query_labels: pa.Array
) -> DatasetColumns:
    gallery_codes, query_codes, products = encode_labels(gallery_labels, query_labels)
    return DatasetColumns(
        gallery_ids=string_column(gallery_ids), gallery_codes=gallery_codes,
        query_ids=string_column(query_ids), query_codes=query_codes, products=products,
    )


def intra_columns(gallery_ids: pa.Array, gallery_labels: pa.Array) -> DatasetColumns:
    """Every labelled gallery image is a query (its own image removed from its results)."""
    gallery_ids = string_column(gallery_ids)
    gallery_codes, _, products = encode_labels(gallery_labels, pa.array([], type=pa.string()))
    positions = np.flatnonzero(gallery_codes >= 0)
    return DatasetColumns(
        gallery_ids=gallery_ids, gallery_codes=gallery_codes,
        query_ids=ak.take(gallery_ids, positions), query_codes=gallery_codes[positions],
        products=products, query_positions=positions,
    )
