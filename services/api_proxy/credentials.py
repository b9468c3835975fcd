"""Vendor credentials, from environment variables or mounted secret files only, and redaction.

Each provider names the variables its vendor's own SDK reads. A secret file (`--api-key-file`,
e.g. a Kubernetes secret volume) wins over the variables. Every secret an Auth holds is known to
the Redactor, which scrubs it from any text that leaves the proxy (errors, logs, usage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import httpx

from services.common.errors import VsbenchError

log = logging.getLogger(__name__)


class CredentialsError(VsbenchError, RuntimeError):
    """No usable credentials: the message names where they were looked for, never a value."""


@dataclass(frozen=True)
class HttpCall:
    """One vendor request before authentication; `body` is the exact bytes sent."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    def with_headers(self, extra: Mapping[str, str]) -> "HttpCall":
        return replace(self, headers={**self.headers, **extra})


class Auth(Protocol):
    """SEAM: adds credentials to a call (again for every attempt: signatures carry a time)."""

    async def apply(self, call: HttpCall, client: httpx.AsyncClient) -> HttpCall: ...

    def secrets(self) -> Sequence[str]:
        """Every secret value this Auth holds or has fetched, for redaction."""
        ...

    def describe(self) -> str:
        """Where the credentials came from, by name only (recorded in the model info)."""
        ...


def read_secret(names: Sequence[str], environ: Mapping[str, str], secret_file: Path | None) -> tuple[str, str]:
    """(value, source name) from the secret file, else the first variable set."""
    if secret_file is not None:
        try:
            value = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise CredentialsError(f"cannot read secret file {secret_file}: {exc.strerror}") from None
        if not value:
            raise CredentialsError(f"secret file {secret_file} is empty")
        return value, f"file {secret_file}"
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, f"${name}"
    raise CredentialsError(f"no credentials: set one of {', '.join(names)} or pass --api-key-file")


@dataclass
class HeaderKeyAuth:
    """A static key in one header: `Authorization: Bearer <key>` or `x-goog-api-key: <key>`."""

    key: str
    source: str
    header: str = "Authorization"
    scheme: str = "Bearer"

    async def apply(self, call: HttpCall, client: httpx.AsyncClient) -> HttpCall:
        value = f"{self.scheme} {self.key}" if self.scheme else self.key
        return call.with_headers({self.header: value})

    def secrets(self) -> Sequence[str]:
        return [self.key]

    def describe(self) -> str:
        return f"{self.header} from {self.source}"


# --- Google access tokens (Vertex AI) ------------------------------------------------------

GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_VARIABLES = ("GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN")
_DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
_REFRESH_MARGIN_S = 120.0


class TokenSource(Protocol):
    async def fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        """(access token, seconds it stays valid)."""
        ...

    def describe(self) -> str: ...


@dataclass
class StaticToken:
    token: str
    source: str

    async def fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        return self.token, float("inf")

    def describe(self) -> str:
        return f"access token from {self.source}"


@dataclass
class AuthorizedUserToken:
    """ADC written by `gcloud auth application-default login`: a refresh-token grant."""

    info: Mapping[str, str]
    path: Path

    async def fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        response = await client.post(
            self.info.get("token_uri", _DEFAULT_TOKEN_URI),
            data={
                "grant_type": "refresh_token",
                "client_id": self.info["client_id"],
                "client_secret": self.info["client_secret"],
                "refresh_token": self.info["refresh_token"],
            },
        )
        return _token_from(response, "the OAuth token endpoint")

    def describe(self) -> str:
        return f"application default credentials (authorized_user) from {self.path}"


@dataclass
class MetadataServerToken:
    """The GCE / GKE Workload Identity metadata server."""

    host: str

    async def fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        response = await client.get(
            f"http://{self.host}/computeMetadata/v1/instance/service-accounts/default/token",
            headers={"Metadata-Flavor": "Google"},
        )
        return _token_from(response, "the metadata server")

    def describe(self) -> str:
        return f"metadata server {self.host}"


@dataclass
class GoogleAuthLibraryToken:
    """Service-account keys and workload identity federation need JWT signing: google-auth does it."""

    path: Path

    async def fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        try:
            import google.auth
            import google.auth.transport.requests
        except ImportError:
            raise CredentialsError(
                f"{self.path} holds credentials that need the google-auth and requests packages "
                "(pip install google-auth requests), or set GOOGLE_OAUTH_ACCESS_TOKEN"
            ) from None

        def refresh() -> tuple[str, float]:
            credentials, _ = google.auth.load_credentials_from_file(str(self.path), scopes=[GOOGLE_SCOPE])
            credentials.refresh(google.auth.transport.requests.Request())
            expiry = getattr(credentials, "expiry", None)
            left = (expiry.timestamp() - time.time()) if expiry else 3600.0
            return credentials.token, left

        return await asyncio.to_thread(refresh)

    def describe(self) -> str:
        return f"application default credentials from {self.path} via google-auth"


def _token_from(response: httpx.Response, where: str) -> tuple[str, float]:
    if response.status_code != 200:
        raise CredentialsError(f"{where} refused a token (HTTP {response.status_code})")
    try:
        payload = response.json()
        return payload["access_token"], float(payload.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"{where} sent an unreadable token answer") from None


