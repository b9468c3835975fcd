"""Which shard embeds which image: a pure function of the image id, so every pod of an Indexed
Job (and every later re-run, on any machine or Python version) agrees without talking.

Python's `hash()` is salted per process (PYTHONHASHSEED), so the rule uses SHA-1 of the id's
UTF-8 bytes: the first 8 bytes as a big-endian integer, modulo the shard count.
"""

from __future__ import annotations

import hashlib
from operator import attrgetter
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_image_id = attrgetter("image_id")


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"shard count must be an integer >= 1, got {count!r}")


def shard_of(image_id: str, count: int) -> int:
    """The shard (0 .. count-1) that owns `image_id`."""
    _check_count(count)
    if not isinstance(image_id, str):
        raise TypeError(f"image id must be a str, got {type(image_id).__name__}")
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(
    records: Iterable[T], index: int, count: int, key: Callable[[T], str] = _image_id
) -> list[T]:
    """The records of shard `index` out of `count`, in their original order.

    `key` gives a record's image id (default: its `image_id` attribute, as ImageRecord has).
    With count == 1 every record is returned.
    """
    _check_count(count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"shard index must be an integer in [0, {count}), got {index!r}")
    if count == 1:
        return list(records)
    return [record for record in records if shard_of(key(record), count) == index]
