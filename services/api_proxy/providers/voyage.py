"""Voyage multimodal embeddings (`voyage-multimodal-3.5`, `voyage-multimodal-3`)."""

from __future__ import annotations

from typing import Any, Sequence

from services.api_proxy.credentials import HttpCall
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers.base import (
    VendorModel, Parsed, Provider, RateDefaults, data_uri, require, vectors_by_index,
)
from services.api_proxy.usage import Price

_IMAGES = ImageLimits(
    formats=frozenset({"jpeg", "png", "webp", "gif"}), max_bytes=20_000_000, max_pixels=16_000_000
)
# Tier 1: 2,000 requests/min and 2M tokens/min; an image costs pixels/560 tokens, ~1,800 for a
# 1-megapixel photo, hence ~1,000 images/min. A request holds <= 1,000 inputs and <= 320k tokens.
_LIMITS = RateDefaults(requests_per_minute=2000, images_per_minute=1000, concurrency=8)
_PRICE = Price("tokens", 0.12e-6, "voyageai.com pricing: $0.12 per 1M tokens; verify")

MULTIMODAL_3_5 = VendorModel(
    name="voyage-multimodal-3.5", dims=(1024, 256, 512, 2048), default_dim=1024, max_batch=128,
    images=_IMAGES, limits=_LIMITS, price=_PRICE, normalized_dims=frozenset({256, 512, 1024, 2048}),
)
MULTIMODAL_3 = VendorModel(
    name="voyage-multimodal-3", dims=(1024,), default_dim=1024, max_batch=128,
    images=_IMAGES, limits=_LIMITS, price=_PRICE, normalized_dims=frozenset({1024}),
)


class VoyageProvider(Provider):
    name = "voyage"
    default_base_url = "https://api.voyageai.com"
    models = {spec.name: spec for spec in (MULTIMODAL_3_5, MULTIMODAL_3)}
    key_variables = ("VOYAGE_API_KEY",)
    api_version = "v1/multimodalembeddings"
    role_field = "input_type"
    role_values = {"document": "document", "query": "query", "none": None}  # None: left out (null)
    default_role = "document"

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        body: dict[str, Any] = {
            "model": self.spec.name,
            "inputs": [{"content": [{"type": "image_base64", "image_base64": data_uri(image)}]} for image in images],
        }
        value = self.value_for(role)
        if value is not None:
            body["input_type"] = value
        if len(self.spec.dims) > 1:  # only models with a choice accept the parameter
            body["output_dimension"] = self.dim
        return self.json_call(f"{self.base_url}/v1/multimodalembeddings", body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict), "the answer is not a JSON object")
        vectors = vectors_by_index(payload.get("data"), count)
        usage = payload.get("usage") or {}
        billed = {}
        if isinstance(usage.get("total_tokens"), (int, float)):
            billed["tokens"] = float(usage["total_tokens"])
        if isinstance(usage.get("image_pixels"), (int, float)):
            billed["image_pixels"] = float(usage["image_pixels"])
        return Parsed(vectors=vectors, billed=billed)
