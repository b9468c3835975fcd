"""Gemini API `gemini-embedding-2`: :batchEmbedContents with ONE image part per content.

Several parts in one content are embedded into ONE combined vector, so each image gets its own
request entry; the count check in the model catches a vendor that merges anyway.
"""

from __future__ import annotations

from typing import Any, Sequence

import httpx

from services.api_proxy.credentials import Auth, HeaderKeyAuth, HttpCall
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers._google import retry_info_delay
from services.api_proxy.providers.base import VendorModel, Parsed, Provider, RateDefaults, b64, require

EMBEDDING_2 = VendorModel(
    name="gemini-embedding-2",
    dims=(3072, 1536, 768),
    default_dim=3072,
    dim_range=(128, 3072),
    max_batch=6,  # "up to 6 images per request" (UNCONFIRMED for batchEmbedContents)
    # The whole request must stay under 20 MB of JSON: 6 x 3 MB of base64 leaves room.
    images=ImageLimits(formats=frozenset({"jpeg", "png"}), max_bytes=3_000_000, base64_counts=True),
    limits=RateDefaults(requests_per_minute=3000, images_per_minute=1500, concurrency=8),
    price=None,  # no published image price known to us: pass --price-table
    normalized_dims=frozenset({3072}),  # other sizes come back unnormalised
    vendor_preprocessing="Gemini resizes images to 768x768 internally",
)


class GeminiProvider(Provider):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    models = {EMBEDDING_2.name: EMBEDDING_2}
    key_variables = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    api_version = "v1beta/batchEmbedContents"
    # EmbedContentRequest.taskType. Whether gemini-embedding-2 honours it for images is UNCONFIRMED
    # (Google describes task instructions in the text for this model), so by default none is sent.
    role_field = "taskType"
    role_values = {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY", "none": None}
    default_role = "none"

    @classmethod
    def make_key_auth(cls, key: str, source: str) -> Auth:
        # Header, never the ?key= query parameter: URLs end up in logs.
        return HeaderKeyAuth(key, source, header="x-goog-api-key", scheme="")

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        model = f"models/{self.spec.name}"
        value = self.value_for(role)
        task = {} if value is None else {"taskType": value}
        body = {
            "requests": [
                {
                    "model": model,
                    "content": {"parts": [{"inline_data": {"mime_type": image.mime, "data": b64(image)}}]},
                    "outputDimensionality": self.dim,
                    **task,
                }
                for image in images
            ]
        }
        return self.json_call(f"{self.base_url}/v1beta/{model}:batchEmbedContents", body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict) and isinstance(payload.get("embeddings"), list),
                "no 'embeddings' list in the answer")
        vectors = []
        for embedding in payload["embeddings"]:
            require(isinstance(embedding, dict) and isinstance(embedding.get("values"), list),
                    "an embedding has no 'values' list")
            vectors.append(embedding["values"])
        return Parsed(vectors=vectors)

    def retry_after_hint(self, response: httpx.Response) -> float | None:
        return retry_info_delay(response)
