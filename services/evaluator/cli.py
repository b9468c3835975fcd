"""`vsbench`: evaluate embedding models for instance-level product retrieval.

Each command imports what it needs when it runs, so `vsbench --help` stays fast and the scoring
commands work without torch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="Benchmark image embedding models for instance-level product identification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(help="Export models for production serving.", no_args_is_help=True)
app.add_typer(export_app, name="export")

console = Console(stderr=True)


def _parse_ks(text: str, option: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise typer.BadParameter(f"{option} values must be >= 1, got {text!r}")
    return values


def _check_engine(engine: str) -> str:
    if engine not in ("auto", "torch", "numpy"):
        raise typer.BadParameter(f"--engine takes auto, torch or numpy, got {engine!r}")
    return engine


def _fail(message: str) -> None:
    # Plain stderr, one line: scripts and users grep it (rich would wrap long paths).
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code=2)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug details")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# ---- score ---------------------------------------------------------------------------------
@app.command()
def score(
    gallery: Path = typer.Option(..., "--gallery", help="NPZ with embeddings, ids, labels (\"\" = distractor)"),
    queries: Optional[Path] = typer.Option(None, "--queries", help="NPZ of queries; omit for intra retrieval"),
    k: str = typer.Option("1,5", "--k", help="Recall@K cut-offs, comma-separated"),
    map_k: str = typer.Option("20", "--map-k", help="mAP@K cut-offs, comma-separated"),
    out: Path = typer.Option(..., "--out", help="results JSON to write (a .queries.jsonl is written beside it)"),
    unanswerable_as_miss: bool = typer.Option(False, help="score queries without relevant items as misses"),
    engine: str = typer.Option("auto", help="search engine: auto (torch if installed), torch, numpy"),
) -> None:
    """Score precomputed embeddings (exact search, Recall@K and mAP@K, in percent)."""
    from services.evaluator.precomputed import InputError, load_npz, score_sets

    recall_k, map_ks = _parse_ks(k, "--k"), _parse_ks(map_k, "--map-k")
    _check_engine(engine)
    try:
        gallery_set = load_npz(gallery, "gallery")
        query_set = load_npz(queries, "queries") if queries is not None else None
        summary, outcomes = score_sets(
            gallery_set, query_set, recall_k=recall_k, map_k=map_ks,
            unanswerable_as_miss=unanswerable_as_miss, engine=engine,
        )
    except InputError as exc:
        _fail(str(exc))
        return
    inputs = {"gallery": str(gallery), "queries": str(queries) if queries else None}
    _write_score(out, {"schema": "vsbench.score/v1", "inputs": inputs, **summary}, outcomes)


@app.command("score-ilias")
def score_ilias(
    features: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of ILIAS's official HDF5 features"),
    out: Path = typer.Option(..., "--out", help="results JSON to write (a .queries.jsonl is written beside it)"),
    k: str = typer.Option("1,5", "--k", help="Recall@K cut-offs"),
    map_k: str = typer.Option("20,1000", "--map-k", help="mAP@K cut-offs (ILIAS's own metric is mAP@1000)"),
    max_distractors: Optional[int] = typer.Option(None, help="use only the first N distractors"),
    mini_ids: Optional[Path] = typer.Option(None, help="id list selecting distractors (e.g. mini-ILIAS 5M)"),
    engine: str = typer.Option("auto", help="search engine: auto, torch, numpy"),
) -> None:
    """Score published ILIAS features (features_image_queries / positives / distractors_*.hdf5)."""
    from services.evaluator.datasets.base import DatasetError
    from services.evaluator.precomputed import score_ilias_features

    _check_engine(engine)
    try:
        summary, outcomes = score_ilias_features(
            features, recall_k=_parse_ks(k, "--k"), map_k=_parse_ks(map_k, "--map-k"),
            max_distractors=max_distractors, selected_ids=mini_ids, engine=engine,
        )
    except DatasetError as exc:
        _fail(str(exc).splitlines()[0])
        return
    _write_score(out, {"schema": "vsbench.score/v1", "inputs": {"features": str(features)}, **summary}, outcomes)


def _write_score(out: Path, summary: dict, outcomes) -> None:
    from services.evaluator.results import QUERY_SCHEMA

    out.parent.mkdir(parents=True, exist_ok=True)
    per_query = out.with_suffix(".queries.jsonl")
    summary["per_query_file"] = per_query.name
    with open(per_query, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"schema": QUERY_SCHEMA}) + "\n")
        for outcome in outcomes():
            handle.write(json.dumps(outcome.to_json()) + "\n")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    metrics = ", ".join(f"{name} {value:.2f}" if value is not None else f"{name} n/a"
                        for name, value in summary["metrics"].items())
    q = summary["queries"]
    console.print(f"{metrics}  ({q['scored']} queries scored, {q['unanswerable']} unanswerable) -> {out}",
                  highlight=False)


# ---- tables and report ------------------------------------------------------------------------
@app.command()
def table(
    results_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a results directory"),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv or latex"),
    out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of stdout"),
) -> None:
    """The report's Table 3: models x datasets, R@1 / R@5 / mAP@20, with the average over common datasets."""
    from services.evaluator.results import load_results
    from services.evaluator.tables import render_table

    runs = load_results(results_dir)
    if not runs:
        _fail(f"no vsbench result files under {results_dir}")
    try:
        text = render_table(runs, fmt)
    except ValueError as exc:
        _fail(str(exc))
        return
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def report(
    results_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a results directory"),
    out: Path = typer.Option(..., "--out", help="folder for the static site"),
) -> None:
    """Build the static report site (leaderboard, statistics, dataset pages, model cards, failures)."""
    from services.evaluator.report import SiteError, build_site
    from services.evaluator.runner import dataset_image_resolver

    try:
        index = build_site(results_dir, out, image_resolver=dataset_image_resolver(results_dir))
    except SiteError as exc:
        _fail(str(exc))
        return
    console.print(f"report written: {index}", highlight=False)


