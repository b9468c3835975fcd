"""Settings of one api_proxy process: flags first, then `VSBENCH_PROXY_*` variables, then defaults.

The vendor base URL also reads `VSBENCH_<PROVIDER>_BASE_URL` (e.g. VSBENCH_COHERE_BASE_URL), so
one environment can point every provider at its gateway. Vendor credentials are never settings:
they come from the vendors' own variables or `api_key_file` (see credentials.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "vsbench" / "api_proxy"


class ProxySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="VSBENCH_PROXY_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="0 picks a free port")
    provider: str = Field("cohere", description="one of services.api_proxy.providers.registry.PROVIDERS")
    model: str | None = Field(None, description="vendor model id; default: the provider's first model")
    dimension: int | None = Field(None, ge=1, description="output dimension; default: the model's default")
    input_role: Literal["document", "query", "none"] | None = Field(
        None, description="embed images as gallery documents or as queries (the vendor's role field); "
        "default: the provider's (see docs/providers.md)",
    )

    # Limits: None = the provider's published default, 0 = unlimited.
    rpm: float | None = Field(None, ge=0, description="requests per minute")
    ipm: float | None = Field(None, ge=0, description="images per minute")
    concurrency: int | None = Field(None, ge=0, description="requests in flight")
    burst_seconds: float = Field(1.0, gt=0, lt=60, description="burst size, in seconds of the per-minute limit")
    jitter_s: float = Field(0.5, ge=0, description="arrival jitter the limits leave room for at the vendor")
    max_batch: int | None = Field(None, ge=1, description="images per vendor request (at most the vendor's)")

    base_url: str | None = None
    api_key_file: Path | None = Field(None, description="mounted secret holding the vendor key or token")
    project: str | None = Field(None, description="Vertex: Google Cloud project")
    location: str | None = Field(None, description="Vertex: region, e.g. us-central1")
    region: str | None = Field(None, description="Bedrock: AWS region")

    cache_dir: Path | None = None
    no_cache: bool = False
    price_table: Path | None = Field(None, description="JSON/YAML price overrides")

    timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_retry_after_s: float = Field(300.0, ge=0)
    max_request_items: int = Field(256, ge=1, description="items one gRPC Embed request may carry")
    max_pending_images: int = Field(4096, ge=1, description="more waiting images than this -> RESOURCE_EXHAUSTED")
    max_input_pixels: int = Field(64_000_000, ge=1, description="refuse larger images (decompression bombs)")

    def resolved_base_url(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The flag/VSBENCH_PROXY_BASE_URL, else VSBENCH_<PROVIDER>_BASE_URL, else None (vendor's)."""
        if self.base_url:
            return self.base_url
        environ = os.environ if environ is None else environ
        return environ.get(f"VSBENCH_{self.provider.upper()}_BASE_URL") or None

    def resolved_cache_dir(self, environ: Mapping[str, str] | None = None) -> Path | None:
        if self.no_cache:
            return None
        return self.cache_dir or default_cache_dir(environ)
