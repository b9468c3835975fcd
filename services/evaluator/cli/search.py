"""Production search on the benchmarked services: build an index (`index`), query it (`search`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from services.evaluator.cli.core import (
    app,
    stderr_console,
)


# ---- production search (services/search, docs/search.md) -------------------------------------
@app.command("index")
def index_command(
    collection: str = typer.Option(..., "--collection", help="collection to build or update"),
    embedder: str = typer.Option(..., "--embedder", help="host:port of the embedder / api_proxy serving the model"),
    catalog: Optional[Path] = typer.Option(None, "--catalog", exists=True, dir_okay=False, help="catalog manifest (CSV)"),
    dataset_format: Optional[str] = typer.Option(None, "--format", help="dataset format instead of --catalog (sop, folder, quickstart, ...)"),
    dataset_path: Optional[Path] = typer.Option(None, "--path", help="dataset path for --format"),
    option: list[str] = typer.Option([], "--option", help="dataset option key=value (repeatable)"),
    store: Optional[Path] = typer.Option(None, "--store", help="Qdrant Edge folder"),
    qdrant_url: Optional[str] = typer.Option(None, "--qdrant-url", help="Qdrant server URL"),
    m: Optional[int] = typer.Option(None, "--m", min=0, help="HNSW edges per node (new collection: 16)"),
    ef_construct: Optional[int] = typer.Option(None, "--ef-construct", min=4, help="HNSW build candidates (100)"),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="none, scalar (int8) or binary (rescored)"),
    indexing_threshold_kb: Optional[int] = typer.Option(
        None, "--indexing-threshold-kb", min=0,
        help="build the HNSW graph for segments above this size (default Qdrant's 10000; 0 never builds it)"),
    full_scan_threshold_kb: Optional[int] = typer.Option(
        None, "--full-scan-threshold-kb", min=1, help="searches over fewer vectors than this scan exactly (10000)"),
    shard_number: Optional[int] = typer.Option(
        None, "--shard-number", min=1,
        help="Qdrant cluster: shards of a new collection (server default: one per peer)"),
    replication_factor: Optional[int] = typer.Option(
        None, "--replication-factor", min=1, help="Qdrant cluster: copies of each shard (server default)"),
    write_consistency_factor: Optional[int] = typer.Option(
        None, "--write-consistency-factor", min=1,
        help="Qdrant cluster: replicas that must apply a write (server default)"),
    threshold_from: Optional[Path] = typer.Option(
        None, "--threshold-from", exists=True, dir_okay=False, help="run record whose open-set threshold to serve"),
    reembed: bool = typer.Option(False, "--reembed", help="rebuild a collection of another model fingerprint"),
    embedder_tls: bool = typer.Option(False, "--embedder-tls"),
    embedder_auth_token_env: Optional[str] = typer.Option(None, "--embedder-auth-token-env", help="env var holding the token"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Build or update a search collection from a catalog's gallery (incremental by image id).

    Index flags left out keep the collection's (or Qdrant's defaults for a new one)."""
    import json

    from services.search.commands import run_index

    given = {"m": m, "ef_construct": ef_construct, "quantization": quantization,
             "indexing_threshold_kb": indexing_threshold_kb, "full_scan_threshold_kb": full_scan_threshold_kb}
    given = {key: value for key, value in given.items() if value is not None}
    distribution = {"shard_number": shard_number, "replication_factor": replication_factor,
                     "write_consistency_factor": write_consistency_factor}
    report = run_index(
        catalog=catalog, dataset_format=dataset_format, dataset_path=dataset_path, options=option, embedder=embedder,
        collection=collection, store=store, qdrant_url=qdrant_url, index_options=given, threshold_from=threshold_from,
        reembed=reembed, embedder_tls=embedder_tls, embedder_auth_token_env=embedder_auth_token_env,
        distribution={key: value for key, value in distribution.items() if value is not None},
    )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stderr_console().print(
            f"{report.collection}: {report.points} images ({report.added} added, {report.updated} updated, "
            f"{report.removed} removed, {report.unchanged} unchanged, {len(report.failed)} failed), "
            f"threshold {report.threshold}", highlight=False)
        for image_id, reason in report.failed[:20]:
            stderr_console().print(f"  {image_id}: {reason}", highlight=False)
    if report.failed and report.points == 0:
        raise typer.Exit(code=1)


@app.command("search")
def search_command(
    images: list[Path] = typer.Argument(..., help="query photos"),
    service: str = typer.Option(..., "--service", help="host:port of the search service"),
    k: int = typer.Option(10, "--k", min=1, help="products per image"),
    product: list[str] = typer.Option([], "--product", help="restrict to this product id (repeatable)"),
    tls: bool = typer.Option(False, "--tls"),
    auth_token_env: Optional[str] = typer.Option(None, "--auth-token-env", help="env var holding the service's token"),
    as_json: bool = typer.Option(False, "--json", help="JSON: per image, the hits and the decision"),
) -> None:
    """Ask a search service which catalog products the photos show (or that they are not in it)."""
    from services.search.commands import format_results, run_search

    results = run_search(service, images, k, product, tls=tls, auth_token_env=auth_token_env)
    sys.stdout.write(format_results(results, as_json) + "\n")
    if any("error" in r for r in results):
        raise typer.Exit(code=1)
