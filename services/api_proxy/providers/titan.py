"""Amazon Titan Multimodal Embeddings G1 on Bedrock InvokeModel, SigV4-signed, one image per call."""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import quote

from services.api_proxy.credentials import AwsSigV4Auth, HttpCall
from services.api_proxy.images import ImageLimits, PreparedImage
from services.api_proxy.providers.base import (
    VendorModel, Parsed, Provider, ProviderContext, RateDefaults, b64, require,
)
from services.api_proxy.usage import Price

TITAN_IMAGE_V1 = VendorModel(
    name="amazon.titan-embed-image-v1",
    dims=(1024, 384, 256),
    default_dim=1024,
    max_batch=1,
    images=ImageLimits(formats=frozenset({"jpeg", "png"}), max_bytes=25_000_000, max_side=2048),
    # Bedrock's default on-demand quota (UNCONFIRMED; see your account's Service Quotas).
    limits=RateDefaults(requests_per_minute=2000, images_per_minute=2000, concurrency=8),
    price=Price("images", 0.00006, "aws.amazon.com/bedrock/pricing: $0.00006 per image; verify"),
)
DEFAULT_REGION = "us-east-1"


class TitanProvider(Provider):
    name = "titan"
    default_base_url = "https://bedrock-runtime.{region}.amazonaws.com"
    models = {TITAN_IMAGE_V1.name: TITAN_IMAGE_V1}
    api_version = "bedrock/InvokeModel"  # Titan multimodal has no input role

    @classmethod
    def create(cls, ctx: ProviderContext) -> "TitanProvider":
        spec = cls.spec_for(ctx.model)
        env = ctx.environ
        region = ctx.options.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        auth = AwsSigV4Auth("bedrock", region)
        base_url = ctx.base_url or cls.default_base_url.format(region=region)
        return cls(spec, ctx.dimension or spec.default_dim, base_url, auth, ctx.role)

    def build(self, images: Sequence[PreparedImage], role: str | None = None) -> HttpCall:
        if len(images) != 1:
            raise ValueError("Titan takes one image per request")
        body = {"inputImage": b64(images[0]), "embeddingConfig": {"outputEmbeddingLength": self.dim}}
        return self.json_call(f"{self.base_url}/model/{quote(self.spec.name, safe='')}/invoke", body)

    def parse(self, payload: Any, count: int) -> Parsed:
        require(isinstance(payload, dict) and isinstance(payload.get("embedding"), list),
                "no 'embedding' list in the answer")
        return Parsed(vectors=[payload["embedding"]])