def _on_google_hardware() -> bool:
    try:
        return "Google" in Path("/sys/class/dmi/id/product_name").read_text()
    except OSError:
        return False


def google_token_source(environ: Mapping[str, str], secret_file: Path | None) -> TokenSource:
    """The first of: secret file, token variables, ADC file, metadata server (only on Google hosts)."""
    if secret_file is not None:
        value, source = read_secret((), environ, secret_file)
        return StaticToken(value, source)
    for name in GOOGLE_TOKEN_VARIABLES:
        if environ.get(name, "").strip():
            return StaticToken(environ[name].strip(), f"${name}")
    adc = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    path = Path(adc) if adc else Path(
        environ.get("CLOUDSDK_CONFIG", Path(environ.get("HOME", "~")).expanduser() / ".config" / "gcloud")
    ) / "application_default_credentials.json"
    if adc or path.is_file():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read application default credentials {path}: {exc}") from None
        if info.get("type") == "authorized_user":
            return AuthorizedUserToken(info, path)
        return GoogleAuthLibraryToken(path)
    # Only probe the metadata server where one exists: elsewhere the lookup would leak traffic.
    host = environ.get("GCE_METADATA_HOST")
    if host or _on_google_hardware():
        return MetadataServerToken(host or "metadata.google.internal")
    raise CredentialsError(
        "no Google credentials: set GOOGLE_OAUTH_ACCESS_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, "
        "pass --api-key-file with an access token, or run on Google Cloud"
    )


@dataclass
class GoogleBearerAuth:
    source: TokenSource
    _token: str | None = None
    _expires_at: float = 0.0
    _seen: list[str] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def apply(self, call: HttpCall, client: httpx.AsyncClient) -> HttpCall:
        if self._token is None or time.monotonic() > self._expires_at - _REFRESH_MARGIN_S:
            async with self._lock:
                if self._token is None or time.monotonic() > self._expires_at - _REFRESH_MARGIN_S:
                    token, valid_s = await self.source.fetch(client)
                    self._token, self._expires_at = token, time.monotonic() + valid_s
                    self._seen.append(token)
        return call.with_headers({"Authorization": f"Bearer {self._token}"})

    def secrets(self) -> Sequence[str]:
        secrets = list(self._seen)
        for attribute in ("token",):
            value = getattr(self.source, attribute, None)
            if value:
                secrets.append(value)
        info = getattr(self.source, "info", None)
        if info:
            secrets += [info.get("client_secret", ""), info.get("refresh_token", "")]
        return [s for s in secrets if s]

    def describe(self) -> str:
        return self.source.describe()


# --- AWS SigV4 (Bedrock) -------------------------------------------------------------------


class AwsSigV4Auth:
    """Signs each attempt with botocore's SigV4 over the standard AWS credential chain
    (environment, shared files, SSO, container and instance roles)."""

    def __init__(self, service: str, region: str) -> None:
        try:
            import botocore.session
        except ImportError:
            raise CredentialsError("Bedrock needs botocore: pip install 'vsbench[proxy]'") from None
        self._service = service
        self.region = region
        self._credentials = botocore.session.Session().get_credentials()
        if self._credentials is None:
            raise CredentialsError(
                "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use a role"
            )
        self._method = getattr(self._credentials, "method", "unknown")
        self._seen: list[str] = []

    async def apply(self, call: HttpCall, client: httpx.AsyncClient) -> HttpCall:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        # Refreshable credentials (roles, SSO) may do I/O when they are near expiry.
        frozen = await asyncio.to_thread(self._credentials.get_frozen_credentials)
        for secret in (frozen.secret_key, frozen.token):
            if secret and secret not in self._seen:
                self._seen.append(secret)
        request = AWSRequest(method=call.method, url=call.url, data=call.body, headers=dict(call.headers))
        SigV4Auth(frozen, self._service, self.region).add_auth(request)
        return HttpCall(call.method, call.url, dict(request.headers.items()), call.body)

    def secrets(self) -> Sequence[str]:
        return list(self._seen)

    def describe(self) -> str:
        return f"AWS SigV4 ({self._service}, {self.region}) with credentials from {self._method}"


# --- redaction -----------------------------------------------------------------------------

_REDACTED = "[REDACTED]"
# Shapes of credentials a vendor might echo even when we do not know the value.
_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|token|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"\bya29\.[0-9A-Za-z._-]{10,}"),
)


class Redactor:
    """Scrubs known secrets (and credential-shaped strings) from text."""

    def __init__(self) -> None:
        self._static: list[str] = []
        self._dynamic: list = []

    def add(self, *secrets: str | None) -> None:
        self._static += [s for s in secrets if s]

    def add_source(self, source) -> None:
        """Something with secrets(): asked every time, since tokens rotate."""
        self._dynamic.append(source)

    def secrets(self) -> list[str]:
        values = list(self._static)
        for source in self._dynamic:
            values += list(source.secrets())
        # Longest first, so a secret containing another is replaced whole.
        return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, _REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _REDACTED, text)
        return text


class RedactingFilter(logging.Filter):
    """Rewrites each log record through the Redactor before any handler formats it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor(record.exc_text)
        record.msg, record.args = self._redactor(message), None
        return True
