"""Server settings shared by every gRPC service; each service subclasses with its own env prefix.

Settings are read when a server starts (never at import), from flags first, then environment
variables, then these defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from services.common.errors import ConfigError

# gRPC's 4 MiB default is smaller than a batch of 64 product photos of ~67 KB plus overhead.
DEFAULT_MAX_MESSAGE_MB = 64


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VSBENCH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    max_message_mb: int = Field(DEFAULT_MAX_MESSAGE_MB, ge=1)
    grace_seconds: float = Field(10.0, ge=0, description="drain time for in-flight calls on SIGTERM")
    max_connection_age_s: float | None = Field(
        None, gt=0, description="close client connections after this long so round-robin clients find new replicas"
    )
    metrics_port: int | None = Field(None, description="serve Prometheus metrics on this port")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA")
    auth_token: SecretStr | None = Field(None, description="require 'authorization: Bearer <token>'")
    auth_token_file: Path | None = Field(None, description="read auth_token from this mounted file")

    def resolved_auth_token(self) -> str | None:
        if self.auth_token is not None:
            return self.auth_token.get_secret_value()
        if self.auth_token_file is not None:
            try:
                token = self.auth_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read auth_token_file: {exc}") from None
            if not token:  # an unmounted secret must not silently turn auth off
                raise ConfigError(f"auth_token_file {self.auth_token_file} is empty")
            return token
        return None
