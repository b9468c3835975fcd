"""Wiring for proxy tests: a fake vendor plus a ProxyModel pointed at it, with test-sized settings."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Mapping

from services.api_proxy.model import ProxyModel
from services.api_proxy.settings import ProxySettings
from tests.fakes.vendors import VENDORS, FakeVendorServer, Vendor

PROVIDER_NAMES = ("cohere", "vertex", "gemini", "voyage", "jina", "titan")
DEFAULT_DIMS = {"cohere": 1536, "vertex": 1408, "gemini": 3072, "voyage": 1024, "jina": 2048, "titan": 1024}
# A non-default size each vendor offers, to prove the chosen dimension travels.
OTHER_DIMS = {"cohere": 256, "vertex": 128, "gemini": 768, "voyage": 512, "jina": 128, "titan": 256}
# Backoffs and timeouts sized for tests: real values would make a fault test sleep for minutes.
FAST = dict(backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=2.0, max_attempts=4)


def vendor_environ(vendor: Vendor) -> dict[str, str]:
    """The variables each vendor's SDK would read, set to the fake's credentials."""
    by_vendor: dict[str, dict[str, str]] = {
        "cohere": {"CO_API_KEY": vendor.key},
        "vertex": {"GOOGLE_OAUTH_ACCESS_TOKEN": vendor.key, "GOOGLE_CLOUD_PROJECT": getattr(vendor, "project", ""),
                   "GOOGLE_CLOUD_LOCATION": getattr(vendor, "location", "")},
        "gemini": {"GEMINI_API_KEY": vendor.key},
        "voyage": {"VOYAGE_API_KEY": vendor.key},
        "jina": {"JINA_API_KEY": vendor.key},
        "titan": {"AWS_ACCESS_KEY_ID": vendor.key, "AWS_SECRET_ACCESS_KEY": getattr(vendor, "secret", ""),
                  "AWS_REGION": getattr(vendor, "region", "us-east-1")},
    }
    return by_vendor[vendor.name]


# Variables that would make a test depend on the machine it runs on.
HERMETIC_UNSET = (
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_AUTH_ACCESS_TOKEN", "GCE_METADATA_HOST", "COHERE_API_KEY", "GOOGLE_API_KEY",
)
HERMETIC_SET = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def apply_environ(monkeypatch, environ: Mapping[str, str]) -> None:
    for name in HERMETIC_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**HERMETIC_SET, **environ}.items():
        monkeypatch.setenv(name, value)


def make_vendor(name: str, dim: int | None = None, **kwargs) -> Vendor:
    return VENDORS[name](dim or DEFAULT_DIMS[name], **kwargs)


def proxy_settings(name: str, fake: FakeVendorServer, **overrides) -> ProxySettings:
    values = dict(
        provider=name, base_url=fake.url, dimension=fake.vendor.dim, no_cache=True, rpm=0, ipm=0,
        concurrency=8, **FAST,
    )
    values.update(overrides)
    return ProxySettings(**values)


@contextlib.asynccontextmanager
async def proxied(
    name: str, monkeypatch, *, dim: int | None = None, vendor: Vendor | None = None,
    server: Mapping | None = None, **overrides,
) -> AsyncIterator[tuple[FakeVendorServer, ProxyModel]]:
    """A started fake for `name` and a ProxyModel in front of it."""
    vendor = vendor or make_vendor(name, dim)
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor, **(server or {})) as fake:
        async with ProxyModel.from_settings(proxy_settings(name, fake, **overrides)) as model:
            yield fake, model