# ---- running evaluations -----------------------------------------------------------------------
@app.command()
def run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="run config YAML"),
    embed_only: bool = typer.Option(False, "--embed-only", help="embed and store; score later"),
    score_only: bool = typer.Option(False, "--score-only", help="score what the store holds"),
    shard_index: Optional[int] = typer.Option(None, help="embed only this shard (with --embed-only)"),
    shard_count: Optional[int] = typer.Option(None, help="number of shards"),
    search: Optional[str] = typer.Option(
        None, "--search", help="override the config: matmul (exact blocked matmul) or qdrant (Qdrant exact search)"
    ),
    unanswerable_as_miss: Optional[bool] = typer.Option(
        None, "--unanswerable-as-miss/--exclude-unanswerable", help="override the config's unanswerable rule"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run datasets x models end to end from a config (servers by address, or in-process)."""
    import yaml
    from pydantic import ValidationError

    from services.evaluator.clients.base import EmbeddingServiceError
    from services.evaluator.config import RunSpec, ShardSpec
    from services.evaluator.runner import run_spec

    if embed_only and score_only:
        _fail("--embed-only and --score-only exclude each other")
    try:
        spec = RunSpec.from_yaml(config)
        if shard_index is not None or shard_count is not None:
            spec.shard = ShardSpec(index=shard_index or 0, count=shard_count or 1)
        overrides = {"search": search, "unanswerable_as_miss": unanswerable_as_miss}
        spec = RunSpec.model_validate(
            {**spec.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        _fail(f"{config}: {' '.join(str(exc).split())}")
        return
    try:
        runs = run_spec(spec, embed=not score_only, score=not embed_only, console=console, show_progress=not quiet)
    except (ValueError, OSError, EmbeddingServiceError) as exc:
        # DatasetError / StoreError are ValueErrors: a bad manifest, path or service is the user's
        # input problem; what was embedded before the failure is already stored (a rerun resumes).
        logging.getLogger(__name__).debug("run failed", exc_info=True)
        _fail(" ".join(str(exc).split()))
        return
    for run_result in runs:
        console.print(f"wrote {run_result.path}", highlight=False)


@app.command()
def embed(
    server: str = typer.Option(..., "--server", help="host:port of an Embedder server"),
    images: Path = typer.Option(..., "--images", exists=True, help="a folder of images or a dataset manifest"),
    out: Path = typer.Option(..., "--out", help="NPZ to write (the `vsbench score` format)"),
    batch_size: int = typer.Option(32, help="images per request"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Embed images through a server into the NPZ format `vsbench score` reads.

    A dataset with a query split (folder layout with query/, or an inter manifest) gives two files:
    OUT (gallery) and OUT's name with .queries.npz (queries).
    """
    from services.evaluator.runner import embed_to_npz

    written, errors = embed_to_npz(server, images, out, batch_size=batch_size, show_progress=not quiet)
    for path, rows in written.items():
        console.print(f"wrote {rows} embeddings to {path}", highlight=False)
    if errors:
        console.print(f"{len(errors)} images failed:")
    for error in errors[:20]:
        console.print(f"  {error['image_id']}: {error['code']}: {error['message']}", highlight=False)
    if len(written) == 2:
        gallery, queries = written
        console.print(f"score them with: vsbench score --gallery {gallery} --queries {queries} --out results.json",
                      highlight=False)
    if not any(written.values()):
        raise typer.Exit(code=1)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("vsbench-quickstart"), "--out", help="where results and the report go"),
    small: bool = typer.Option(False, "--small", help="a reduced dataset (used by the test suite)"),
    models: str = typer.Option("efficientnet-lite0,open-nsfw,histogram", help="registry models to serve"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Evaluate real pretrained models on real photos through the real services, in a few minutes."""
    from services.evaluator.quickstart.run import run_quickstart

    run_quickstart(out, small=small, model_names=[m.strip() for m in models.split(",") if m.strip()],
                   console=console, show_progress=not quiet)


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
    from services.embedder.backends.registry import UnknownModelError
    from services.embedder.triton_export import ExportError, export_triton

    try:
        result = export_triton(model, out, max_batch=max_batch, instance_kind=instance_kind,
                               instance_count=instance_count, weights=weights, verify=verify)
    except (UnknownModelError, ExportError, ValueError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))
    console.print(result.summary(), highlight=False, soft_wrap=True)
    console.print(f"wrote {result.model_dir} and {result.readme_path}", highlight=False, soft_wrap=True)


# ---- catalogues ----------------------------------------------------------------------------------
@app.command("datasets")
def list_datasets() -> None:
    """Dataset formats this version can load."""
    import inspect

    from services.evaluator.datasets.registry import DATASET_LOADERS, dataset_options

    for name, loader in DATASET_LOADERS.items():
        summary = (inspect.getdoc(loader) or "").splitlines()[0] if inspect.getdoc(loader) else ""
        options = ", ".join(f"{k}={v!r}" for k, v in dataset_options(name).items())
        console.print(f"[bold]{name}[/]  {summary}\n    options: {options or 'none'}", highlight=False)


@app.command("models")
def list_models() -> None:
    """Models in the embedder registry (open models; commercial ones are served by the api_proxy)."""
    from services.embedder.backends.registry import list_specs

    from rich.table import Table

    table = Table("model", "backend", "dim", "pooling", "weights (default)", "preprocessing", show_lines=False)
    for spec in list_specs():
        table.add_row(spec.name, spec.kind, str(spec.dim or "from weights"), spec.pooling, spec.weights or "--weights",
                      spec.describe_preprocessing())
    Console().print(table)


if __name__ == "__main__":
    app()
