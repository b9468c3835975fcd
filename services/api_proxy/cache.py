"""Content-addressed embedding cache on disk: a rerun, or another dataset holding the same image,
never pays the vendor twice.

Key: (provider, model, dimension, input role as sent, sha256 of the exact bytes sent). One file
per vector, raw little-endian float32, written atomically (temp file + rename), so several
processes may share a directory. A file that does not pass the same check as a vendor answer
(services/api_proxy/vectors.py: `dim` finite values, a usable norm) is a miss and gets replaced.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from services.api_proxy.vectors import check_vector

_DTYPE = np.dtype("<f4")
_SAFE = re.compile(r"[^A-Za-z0-9._@-]+")


class EmbeddingCache:
    def __init__(self, root: Path, provider: str, model: str, dim: int, role: str = "") -> None:
        """`role`: the vendor role field and value sent ("input_type=search_query"), "" if none."""
        self.dim = dim
        self._model_directory = Path(root) / _SAFE.sub("_", provider) / _SAFE.sub("_", model) / str(dim)
        self.directory = self._model_directory
        if role:  # without a role field the layout is the one caches had before roles existed
            self.directory /= _SAFE.sub("_", role)

    def with_role(self, role: str) -> "EmbeddingCache":
        """The same model's cache for another role as sent ("input_type=search_query")."""
        other = EmbeddingCache.__new__(EmbeddingCache)
        other.dim, other._model_directory = self.dim, self._model_directory
        other.directory = self._model_directory / _SAFE.sub("_", role) if role else self._model_directory
        return other

    def _path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("cache keys are sha256 hex digests")
        return self.directory / sha256[:2] / f"{sha256}.f32"

    def get(self, sha256: str) -> np.ndarray | None:
        try:
            raw = self._path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != self.dim * _DTYPE.itemsize:
            return None
        checked = check_vector(np.frombuffer(raw, dtype=_DTYPE), self.dim, "cache")
        return checked if isinstance(checked, np.ndarray) else None

    def put(self, sha256: str, vector: np.ndarray) -> None:
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.ascontiguousarray(vector, dtype=_DTYPE).tobytes()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
