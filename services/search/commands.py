"""What `vsbench index` and `vsbench search` do (services/evaluator/cli/search.py holds only their flags)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from services.common.errors import ConfigError, VsbenchError
from services.evaluator.datasets.base import Dataset
from services.search.build import IndexReport, build_index, threshold_from_record
from services.search.index import IndexParams, open_index


def load_catalog(catalog: Path | None, dataset_format: str | None, dataset_path: Path | None,
                 options: Sequence[str] = ()) -> Dataset:
    """--catalog MANIFEST, or a run-config-style dataset entry: --format F --path P [--option k=v]..."""
    from services.evaluator.datasets.registry import load_dataset

    if catalog is not None:
        if dataset_format is not None or dataset_path is not None or options:
            raise ConfigError("--catalog excludes --format / --path / --option")
        return load_dataset("manifest", catalog)
    if dataset_format is None or dataset_path is None:
        raise ConfigError("give --catalog MANIFEST, or --format FORMAT and --path PATH")
    parsed: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes key=value (value as YAML), got {option!r}")
        import yaml

        parsed[key.strip()] = yaml.safe_load(value)
    return load_dataset(dataset_format, dataset_path, **parsed)


def run_index(
    *, catalog: Path | None, dataset_format: str | None, dataset_path: Path | None, options: Sequence[str],
    embedder: str, collection: str, store: Path | None, qdrant_url: str | None,
    index_options: dict, threshold_from: Path | None, reembed: bool,
    embedder_tls: bool = False, embedder_auth_token_env: str | None = None,
    distribution: dict[str, int] | None = None,
) -> IndexReport:
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    dataset = load_catalog(catalog, dataset_format, dataset_path, options)
    threshold = threshold_from_record(threshold_from) if threshold_from is not None else None
    token = None
    if embedder_auth_token_env:
        token = os.environ.get(embedder_auth_token_env)
        if not token:
            raise ConfigError(f"environment variable {embedder_auth_token_env} (the embedder's token) is not set")
    index = open_index(collection, store=store, qdrant_url=qdrant_url, distribution=distribution)
    try:
        params = None
        if index_options:  # flags given override the collection's parameters (or the defaults)
            stored = index.meta()
            base = stored.params if stored is not None else IndexParams()
            params = dataclasses.replace(base, **index_options)
        with GrpcEmbeddingClient(embedder, tls=embedder_tls, auth_token=token) as client:
            return build_index(dataset, client, index, params=params, threshold=threshold, reembed=reembed)
    finally:
        index.close()


def run_search(service: str, images: Sequence[Path], k: int, product_ids: Sequence[str] = (),
               tls: bool = False, auth_token_env: str | None = None) -> list[dict]:
    """One entry per image: {image, decision, threshold, hits} or {image, error}."""
    from services.search.client import SearchCallError, SearchClient

    token = os.environ.get(auth_token_env) if auth_token_env else None
    if auth_token_env and not token:
        raise ConfigError(f"environment variable {auth_token_env} (the service's token) is not set")
    out = []
    with SearchClient(service, tls=tls, auth_token=token) as client:
        for image in images:
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                out.append({"image": str(image), "error": f"unreadable: {exc}"})
                continue
            try:
                answer = client.search_image(data, k=k, product_ids=product_ids)
            except SearchCallError as exc:
                if exc.code.name in ("UNAVAILABLE", "UNAUTHENTICATED", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"):
                    raise VsbenchError(f"search service {service}: {exc}") from None
                out.append({"image": str(image), "error": str(exc)})
                continue
            out.append({"image": str(image), **answer.to_dict()})
    return out


def format_results(results: list[dict], as_json: bool) -> str:
    if as_json:
        return json.dumps(results, indent=2)
    lines = []
    for entry in results:
        if "error" in entry:
            lines.append(f"{entry['image']}: error: {entry['error']}")
            continue
        lines.append(f"{entry['image']}: {entry['decision']} (threshold {entry['threshold']})")
        for hit in entry["hits"]:
            lines.append(f"  {hit['score']:.4f}  {hit['product_id'] or '(no product)'}  {hit['image_id']}")
    return "\n".join(lines)
