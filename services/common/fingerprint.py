"""Model fingerprints: one hash over everything that changes a model's vectors.

Two servers that give the same fingerprint give the same vectors for the same image bytes (up to
float nondeterminism); anything else gets a new fingerprint. Stores record the fingerprint of the
vectors they hold, so a run never mixes vectors of two models served under one name.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

PREFIX = "sha256:"
_CHUNK = 1 << 20


def fingerprint(parts: Mapping[str, Any]) -> str:
    """"sha256:<hex>" of `parts` as canonical JSON (sorted keys, no whitespace). Values must be
    JSON data: file hashes (`file_sha256`), preprocessing records, pooling, dtype, versions."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, remembered per (path, size, mtime) for this process so that a
    multi-GB weights file is read once however often a backend is loaded."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _cached_file_sha256(str(resolved), stat.st_size, stat.st_mtime_ns)


def tree_sha256(root: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """{relative path: sha256} for the files under a folder (a HF checkpoint), optionally only
    those whose name ends with one of `suffixes`."""
    root = Path(root)
    if root.is_file():
        return {root.name: file_sha256(root)}
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if suffixes is None or path.name.endswith(suffixes):
            found[path.relative_to(root).as_posix()] = file_sha256(path)
    return found


def short(fp: str, length: int = 12) -> str:
    """A fingerprint shortened for messages: "sha256:0123456789ab"."""
    return fp[: len(PREFIX) + length] if fp.startswith(PREFIX) else fp[:length]


@lru_cache(maxsize=256)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
