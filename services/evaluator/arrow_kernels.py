"""The Arrow compute kernels the scoring path uses on id and label columns, called by name.

`import pyarrow.compute` generates a Python wrapper, docstring included, for each of Arrow's ~290
kernels: ~20 ms of every `vsbench score`, whose whole fixed cost is ~0.3 s (docs/performance.md).
The kernels live in the extension module it wraps; its `call_function` is the documented
`pyarrow.compute.call_function`, the same object. And `pa.array()` on a numpy array imports
numpy.ma to look for a mask, so integer positions go in as a buffer instead; and a string scalar
is made with its type, as inferring one probes for pandas.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

try:
    from pyarrow._compute import ArraySortOptions, IndexOptions, SetLookupOptions, call_function
except ImportError:  # a pyarrow that moved them: the public module re-exports the same objects
    from pyarrow.compute import ArraySortOptions, IndexOptions, SetLookupOptions, call_function

__all__ = [
    "all_true", "any_true", "count_true", "dictionary_encode", "equal", "filter_rows", "index_of",
    "is_in", "positions", "sorted_repeats", "stable_sort_indices", "take",
]


def positions(values: np.ndarray) -> pa.Array:
    """int64 Arrow array over a numpy array of row positions (no copy when already int64)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def take(array: pa.Array, rows: np.ndarray | pa.Array) -> pa.Array:
    """array[rows] for numpy or Arrow row positions."""
    return call_function("take", [array, rows if isinstance(rows, pa.Array) else positions(rows)])


def equal(array: pa.Array, other: pa.Array | str) -> pa.Array:
    """Elementwise ==, against another array of the same length or one value."""
    return call_function("equal", [array, other if isinstance(other, pa.Array) else _scalar(other)])


def any_true(mask: pa.Array) -> bool:
    return bool(call_function("any", [mask]).as_py())


def all_true(mask: pa.Array) -> bool:
    return bool(call_function("all", [mask]).as_py())


def count_true(mask: pa.Array) -> int:
    return int(call_function("sum", [mask]).as_py() or 0)


def is_in(array: pa.Array, value_set: pa.Array) -> pa.Array:
    """Per element: is it one of value_set's (a hash set of value_set)."""
    return call_function("is_in", [array], SetLookupOptions(value_set))


def filter_rows(array: pa.Array, mask: pa.Array | np.ndarray) -> pa.Array:
    mask = mask if isinstance(mask, pa.Array) else pa.array(mask, pa.bool_())
    return call_function("filter", [array, mask])


def dictionary_encode(array: pa.Array) -> pa.DictionaryArray:
    """Codes into a dictionary of the distinct values, in order of first appearance."""
    return call_function("dictionary_encode", [array])


def index_of(array: pa.Array, value: str) -> int:
    """Position of the first element equal to value, -1 if none."""
    return int(call_function("index", [array], IndexOptions(_scalar(value))).as_py())


def _scalar(value: str) -> pa.Scalar:
    # typed: inferring the type of a Python value probes for pandas (and imports dateutil)
    return pa.scalar(value, pa.string())


def stable_sort_indices(array: pa.Array) -> pa.Array:
    """Positions that sort the array ascending; equal values keep their row order."""
    return call_function("array_sort_indices", [array], ArraySortOptions())


def sorted_repeats(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(order, repeats) for an array of at least 2 values: the positions that sort it stably
    (equal values keep their row order), and per sorted position but the last whether the next
    one holds the same value. A stable sort, not a hash set: at 5M ids Arrow's hash-based distinct
    count took 6.6 s and kept 1.3 GiB, the sort 0.6 s and a copy of the ids (bench/scale.py --via-cli)."""
    order = stable_sort_indices(array)
    ranked = take(array, order)
    repeats = equal(ranked.slice(0, len(array) - 1), ranked.slice(1))
    return order.to_numpy(), repeats.to_numpy(zero_copy_only=False)
