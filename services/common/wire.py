"""The only module that converts between services.common.types and protobuf messages."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.types import CallUsage, Embedding, ErrorCode, ImageItem, InputRole, ItemError, ModelInfo

# Vectors travel as little-endian float32 bytes: 4x smaller than repeated float's varint-free
# encoding would still be, and a zero-copy np.frombuffer on the receiving side.
_WIRE_DTYPE = np.dtype("<f4")


def info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        dim=info.dim,
        dtype=info.dtype,
        preprocessing=info.preprocessing,
        normalized=info.normalized,
        revision=info.revision,
        max_batch=info.max_batch,
        backend=info.backend,
        details=dict(info.details),
        fingerprint=info.fingerprint,
    )


def info_from_pb(msg: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=msg.name,
        dim=msg.dim,
        dtype=msg.dtype,
        preprocessing=msg.preprocessing,
        normalized=msg.normalized,
        revision=msg.revision,
        max_batch=msg.max_batch,
        backend=msg.backend,
        details=dict(msg.details),
        fingerprint=msg.fingerprint,
    )


_ROLE_TO_PB = {
    None: pb.INPUT_ROLE_UNSPECIFIED, InputRole.DOCUMENT: pb.INPUT_ROLE_DOCUMENT, InputRole.QUERY: pb.INPUT_ROLE_QUERY,
}
_ROLE_FROM_PB = {value: key for key, value in _ROLE_TO_PB.items()}


def request_to_pb(
    items: Sequence[ImageItem], request_id: str = "", role: InputRole | None = None
) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        items=[pb.ImageItem(id=item.id, data=item.data) for item in items], request_id=request_id,
        role=_ROLE_TO_PB[role],
    )


def request_role(msg: pb.EmbedRequest) -> InputRole | None:
    """The request's role; None = unspecified (the server's default). An unknown value from a
    newer client is refused rather than guessed."""
    try:
        return _ROLE_FROM_PB[msg.role]
    except KeyError:
        raise ValueError(f"unknown input role {msg.role}") from None


def request_from_pb(msg: pb.EmbedRequest) -> list[ImageItem]:
    return [ImageItem(id=item.id, data=item.data) for item in msg.items]


def embedding_to_pb(embedding: Embedding) -> pb.EmbeddingResult:
    if embedding.error is not None:
        return pb.EmbeddingResult(
            id=embedding.id,
            error=pb.ItemError(code=int(embedding.error.code), message=embedding.error.message),
        )
    vector = np.ascontiguousarray(embedding.vector, dtype=_WIRE_DTYPE)
    return pb.EmbeddingResult(id=embedding.id, vector=vector.tobytes())


def embedding_from_pb(msg: pb.EmbeddingResult) -> Embedding:
    if msg.WhichOneof("outcome") == "vector":
        if len(msg.vector) % _WIRE_DTYPE.itemsize:  # np.frombuffer would raise for the whole batch
            return Embedding.failed(
                msg.id, ErrorCode.INVALID_OUTPUT, f"vector of {len(msg.vector)} bytes is not float32 data"
            )
        return Embedding(id=msg.id, vector=np.frombuffer(msg.vector, dtype=_WIRE_DTYPE))
    if msg.WhichOneof("outcome") == "error":
        try:
            code = ErrorCode(msg.error.code)
        except ValueError:
            code = ErrorCode.UNSPECIFIED
        return Embedding(id=msg.id, error=ItemError(code, msg.error.message))
    return Embedding.failed(msg.id, ErrorCode.INTERNAL, "server sent neither vector nor error")


def usage_to_pb(usage: CallUsage) -> pb.Usage:
    msg = pb.Usage(
        billed_images=usage.billed_images,
        cached_images=usage.cached_images,
        requests=usage.requests,
        retries=usage.retries,
        rate_limited=usage.rate_limited,
    )
    if usage.cost_usd is not None:
        msg.cost_usd = usage.cost_usd
    return msg


def usage_from_pb(msg: pb.Usage) -> CallUsage:
    return CallUsage(
        billed_images=msg.billed_images,
        cached_images=msg.cached_images,
        requests=msg.requests,
        retries=msg.retries,
        rate_limited=msg.rate_limited,
        cost_usd=msg.cost_usd if msg.HasField("cost_usd") else None,
    )


def response_to_pb(
    embeddings: Iterable[Embedding], request_id: str = "", usage: CallUsage | None = None
) -> pb.EmbedResponse:
    msg = pb.EmbedResponse(results=[embedding_to_pb(e) for e in embeddings], request_id=request_id)
    if usage is not None:
        msg.usage.CopyFrom(usage_to_pb(usage))
    return msg


def response_from_pb(msg: pb.EmbedResponse) -> list[Embedding]:
    return [embedding_from_pb(r) for r in msg.results]


def response_usage(msg: pb.EmbedResponse) -> CallUsage | None:
    """The response's usage, or None when the server sent none (an embedder)."""
    return usage_from_pb(msg.usage) if msg.HasField("usage") else None


def rejection_to_pb(reason: str, retry_after_ms: int, request_id: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        request_id=request_id, rejected=pb.BatchRejected(reason=reason, retry_after_ms=retry_after_ms)
    )


def response_rejection(msg: pb.EmbedResponse) -> tuple[str, int] | None:
    """(reason, retry_after_ms) when the server refused this request (overload), else None."""
    if not msg.HasField("rejected"):
        return None
    return msg.rejected.reason, msg.rejected.retry_after_ms
