"""Random access to images inside webdataset tar shards (without the webdataset library).

A webdataset sample is the group of members sharing a key: the member path up to the first dot
of its file name (``000123.jpg`` + ``000123.json`` -> key ``000123``). A shard is indexed once
(key -> offset and size of the image member) by reading its headers; an image is then one seek
and one read, so shards are never unpacked.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from .base import DatasetError

# The first one present wins when a sample holds several image members.
IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_member_name(member: str) -> tuple[str, str]:
    """(key, extension) by the webdataset convention: split at the first dot of the file name."""
    path = PurePosixPath(member)
    stem, dot, extension = path.name.partition(".")
    parent = path.parent.as_posix()
    key = stem if parent == "." else f"{parent}/{stem}"
    return key, extension.lower() if dot else ""


ShardIndex = dict[str, tuple[int, int]]


def index_shard(shard: Path) -> ShardIndex:
    """key -> (data offset, size) of each sample's image member."""
    found: dict[str, tuple[int, int, int]] = {}
    try:
        with tarfile.open(shard, mode="r:") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # tarfile keeps every header otherwise: 100k per shard
                if not member.isreg():
                    continue
                key, extension = split_member_name(member.name)
                if extension not in IMAGE_MEMBER_EXTENSIONS:
                    continue
                rank = IMAGE_MEMBER_EXTENSIONS.index(extension)
                if key not in found or rank < found[key][2]:
                    found[key] = (member.offset_data, member.size, rank)
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{shard}: not a readable tar shard ({exc})") from None
    return {key: (offset, size) for key, (offset, size, _) in found.items()}


class TarShardReader:
    """Reads sample images from shards; keeps the indexes of the last few shards used.
    Safe to share between threads (each read opens its own file handle)."""

    def __init__(self, cached_shards: int = 4) -> None:
        self._cached_shards = cached_shards
        self._indexes: OrderedDict[Path, ShardIndex] = OrderedDict()
        self._lock = threading.Lock()

    def index(self, shard: Path) -> ShardIndex:
        with self._lock:
            if shard in self._indexes:
                self._indexes.move_to_end(shard)
                return self._indexes[shard]
            built = index_shard(shard)
            self._indexes[shard] = built
            while len(self._indexes) > self._cached_shards:
                self._indexes.popitem(last=False)
            return built

    def has(self, shard: Path, key: str) -> bool:
        return shard.is_file() and key in self.index(shard)

    def read(self, shard: Path, key: str) -> bytes:
        if not shard.is_file():
            raise FileNotFoundError(f"{shard}: shard not found")
        entry = self.index(shard).get(key)
        if entry is None:
            raise FileNotFoundError(f"{shard}: no image member for key {key!r}")
        offset, size = entry
        with open(shard, "rb") as handle:
            data = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise DatasetError(f"{shard}: truncated member for key {key!r}")
        return data
