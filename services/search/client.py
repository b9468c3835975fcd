"""A client of the Search service (`vsbench search` uses it; so do the tests and the bench)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np

from services.common.errors import VsbenchError
from services.common.proto.vsbench.v1 import search_pb2 as spb
from services.common.proto.vsbench.v1 import search_pb2_grpc as spb_grpc
from services.evaluator.clients.grpc import make_channel


class SearchCallError(VsbenchError):
    """The search service refused or failed one query; `code` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        super().__init__(f"{code.name}: {details}")


@dataclass(frozen=True)
class SearchAnswer:
    hits: list[dict]  # product_id, image_id, score, location; best first
    accepted: bool
    threshold: float | None
    embed_seconds: float
    search_seconds: float

    def to_dict(self) -> dict:
        return {"decision": "accept" if self.accepted else "reject", "threshold": self.threshold, "hits": self.hits}


def answer_from_pb(response: spb.SearchResponse) -> SearchAnswer:
    return SearchAnswer(
        hits=[{"product_id": h.product_id, "image_id": h.image_id, "score": float(h.score), "location": h.location}
              for h in response.hits],
        accepted=response.decision == spb.DECISION_ACCEPT,
        threshold=response.threshold if response.HasField("threshold") else None,
        embed_seconds=response.embed_seconds,
        search_seconds=response.search_seconds,
    )


class SearchClient:
    def __init__(self, address: str, *, tls: bool = False, tls_ca: bytes | None = None,
                 auth_token: str | None = None, timeout_s: float = 60.0) -> None:
        self.address = address
        self._channel = make_channel(address, tls=tls, tls_ca=tls_ca)
        self._stub = spb_grpc.SearchStub(self._channel)
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self._timeout_s = timeout_s

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as err:
            raise SearchCallError(err.code(), err.details() or "") from None

    def search_image(self, data: bytes, k: int = 0, product_ids: Sequence[str] = ()) -> SearchAnswer:
        return answer_from_pb(self._call(self._stub.Search, spb.SearchRequest(image=data, k=k, product_ids=product_ids)))

    def search_vector(self, vector: np.ndarray, k: int = 0, product_ids: Sequence[str] = ()) -> SearchAnswer:
        query = spb.QueryVector(values=np.asarray(vector, dtype=np.float32).tolist())
        return answer_from_pb(self._call(self._stub.Search, spb.SearchRequest(vector=query, k=k, product_ids=product_ids)))

    def describe(self) -> spb.CollectionInfo:
        return self._call(self._stub.Describe, spb.DescribeRequest())

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
