"""Settings of the search service: flags first, then VSBENCH_SEARCH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.errors import ConfigError
from services.common.settings import ServerSettings


class SearchSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="VSBENCH_SEARCH_", extra="ignore")

    port: int = Field(50061, ge=0, le=65535, description="0 picks a free port")
    collection: str = Field(..., description="the catalog collection to serve")
    store: Path | None = Field(None, description="Qdrant Edge folder (one box)")
    qdrant_url: str | None = Field(None, description="Qdrant server URL (compose, k8s)")
    embedder: str = Field(..., description="host:port of the embedder or api_proxy serving the indexed model")
    embedder_tls: bool = False
    embedder_auth_token_file: Path | None = Field(None, description="bearer token for the embedder")
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    ef: int | None = Field(None, ge=1, description="HNSW search candidates (None: Qdrant's default)")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    workers: int = Field(32, ge=1, description="queries answered at once (threads)")
    embed_retries: int = Field(8, ge=0, description="stream restarts per query before UNAVAILABLE")
    embed_backoff_s: float = Field(0.25, gt=0)
    embed_max_backoff_s: float = Field(2.0, gt=0)
    embed_timeout_s: float = Field(30.0, gt=0, description="a query's embedding call that answers nothing for this long is retried")
    qdrant_retries: int = Field(4, ge=0)
    model_check_s: float = Field(
        30.0, gt=0, description="ask the embedder this often which model it serves (a restart may bring another)")

    @model_validator(mode="after")
    def _one_backend(self) -> "SearchSettings":
        if (self.store is None) == (self.qdrant_url is None):
            raise ConfigError("give exactly one of --store (Qdrant Edge) and --qdrant-url")
        if self.default_k > self.max_k:
            raise ConfigError(f"default_k {self.default_k} is over max_k {self.max_k}")
        return self

    def embedder_token(self) -> str | None:
        if self.embedder_auth_token_file is None:
            return None
        try:
            token = self.embedder_auth_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read embedder_auth_token_file: {exc}") from None
        if not token:
            raise ConfigError(f"embedder_auth_token_file {self.embedder_auth_token_file} is empty")
        return token
