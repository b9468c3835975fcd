"""SEAM: a Provider speaks one vendor's wire format.

It builds the HTTP call for a batch of prepared images, parses the answer into raw vectors (the
model checks count, size and finiteness, the same for every vendor), extracts error messages,
and declares as data what it accepts: models, dimensions, batch size, image limits, rate limits,
price. Adding a vendor = one module with a subclass + one line in registry.py.
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import httpx

from services.common.errors import ConfigError
from services.api_proxy.credentials import Auth, HeaderKeyAuth, HttpCall, read_secret
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.usage import Price

# Retried besides 429 unless a provider says otherwise.
DEFAULT_RETRY_STATUSES = frozenset({500, 502, 503, 504})

# What an image is embedded as: a gallery item ("document"), a query, or with no role field at all.
INPUT_ROLES = ("document", "query", "none")


class MalformedResponse(Exception):
    """A 200 answer that cannot be read as the vendor's documented shape."""


@dataclass(frozen=True, slots=True)
class RateDefaults:
    """Published limits (see docs/providers.md for the source of each number)."""

    requests_per_minute: float | None
    images_per_minute: float | None
    concurrency: int


@dataclass(frozen=True)
class VendorModel:
    name: str
    dims: tuple[int, ...]
    default_dim: int
    max_batch: int
    images: ImageLimits
    limits: RateDefaults
    price: Price | None = None
    # Dimensions at which the vendor returns unit-length vectors.
    normalized_dims: frozenset[int] = frozenset()
    # Any dim in this closed range is accepted besides `dims` (Matryoshka-style vendors).
    dim_range: tuple[int, int] | None = None
    vendor_preprocessing: str = ""

    def check_dim(self, dim: int) -> int:
        if dim in self.dims or (self.dim_range and self.dim_range[0] <= dim <= self.dim_range[1]):
            return dim
        allowed = ", ".join(map(str, self.dims))
        if self.dim_range:
            allowed += f" or {self.dim_range[0]}..{self.dim_range[1]}"
        raise ConfigError(f"{self.name} does not offer dimension {dim} (allowed: {allowed})")


@dataclass(frozen=True)
class Parsed:
    vectors: list[Sequence[float]]
    billed: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderContext:
    """What a provider may read to configure itself; never read at import time."""

    model: str
    dimension: int | None
    base_url: str | None
    environ: Mapping[str, str]
    secret_file: Path | None = None
    options: Mapping[str, str | None] = field(default_factory=dict)
    # One of INPUT_ROLES; None = the provider's default_role.
    role: str | None = None


