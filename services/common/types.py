"""Plain data types shared by every service; protobuf never leaks past services/common/wire.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


class ErrorCode(enum.IntEnum):
    """Per-item failure kinds; values equal proto `vsbench.v1.ErrorCode`."""

    UNSPECIFIED = 0
    INVALID_IMAGE = 1
    IMAGE_TOO_LARGE = 2
    UPSTREAM_ERROR = 3
    INVALID_OUTPUT = 4
    INTERNAL = 5


class InputRole(str, enum.Enum):
    """What a request's images are (proto `vsbench.v1.InputRole`): catalogue images or queries.
    Only vendors that embed the two differently act on it."""

    DOCUMENT = "document"
    QUERY = "query"


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One encoded image on its way to a model. `data` is the file's bytes, never decoded pixels."""

    id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ItemError:
    code: ErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


@dataclass(frozen=True, slots=True)
class Embedding:
    """The outcome for one item: exactly one of `vector` (1-D float32) and `error` is set."""

    id: str
    vector: np.ndarray | None = None
    error: ItemError | None = None

    def __post_init__(self) -> None:
        if (self.vector is None) == (self.error is None):
            raise ValueError(f"Embedding {self.id!r} needs exactly one of vector and error")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, item_id: str, code: ErrorCode, message: str) -> "Embedding":
        return cls(id=item_id, error=ItemError(code, message))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a server says about its model; copied into every result file."""

    name: str
    dim: int
    preprocessing: str
    normalized: bool
    revision: str
    max_batch: int
    backend: str
    dtype: str = "float32"
    details: Mapping[str, str] = field(default_factory=dict)
    # "sha256:<hex>" over whatever changes the vectors (see proto ModelInfo.fingerprint); "" = unknown.
    fingerprint: str = ""

    def to_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "name": self.name,
            "dim": self.dim,
            "dtype": self.dtype,
            "preprocessing": self.preprocessing,
            "normalized": self.normalized,
            "revision": self.revision,
            "max_batch": self.max_batch,
            "backend": self.backend,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelInfo":
        return cls(
            name=data["name"],
            dim=int(data["dim"]),
            preprocessing=data.get("preprocessing", ""),
            normalized=bool(data.get("normalized", False)),
            revision=data.get("revision", ""),
            max_batch=int(data.get("max_batch", 0)),
            backend=data.get("backend", ""),
            dtype=data.get("dtype", "float32"),
            details=dict(data.get("details", {})),
            fingerprint=data.get("fingerprint", ""),
        )


@dataclass(slots=True)
class CallUsage:
    """What answering some requests cost (proto `Usage`); added up per run by the evaluator.
    `cost_usd` is None while any part of it had no known price."""

    billed_images: int = 0
    cached_images: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    cost_usd: float | None = 0.0
    # How many server answers carried usage: 0 means the service reports none (an embedder).
    reported: int = 0

    def add(self, other: "CallUsage") -> None:
        self.reported += max(1, other.reported)
        self.billed_images += other.billed_images
        self.cached_images += other.cached_images
        self.requests += other.requests
        self.retries += other.retries
        self.rate_limited += other.rate_limited
        if self.cost_usd is None or other.cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += other.cost_usd

    def to_dict(self) -> dict:
        return {
            "billed_images": self.billed_images,
            "cached_images": self.cached_images,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
        }
