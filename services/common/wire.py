"""The only module that converts between services.common.types and protobuf messages."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.types import Embedding, ErrorCode, ImageItem, ItemError, ModelInfo

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
    )


def request_to_pb(items: Sequence[ImageItem], request_id: str = "") -> pb.EmbedRequest:
    return pb.EmbedRequest(
        items=[pb.ImageItem(id=item.id, data=item.data) for item in items], request_id=request_id
    )


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


def response_to_pb(embeddings: Iterable[Embedding], request_id: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        results=[embedding_to_pb(e) for e in embeddings], request_id=request_id
    )


def response_from_pb(msg: pb.EmbedResponse) -> list[Embedding]:
    return [embedding_from_pb(r) for r in msg.results]
