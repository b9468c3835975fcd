"""Provider name -> class. Provider modules import nothing heavy (botocore loads on use)."""

from __future__ import annotations

from services.common.errors import ConfigError
from services.api_proxy.providers.base import Provider
from services.api_proxy.providers.cohere import CohereProvider
from services.api_proxy.providers.gemini import GeminiProvider
from services.api_proxy.providers.jina import JinaProvider
from services.api_proxy.providers.titan import TitanProvider
from services.api_proxy.providers.vertex import VertexProvider
from services.api_proxy.providers.voyage import VoyageProvider

PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls
    for cls in (CohereProvider, VertexProvider, GeminiProvider, VoyageProvider, JinaProvider, TitanProvider)
}


def provider_class(name: str) -> type[Provider]:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None


def default_model(name: str) -> str:
    return next(iter(provider_class(name).models))
