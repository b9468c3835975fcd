"""Embedder server settings: flags first, then VSBENCH_EMBEDDER_* environment variables, then these
defaults (read when the server starts, never at import)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings
from services.common.images import DEFAULT_MAX_ASPECT_RATIO
from services.embedder.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DecodeLimits


class EmbedderSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="VSBENCH_EMBEDDER_", extra="ignore")

    model: str = Field("efficientnet-lite0", description="registry name (python -m services.embedder --list)")
    weights: str | None = Field(None, description="local weights path or hub id overriding the spec's")
    kind: str | None = Field(
        None, description="serve a model defined by kind + options instead of a registered one (--list-kinds)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object: the kind's options (with kind), or overrides of the registered model's",
    )
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    threads: int | None = Field(
        None, ge=1, description="intra-op threads for the model library (default: its own)"
    )
    max_batch: int = Field(32, ge=1, description="items per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a partial batch waits for more items")
    decode_workers: int = Field(2, ge=1, description="threads decoding and preprocessing images")
    max_queue: int = Field(512, ge=1, description="items admitted at once; beyond: RESOURCE_EXHAUSTED")
    max_request_items: int = Field(256, ge=1, description="largest request accepted (ModelInfo.max_batch)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decoded size limit per image")
    max_image_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="encoded size limit per image")
    max_aspect_ratio: float = Field(
        DEFAULT_MAX_ASPECT_RATIO, ge=1, description="longer side / shorter side limit per image"
    )
    warmup: bool = Field(True, description="run one dummy batch before reporting ready")
    backend: Literal["local", "triton"] = Field(
        "local", description="local: run the model here; triton: preprocess here, forward on Triton"
    )
    triton_url: str | None = Field(None, description="host:port of Triton's gRPC endpoint (backend triton)")
    triton_model: str | None = Field(None, description="model name in the Triton repository (default: model)")
    triton_timeout_s: float = Field(30.0, gt=0, description="per-request timeout to Triton, seconds")

    @model_validator(mode="after")
    def _triton_needs_url(self) -> "EmbedderSettings":
        if self.backend == "triton" and not self.triton_url:
            raise ValueError("backend 'triton' needs triton_url (--triton-url HOST:PORT)")
        return self

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_pixels=self.max_pixels, max_bytes=self.max_image_bytes, max_aspect_ratio=self.max_aspect_ratio
        )
