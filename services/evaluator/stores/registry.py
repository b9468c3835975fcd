"""Vector store kinds by name. Each entry imports its store lazily (qdrant libraries are heavy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.evaluator.stores._common import StoreError
from services.evaluator.stores.base import VectorStore


def _edge(**options: Any) -> VectorStore:
    from services.evaluator.stores.qdrant_edge import QdrantEdgeStore

    return QdrantEdgeStore(**options)


def _server(**options: Any) -> VectorStore:
    """A Qdrant server by url; the API key is read from QDRANT_API_KEY by the store."""
    from services.evaluator.stores.qdrant_server import QdrantServerStore

    if not options.get("url"):
        raise StoreError("store kind 'qdrant-server' needs url=... (e.g. http://localhost:6333)")
    return QdrantServerStore(**options)


def _client_local(**options: Any) -> VectorStore:
    """qdrant-client's own local mode: path=... on disk, or location=':memory:'. Slow; for small runs."""
    from services.evaluator.stores.qdrant_server import QdrantServerStore

    if "path" not in options and "location" not in options:
        options["location"] = ":memory:"
    return QdrantServerStore(**options)


def _npz(**options: Any) -> VectorStore:
    """NPZ files (the `vsbench score` format): folder=..., one NAME.npz (+ .queries.npz) per collection."""
    from services.evaluator.stores.npz import NpzStore

    if "folder" not in options and "path" in options:
        options["folder"] = options.pop("path")
    return NpzStore(**options)


STORES: dict[str, Callable[..., VectorStore]] = {
    "npz": _npz,
    "qdrant-edge": _edge,
    "qdrant-server": _server,
    "qdrant-local": _client_local,
}


def open_store(kind: str, **options: Any) -> VectorStore:
    try:
        factory = STORES[kind]
    except KeyError:
        raise StoreError(
            f"unknown vector store kind {kind!r}; known kinds: {', '.join(sorted(STORES))}"
        ) from None
    return factory(**options)
