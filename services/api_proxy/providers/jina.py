"""Jina Embeddings v4 API: OpenAI-style /v1/embeddings with `{"image": <base64>}` inputs."""

from __future__ import annotations

from typing import Any, Sequence

from services.api_proxy.credentials import HttpCall
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers.base import (
    VendorModel, Parsed, Provider, RateDefaults, b64, require, vectors_by_index,
)

JINA_V4 = VendorModel(
    name="jina-embeddings-v4",
    dims=(2048, 1024, 512, 256, 128),
    default_dim=2048,
    max_batch=32,  # UNCONFIRMED: the API documents no image batch limit; keep requests modest
    images=ImageLimits(formats=frozenset({"jpeg", "png", "webp"}), max_bytes=10_000_000, base64_counts=True),
    # 500 requests/min and 1M tokens/min with a key (UNCONFIRMED); ~1,000 image tokens per photo.
    limits=RateDefaults(requests_per_minute=500, images_per_minute=1000, concurrency=8),
    price=None,  # token packages, no per-unit list price: pass --price-table
    vendor_preprocessing="Jina v4 (Qwen2.5-VL) resizes to between 3,136 and 602,112 pixels",
)


class JinaProvider(Provider):
    name = "jina"
    default_base_url = "https://api.jina.ai"
    models = {JINA_V4.name: JINA_V4}
    key_variables = ("JINA_API_KEY",)
    api_version = "v1/embeddings"
    # jina-embeddings-v4 picks a task adapter per request; retrieval.* are the search pair.
    role_field = "task"
    role_values = {"document": "retrieval.passage", "query": "retrieval.query"}
    default_role = "document"

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        body = {
            "model": self.spec.name,
            "task": self.value_for(role),
            "dimensions": self.dim,
            "embedding_type": "float",
            "input": [{"image": b64(image)} for image in images],
        }
        return self.json_call(f"{self.base_url}/v1/embeddings", body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict), "the answer is not a JSON object")
        vectors = vectors_by_index(payload.get("data"), count)
        usage = payload.get("usage") or {}
        billed = {"tokens": float(usage["total_tokens"])} if isinstance(usage.get("total_tokens"), (int, float)) else {}
        return Parsed(vectors=vectors, billed=billed)