class Provider(ABC):
    name: ClassVar[str]
    default_base_url: ClassVar[str]
    models: ClassVar[Mapping[str, VendorModel]]
    # Vendor SDK variable names, in the order their SDKs look them up.
    key_variables: ClassVar[tuple[str, ...]] = ()
    retry_statuses: ClassVar[frozenset[int]] = DEFAULT_RETRY_STATUSES
    # The vendor API and method called: part of the fingerprint (another API = other vectors).
    api_version: ClassVar[str]
    # The request field that carries the input role, and its value per role in INPUT_ROLES
    # (None = the field is left out). A role missing here is refused at start.
    role_field: ClassVar[str] = ""
    role_values: ClassVar[Mapping[str, str | None]] = {"none": None}
    default_role: ClassVar[str] = "none"

    def __init__(self, spec: VendorModel, dim: int, base_url: str, auth: Auth, role: str | None = None) -> None:
        self.spec = spec
        self.dim = spec.check_dim(dim)
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.role = self.check_role(role or self.default_role)

    @classmethod
    def check_role(cls, role: str) -> str:
        if role not in cls.role_values:
            offered = ", ".join(cls.role_values)
            where = f" (sent as {cls.role_field})" if cls.role_field else " (it has no role field)"
            raise ConfigError(f"{cls.name} offers input roles {offered}{where}, not {role!r}")
        return role

    @property
    def role_value(self) -> str | None:
        """What the vendor's role field carries for this process's role; None = not sent."""
        return self.role_values[self.role]

    def resolve_role(self, requested: str | None) -> str:
        """The role one request is embedded with: the one it asked for ("document" / "query"),
        or this process's role when it asked for none. A vendor without role fields (only "none"
        offered) embeds every request the same way; a vendor without the asked role refuses."""
        if requested is None:
            return self.role
        if requested in self.role_values:
            return requested
        if set(self.role_values) == {"none"}:
            return "none"
        raise ValueError(f"{self.name} offers input roles {', '.join(self.role_values)}, not {requested!r}")

    def value_for(self, role: str | None) -> str | None:
        """The role field's value for a request's role (see resolve_role); None = not sent."""
        return self.role_values[self.resolve_role(role)]

    def role_mapping(self) -> dict[str, str | None]:
        """For the fingerprint and Info: what each request role is sent as."""
        return {role: self.value_for(role) for role in ("document", "query") if self._offers(role)}

    def _offers(self, role: str) -> bool:
        return role in self.role_values or set(self.role_values) == {"none"}

    def describe_role(self) -> str:
        value = self.role_value
        if value is None:
            return f"input role {self.role}: no role field sent"
        return f"input role {self.role}: {self.role_field}={value}"

    @classmethod
    def spec_for(cls, model: str) -> VendorModel:
        try:
            return cls.models[model]
        except KeyError:
            raise ConfigError(
                f"{cls.name} has no model {model!r} (known: {', '.join(cls.models)})"
            ) from None

    @classmethod
    def create(cls, ctx: ProviderContext) -> "Provider":
        """Default wiring: bearer API key from the vendor's variables or the secret file."""
        spec = cls.spec_for(ctx.model)
        key, source = read_secret(cls.key_variables, ctx.environ, ctx.secret_file)
        return cls(spec, ctx.dimension or spec.default_dim, ctx.base_url or cls.default_base_url,
                   cls.make_key_auth(key, source), ctx.role)

    @classmethod
    def make_key_auth(cls, key: str, source: str) -> Auth:
        return HeaderKeyAuth(key, source)

    @property
    def normalized(self) -> bool:
        return self.dim in self.spec.normalized_dims

    def max_batch(self) -> int:
        return self.spec.max_batch

    @abstractmethod
    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        """The unauthenticated call embedding `images`, one vector each, in order, with the
        request's input role (None = this process's role; see resolve_role)."""

    @abstractmethod
    def parse(self, payload: Any, count: int) -> Parsed:
        """Vectors in request order from a decoded 200 body; MalformedResponse if the shape is wrong."""

    def error_message(self, response: httpx.Response) -> str:
        """The vendor's own words from an error body (redacted by the caller)."""
        try:
            payload = response.json()
        except ValueError:
            return response.text.strip()[:300]
        return _find_message(payload) or json.dumps(payload)[:300]

    def retry_after_hint(self, response: httpx.Response) -> float | None:
        """A retry delay carried in the body when the vendor sends no Retry-After header."""
        return None

    def endpoint(self) -> str:
        """Where calls go, for the model info (no credentials are ever in URLs)."""
        return self.base_url

    def json_call(self, url: str, body: Any, headers: Mapping[str, str] | None = None) -> HttpCall:
        return HttpCall(
            "POST", url,
            {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
            json.dumps(body, separators=(",", ":")).encode(),
        )


def b64(image: PreparedImage) -> str:
    return base64.b64encode(image.data).decode("ascii")


def data_uri(image: PreparedImage) -> str:
    return f"data:{image.mime};base64,{b64(image)}"


def _find_message(payload: Any) -> str:
    """The first human message in common error shapes: {"message"}, {"error": {"message"}}, {"detail"}."""
    if isinstance(payload, dict):
        for key in ("message", "Message", "detail", "error_message"):
            if isinstance(payload.get(key), str):
                return payload[key]
        error = payload.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            return _find_message(error)
    return ""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise MalformedResponse(message)


def vectors_by_index(items: Any, count: int, field_name: str = "embedding") -> list[Sequence[float]]:
    """OpenAI-style `data: [{index, embedding}]`, reordered by index when one is given."""
    require(isinstance(items, list), "'data' is not a list")
    if all(isinstance(item, dict) and isinstance(item.get("index"), int) for item in items):
        indices = [item["index"] for item in items]
        require(sorted(indices) == list(range(len(items))), f"indices {indices[:10]} are not 0..{len(items) - 1}")
        items = sorted(items, key=lambda item: item["index"])
    vectors = []
    for item in items:
        require(isinstance(item, dict) and isinstance(item.get(field_name), list), f"an item has no '{field_name}' list")
        vectors.append(item[field_name])
    return vectors
