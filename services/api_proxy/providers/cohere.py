"""Cohere Embed v4 over the v2 embed endpoint, images as data-URI `image_url` content parts."""

from __future__ import annotations

from typing import Any, Sequence

from services.api_proxy.credentials import HttpCall
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers.base import (
    VendorModel, Parsed, Provider, RateDefaults, data_uri, require,
)
from services.api_proxy.usage import Price

EMBED_V4 = VendorModel(
    name="embed-v4.0",
    dims=(1536, 1024, 512, 256),
    default_dim=1536,
    # 96 inputs per call is documented; whether 96 images pass in one call is UNCONFIRMED (--max-batch).
    max_batch=96,
    images=ImageLimits(formats=frozenset({"jpeg", "png", "webp", "gif"}), max_bytes=5_000_000),
    limits=RateDefaults(requests_per_minute=2000, images_per_minute=400, concurrency=8),
    price=Price("images", 0.00047, "estimate: ~1,000 image tokens per image at $0.47 per 1M image tokens; verify"),
)


class CohereProvider(Provider):
    name = "cohere"
    default_base_url = "https://api.cohere.com"
    models = {EMBED_V4.name: EMBED_V4}
    # The cohere SDK reads CO_API_KEY; COHERE_API_KEY is the other common spelling.
    key_variables = ("CO_API_KEY", "COHERE_API_KEY")
    api_version = "v2/embed"
    # input_type is required for v3+ models; "image" on embed-v4.0 falls back to search_document
    # (docs.cohere.com/docs/embeddings), so the roles are sent explicitly.
    role_field = "input_type"
    role_values = {"document": "search_document", "query": "search_query"}
    default_role = "document"

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        body = {
            "model": self.spec.name,
            "input_type": self.value_for(role),
            "embedding_types": ["float"],
            "output_dimension": self.dim,
            "inputs": [
                {"content": [{"type": "image_url", "image_url": {"url": data_uri(image)}}]} for image in images
            ],
        }
        return self.json_call(f"{self.base_url}/v2/embed", body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict), "the answer is not a JSON object")
        embeddings = payload.get("embeddings")
        require(isinstance(embeddings, dict) and isinstance(embeddings.get("float"), list),
                "no 'embeddings.float' list in the answer")
        billed = (payload.get("meta") or {}).get("billed_units") or {}
        return Parsed(
            vectors=embeddings["float"],
            billed={k: float(v) for k, v in billed.items() if isinstance(v, (int, float))},
        )
