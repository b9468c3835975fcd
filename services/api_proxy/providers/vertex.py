"""Vertex AI `multimodalembedding@001`: one image per :predict call, Google OAuth access tokens."""

from __future__ import annotations

from typing import Any, Sequence

import httpx

from services.common.errors import ConfigError
from services.api_proxy.credentials import Auth, GoogleBearerAuth, HttpCall, google_token_source
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers._google import retry_info_delay
from services.api_proxy.providers.base import (
    VendorModel, Parsed, Provider, ProviderContext, RateDefaults, b64, require,
)
from services.api_proxy.usage import Price

MULTIMODAL_001 = VendorModel(
    name="multimodalembedding@001",
    dims=(1408, 512, 256, 128),
    default_dim=1408,
    max_batch=1,  # the model takes exactly one instance per request
    images=ImageLimits(formats=frozenset({"jpeg", "png", "gif", "bmp"}), max_bytes=20_000_000),
    # 120-600 requests/min/project depending on region: the lowest is the safe default.
    limits=RateDefaults(requests_per_minute=120, images_per_minute=120, concurrency=8),
    price=Price("images", 0.0001, "cloud.google.com/vertex-ai/generative-ai/pricing: $0.0001 per image; verify"),
    vendor_preprocessing="Vertex resizes every image to 512x512 internally",
)

DEFAULT_LOCATION = "us-central1"


class VertexProvider(Provider):
    name = "vertex"
    default_base_url = "https://{location}-aiplatform.googleapis.com"
    models = {MULTIMODAL_001.name: MULTIMODAL_001}
    api_version = "v1/predict"  # multimodalembedding@001 has no input role for images

    def __init__(self, spec: VendorModel, dim: int, base_url: str, auth: Auth, project: str, location: str,
                 role: str | None = None) -> None:
        super().__init__(spec, dim, base_url, auth, role)
        self.project = project
        self.location = location

    @classmethod
    def create(cls, ctx: ProviderContext) -> "VertexProvider":
        spec = cls.spec_for(ctx.model)
        env = ctx.environ
        project = ctx.options.get("project") or env.get("GOOGLE_CLOUD_PROJECT") or env.get("CLOUDSDK_CORE_PROJECT")
        if not project:
            raise ConfigError("Vertex needs a project: --project or GOOGLE_CLOUD_PROJECT")
        location = ctx.options.get("location") or env.get("GOOGLE_CLOUD_LOCATION") or DEFAULT_LOCATION
        auth = GoogleBearerAuth(google_token_source(env, ctx.secret_file))
        base_url = ctx.base_url or cls.default_base_url.format(location=location)
        return cls(spec, ctx.dimension or spec.default_dim, base_url, auth, project, location, ctx.role)

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        if len(images) != 1:
            raise ValueError("Vertex multimodalembedding takes one image per request")
        url = (
            f"{self.base_url}/v1/projects/{self.project}/locations/{self.location}"
            f"/publishers/google/models/{self.spec.name}:predict"
        )
        body = {
            "instances": [{"image": {"bytesBase64Encoded": b64(images[0])}}],
            "parameters": {"dimension": self.dim},
        }
        return self.json_call(url, body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict) and isinstance(payload.get("predictions"), list),
                "no 'predictions' list in the answer")
        vectors = []
        for prediction in payload["predictions"]:
            require(isinstance(prediction, dict) and isinstance(prediction.get("imageEmbedding"), list),
                    "a prediction has no 'imageEmbedding' list")
            vectors.append(prediction["imageEmbedding"])
        return Parsed(vectors=vectors)

    def retry_after_hint(self, response: httpx.Response) -> float | None:
        return retry_info_delay(response)

    def endpoint(self) -> str:
        return f"{self.base_url} (project {self.project}, {self.location})"
