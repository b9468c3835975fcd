"""What this version offers and how to get it: datasets (list, fetch, subsets), models, exports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from services.evaluator.cli.core import (
    fail,
    app,
    stderr_console,
    export_app,
)


@export_app.command("triton")
def export_triton_command(
    model: str = typer.Option(..., "--model", help="registry model name"),
    out: Path = typer.Option(..., "--out", help="Triton model repository folder (created)"),
    max_batch: int = typer.Option(64, "--max-batch", help="config.pbtxt max_batch_size"),
    instance_kind: str = typer.Option("KIND_GPU", "--instance-kind", help="KIND_GPU or KIND_CPU"),
    instance_count: int = typer.Option(1, "--instance-count", help="model instances per device"),
    weights: Optional[str] = typer.Option(None, "--weights", help="weights overriding the spec's"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="compare onnxruntime with the local backend"),
) -> None:
    """Write a Triton model repository (ONNX, config.pbtxt, TensorRT notes); see docs/triton.md."""
    from services.embedder.triton_export import export_triton

    result = export_triton(model, out, max_batch=max_batch, instance_kind=instance_kind,
                           instance_count=instance_count, weights=weights, verify=verify)
    stderr_console().print(result.summary(), highlight=False, soft_wrap=True)
    stderr_console().print(f"wrote {result.model_dir} and {result.readme_path}", highlight=False, soft_wrap=True)


# ---- catalogues ----------------------------------------------------------------------------------
datasets_app = typer.Typer(help="Dataset formats (list, the default), downloads (fetch) and subsets.")
app.add_typer(datasets_app, name="datasets", invoke_without_command=True)


@datasets_app.callback()
def datasets_main(ctx: typer.Context) -> None:
    """Dataset formats this version can load (`vsbench datasets` alone lists them)."""
    if ctx.invoked_subcommand is None:
        list_datasets()


@datasets_app.command("list")
def list_datasets() -> None:
    """Dataset formats this version can load."""
    import inspect

    from services.evaluator.datasets.registry import DATASET_LOADERS, dataset_options

    for name, loader in DATASET_LOADERS.items():
        summary = (inspect.getdoc(loader) or "").splitlines()[0] if inspect.getdoc(loader) else ""
        options = ", ".join(f"{k}={v!r}" for k, v in dataset_options(name).items())
        stderr_console().print(f"[bold]{name}[/]  {summary}\n    options: {options or 'none'}", highlight=False)


@datasets_app.command("fetch")
def fetch_dataset(
    name: str = typer.Argument(..., help="ilias, sop or products10k"),
    to: Path = typer.Option(..., "--to", file_okay=False, help="folder to download into (created)"),
    max_shards: Optional[int] = typer.Option(
        None, "--max-shards", min=0, help="ilias: download only the first N YFCC100M distractor shards"
    ),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="a mirror of the official location"),
    taxonomy_url: Optional[str] = typer.Option(None, "--taxonomy-url", help="ilias: where taxonomy.json is"),
    retries: int = typer.Option(5, "--retries", min=1, help="failed attempts in a row before giving up"),
    checksum_retries: int = typer.Option(1, "--checksum-retries", min=1, help="downloads tried per corrupt file"),
    show_progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars"),
) -> None:
    """Download a public dataset from its official location: resumable, sha256/md5-verified, retried."""
    from services.evaluator.datasets import fetch as fetching
    from services.evaluator.datasets.download import DownloadError, RetryPolicy
    from services.evaluator.datasets.fetch_progress import RichDownloadProgress

    if name not in fetching.FETCHABLE:
        fail(f"no fetch for {name!r}: use ilias, sop or products10k")
    retry = RetryPolicy(attempts=retries)
    progress = RichDownloadProgress(stderr_console()) if show_progress else None
    try:
        if name == "ilias":
            report = fetching.fetch_ilias(
                to, base_url=base_url or fetching.ILIAS_BASE_URL, max_shards=max_shards, retry=retry,
                taxonomy_url=taxonomy_url or fetching.ILIAS_TAXONOMY_URL, checksum_attempts=checksum_retries,
                progress=progress,
            )
        elif name == "sop":
            report = fetching.fetch_sop(to, url=base_url.rstrip("/") + "/Stanford_Online_Products.zip"
                                        if base_url else fetching.SOP_URL, retry=retry, progress=progress)
        else:
            report = fetching.fetch_products10k(to)
    except DownloadError as exc:
        fail(str(exc))
        return
    finally:
        if progress is not None:
            progress.close()
    if report.instructions:
        sys.stdout.write(report.instructions + "\n")
        stderr_console().print("nothing was downloaded", highlight=False)
        return
    stderr_console().print(f"{name}: {len(report.downloaded)} file(s) in place, {len(report.extracted)} archive(s) "
                  f"extracted in {report.directory}", highlight=False)
    if report.skipped:
        stderr_console().print(f"{len(report.skipped)} listed file(s) left out (--max-shards)", highlight=False)


@datasets_app.command("p10k-subset")
def products10k_subset(
    root: Path = typer.Argument(..., exists=True, file_okay=False, help="the Products-10K folder"),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="id list to write"),
    seed: int = typer.Option(0, "--seed"),
    products: int = typer.Option(3450, "--products", min=1),
    images: int = typer.Option(11200, "--images", min=1),
) -> None:
    """Write the seeded Products-10K test subset of the report's size (3,450 products, 11,200 images)."""
    from services.evaluator.datasets.base import DatasetError
    from services.evaluator.datasets.products10k_subset import build_products10k_subset, write_products10k_subset

    try:
        subset = build_products10k_subset(root, products=products, images=images, seed=seed)
    except DatasetError as exc:
        fail(str(exc).splitlines()[0])
        return
    digest = write_products10k_subset(subset, out)
    stderr_console().print(f"wrote {len(subset.image_ids)} ids of {subset.products} products to {out} (sha256 {digest})",
                  highlight=False)


@app.command("models")
def list_models() -> None:
    """Models in the embedder registry (open models; commercial ones are served by the api_proxy)."""
    from services.embedder.backends.registry import list_specs

    from rich.console import Console
    from rich.table import Table

    table = Table("model", "backend", "dim", "pooling", "weights (default)", "preprocessing", show_lines=False)
    for spec in list_specs():
        table.add_row(spec.name, spec.kind, str(spec.dim or "from weights"), spec.pooling, spec.weights or "--weights",
                      spec.describe_preprocessing())
    Console().print(table)
