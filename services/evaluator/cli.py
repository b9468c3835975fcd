"""`vsbench`: evaluate embedding models for instance-level product retrieval.

Each command imports what it needs when it runs, so `vsbench --help` stays fast and the scoring
commands work without torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from services.common.errors import VsbenchError


class _CommandGroup(TyperGroup):
    """The process edge of every command: a domain error (VsbenchError) ends in one line on
    stderr and exit status 2; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VsbenchError as exc:
            logging.getLogger(__name__).debug("command failed", exc_info=True)
            sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
            ctx.exit(2)


app = typer.Typer(
    cls=_CommandGroup,
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
    out: Path = typer.Option(..., "--out", help="run record JSON to write (a .queries.jsonl is written beside it)"),
    dataset_name: Optional[str] = typer.Option(None, "--dataset", help="dataset name in the record (default: gallery file name)"),
    model_name: Optional[str] = typer.Option(None, "--model", help="model name in the record (default: gallery file name)"),
    unanswerable_as_miss: bool = typer.Option(False, help="score queries without relevant items as misses"),
    engine: str = typer.Option("auto", help="search engine: auto (the faster on this machine, calibrated once and cached), torch, numpy"),
    open_set: Optional[bool] = typer.Option(
        None, "--open-set/--no-open-set",
        help="open-set rejection figures (default: whenever out-of-catalog queries exist)",
    ),
    scaling: bool = typer.Option(False, "--scaling", help="metrics vs number of distractors (open galleries)"),
    compression: bool = typer.Option(
        False, "--compression", help="truncation / float16 / int8 / binary (+ Qdrant's quantization) sweep"
    ),
    target_precision: float = typer.Option(
        0.95, "--target-precision", min=0.0, max=1.0, help="open set: precision the recommended threshold aims at"
    ),
) -> None:
    """Score precomputed embeddings (exact search, Recall@K and mAP@K, in percent).

    Writes a run record that `vsbench table` and `vsbench report` read; --open-set, --scaling and
    --compression add the decision analytics (docs/analytics.md)."""
    from services.evaluator.analytics.analyses import AnalysisOptions
    from services.evaluator.pipeline import Evaluation, EvaluationOptions
    from services.evaluator.precomputed import open_npz_inputs

    recall_k, map_ks = _parse_ks(k, "--k"), _parse_ks(map_k, "--map-k")
    _check_engine(engine)
    if out.exists():
        _fail(f"{out} already exists; results are never overwritten")
    inputs = open_npz_inputs(gallery, queries, dataset_name=dataset_name, model_name=model_name)
    options = EvaluationOptions(
        recall_k=recall_k, map_k=map_ks, engine=engine, unanswerable_as_miss=unanswerable_as_miss, show_progress=False,
        analyses=AnalysisOptions(open_set=open_set, scaling=scaling, compression=compression,
                                 target_precision=target_precision),
    )
    try:
        outcome = Evaluation(inputs.store, out.parent, options).run(
            inputs.dataset, inputs.client, inputs.model_name, embed=False, out=out
        )
    finally:
        inputs.store.close()
    _print_record(outcome.result)


def _print_record(result) -> None:
    record = result.record
    if not result.ok:
        sys.stderr.write(f"error: {record.failure} (record: {result.path})\n")
        raise typer.Exit(code=1)
    metrics = ", ".join(f"{name} {value:.2f}" if value is not None else f"{name} n/a"
                        for name, value in record.metrics.items())
    q = record.queries
    console.print(f"{metrics}  ({q.scored} queries scored, {q.unanswerable} unanswerable) -> {result.path}",
                  highlight=False)


@app.command("score-ilias")
def score_ilias(
    features: Path = typer.Argument(..., exists=True, file_okay=False, help="folder of ILIAS's official HDF5 features"),
    out: Path = typer.Option(..., "--out", help="run record JSON to write (a .queries.jsonl is written beside it)"),
    protocol: str = typer.Option(
        "ilias", "--protocol", help="ilias: the official evaluation (as-stored scores, official AP); vsbench: ours"
    ),
    ilias_dir: Optional[Path] = typer.Option(
        None, "--ilias-dir", file_okay=False,
        help="ILIAS folder holding image_ids/ (default: FEATURES or its parent when they hold it)",
    ),
    k: str = typer.Option("1,5", "--k", help="Recall@K cut-offs"),
    map_k: str = typer.Option("20,1000", "--map-k", help="mAP@K cut-offs (ILIAS's own metric is mAP@1000)"),
    text_queries: bool = typer.Option(False, "--text-queries", help="also score features_text_queries.hdf5"),
    total_distractors: Optional[int] = typer.Option(
        None, "--total-distractors", min=0, help="use the first N distractor files (official --total_distractors)"
    ),
    max_distractors: Optional[int] = typer.Option(None, min=0, help="use only the first N distractors"),
    mini_ids: Optional[Path] = typer.Option(None, help="id list selecting distractors (e.g. mini-ILIAS 5M)"),
    model_name: Optional[str] = typer.Option(None, "--model", help="model name in the record (default: the folder name)"),
    taxonomy: Optional[Path] = typer.Option(
        None, "--taxonomy", dir_okay=False, help="official misc/taxonomy.json for category breakdowns"
    ),
    engine: str = typer.Option("auto", help="search engine for --protocol vsbench: auto, torch, numpy"),
) -> None:
    """Score published ILIAS features (features_image_queries / positives / distractors_*.hdf5)."""
    from services.evaluator.ilias import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol takes {' or '.join(PROTOCOLS)}, got {protocol!r}")
    _check_engine(engine)
    if out.exists():
        _fail(f"{out} already exists; results are never overwritten")
    recall_k, map_ks = _parse_ks(k, "--k"), _parse_ks(map_k, "--map-k")
    if protocol == "ilias":
        from services.evaluator.ilias.official import score_ilias_official

        summary, outcomes = score_ilias_official(
            features, dataset_dir=ilias_dir, recall_k=recall_k, map_k=map_ks, text_queries=text_queries,
            total_distractors=total_distractors, max_distractors=max_distractors, selected_ids=mini_ids,
            taxonomy=taxonomy,
        )
    else:
        from services.evaluator.ilias.vsbench import score_ilias_vsbench

        if text_queries or taxonomy is not None:
            _fail("--text-queries and --taxonomy need --protocol ilias")
        summary, outcomes = score_ilias_vsbench(
            features, recall_k=recall_k, map_k=map_ks, max_distractors=max_distractors,
            selected_ids=mini_ids, distractor_files=total_distractors, engine=engine,
        )
    _print_record(_write_summary_record(summary, outcomes(), out, model_name or features.name))
    _print_ilias_extras(summary)


def _print_ilias_extras(summary: dict) -> None:
    """The official evaluation's extra lines: text-query metrics and the breakdowns of the largest K."""
    text = summary.get("text_queries")
    if text:
        console.print("text queries: " + ", ".join(f"{n} {v:.2f}" for n, v in text["metrics"].items()),
                      highlight=False)
    for query_set, per_k in summary.get("breakdowns", {}).items():
        name, parts = max(per_k.items(), key=lambda item: int(item[0].split("@")[1]))
        line = [f"oracle {parts['oracle']:.2f}"]
        for group in ("scale", "clutter", "categories"):
            if parts.get(group):
                line.append(f"{group}: " + ", ".join(f"{g} {v:.2f}" for g, v in parts[group].items()))
        console.print(f"{query_set} queries {name} " + "; ".join(line), highlight=False, soft_wrap=True)


def _write_summary_record(summary: dict, outcomes, out: Path, model_name: str):
    """A RunRecord from a scorer that works outside the embedding loop (ILIAS's published
    features: no images, no embedding service)."""
    from services.evaluator.pipeline import versions
    from services.evaluator.record import (
        DatasetRecord, GalleryCounts, ModelRecord, ProtocolRecord, QueryCounts, RunRecord,
    )
    from services.evaluator.results import new_run_id, now_iso, write_run

    dataset = summary["dataset"]
    record = RunRecord(
        run_id=new_run_id(),
        created=now_iso(),
        dataset=DatasetRecord(
            name=dataset["name"], setup=summary["protocol"]["setup"], gallery_type=summary["protocol"]["gallery_type"],
            description=dataset.get("description", ""), source=dataset.get("source", {}),
        ),
        model=ModelRecord(
            name=model_name, dim=int(summary.get("model", {}).get("dim", 0)), backend="precomputed",
            preprocessing=summary.get("model", {}).get("preprocessing", "as in the feature files"),
            dtype=summary.get("model", {}).get("dtype", "float32"),
        ),
        protocol=ProtocolRecord(**summary["protocol"]),
        metrics=summary["metrics"],
        queries=QueryCounts(**summary["queries"]),
        gallery=GalleryCounts(**summary["gallery"]),
        timings=summary.get("timings", {}),
        breakdowns=summary.get("breakdowns"),
        text_queries=summary.get("text_queries"),
        versions=versions(),
    )
    return write_run(out.parent, record, outcomes, path=out)


# ---- tables and report ------------------------------------------------------------------------
@app.command()
def table(
    results_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a results directory"),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv or latex"),
    out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of stdout"),
    against: Optional[str] = typer.Option(
        None, "--against",
        help="'published' (the report's Table 3, shipped) or a CSV of published values: reproduced, published, delta",
    ),
    published_setting: str = typer.Option(
        "", "--published-setting", help="with --against: compare with another published setting, e.g. '768 px'"
    ),
    view: str = typer.Option(
        "leaderboard", "--view", help="leaderboard, or an analysis: open-set, scaling, compression, pareto"
    ),
) -> None:
    """The report's Table 3: models x datasets, R@1 / R@5 / mAP@20, with the average over common datasets.

    --view prints an analysis instead (docs/analytics.md)."""
    from services.evaluator.results import load_results
    from services.evaluator.tables import ANALYSIS_VIEWS, render_analysis_view, render_table

    if view != "leaderboard" and view not in ANALYSIS_VIEWS:
        _fail(f"--view takes leaderboard, {', '.join(ANALYSIS_VIEWS)}; got {view!r}")
    # The Pareto view also reads older runs (a run that reused stored vectors measured no throughput).
    runs = [run for run in load_results(results_dir, latest_only=view != "pareto", on_skip=_skipped) if run.ok]
    if not runs:
        _fail(f"no vsbench run records with metrics under {results_dir}")
    if against is not None:
        from services.evaluator.published import comparisons_for_runs, load_published, render_comparisons

        published = load_published(None if against == "published" else Path(against))
        text = render_comparisons(comparisons_for_runs(runs, published, setting=published_setting), fmt)
    else:
        text = render_table(runs, fmt) if view == "leaderboard" else render_analysis_view(runs, view, fmt)
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
    from services.evaluator.report import build_site
    from services.evaluator.runner import dataset_image_resolver

    index = build_site(results_dir, out, image_resolver=dataset_image_resolver(results_dir))
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
    reembed: bool = typer.Option(
        False, "--reembed", help="replace stored vectors that another model fingerprint made (default: refuse)"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="validate the config and list datasets x models, stored and left to embed; no server is called"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run datasets x models end to end from a config (servers by address, or in-process)."""
    import yaml
    from pydantic import ValidationError

    from services.evaluator.config import RunSpec, ShardEntry
    from services.evaluator.runner import check_model_definitions, run_spec

    if embed_only and score_only:
        _fail("--embed-only and --score-only exclude each other")
    try:
        spec = RunSpec.from_yaml(config)
        if shard_index is not None or shard_count is not None:
            spec.shard = ShardEntry(index=shard_index or 0, count=shard_count or 1)
        overrides = {"search": search, "unanswerable_as_miss": unanswerable_as_miss, "reembed": reembed or None}
        spec = RunSpec.model_validate(
            {**spec.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        _fail(f"{config}: {' '.join(str(exc).split())}")
        return
    check_model_definitions(spec)
    if dry_run:
        _print_plan(spec)
        return
    outcomes = run_spec(spec, embed=not score_only, score=not embed_only, console=console, show_progress=not quiet)
    for outcome in outcomes:
        if outcome.result is not None:
            console.print(f"wrote {outcome.result.path}", highlight=False)
    failed = sum(outcome.failed for outcome in outcomes)
    if failed:
        sys.stderr.write(f"error: {failed} of {len(outcomes)} runs failed (see above); stored vectors are kept\n")
        raise typer.Exit(code=1)


def _print_plan(spec) -> None:
    from rich.table import Table

    from services.common.fingerprint import short
    from services.evaluator.runner import plan_spec

    rows = plan_spec(spec)
    table = Table("dataset", "model", "images", "missing", "stored", "to embed", "stored fingerprint", "estimate")
    for row in rows:
        if row.problem:
            table.add_row(row.dataset, row.model, "[red]cannot load[/]", "", "", "", "", row.problem)
            continue
        if row.estimate_s is None:
            estimate = "unknown (no earlier record of this model)"
        else:
            estimate = f"{row.estimate_s / 3600:.2f} h at {row.images_per_s:.0f} img/s" if row.to_embed else "nothing to embed"
        table.add_row(
            row.dataset, row.model, str(row.images), str(row.missing_files), str(row.stored), str(row.to_embed),
            "new collection" if row.stored_fingerprint is None else (short(row.stored_fingerprint) or "(none)"),
            estimate,
        )
    Console(width=200).print(table)
    known = [r.estimate_s for r in rows if not r.problem and r.estimate_s is not None]
    total = sum(r.to_embed for r in rows if not r.problem)
    console.print(
        f"{len(spec.datasets)} dataset(s) x {len(spec.models)} model(s): {total} images to embed; "
        f"known estimates add up to {sum(known) / 3600:.2f} h (embedding only, one server per model)",
        highlight=False,
    )
    if any(r.problem for r in rows):
        raise typer.Exit(code=1)


@app.command()
def embed(
    server: str = typer.Option(..., "--server", help="host:port of an Embedder server"),
    images: Path = typer.Option(..., "--images", exists=True, help="a folder of images or a dataset manifest"),
    out: Path = typer.Option(..., "--out", help="NPZ to write (the `vsbench score` format)"),
    batch_size: int = typer.Option(32, help="images per request"),
    reembed: bool = typer.Option(False, "--reembed", help="replace an OUT made by another model fingerprint"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Embed images through a server into the NPZ format `vsbench score` reads.

    A dataset with a query split (folder layout with query/, or an inter manifest) gives two files:
    OUT (gallery) and OUT's name with .queries.npz (queries). Interrupted, it keeps what arrived
    (in OUT's .partial folder) and a rerun embeds only the rest.
    """
    from services.evaluator.runner import embed_to_npz
    from services.evaluator.stores.npz import queries_path_for

    outcome = embed_to_npz(server, images, out, batch_size=batch_size, show_progress=not quiet, reembed=reembed)
    report = outcome.report
    console.print(
        f"embedded {report.embedded}, already stored {report.already_stored}, errors {len(report.errors)} -> {out}",
        highlight=False,
    )
    for error in report.errors[:20]:
        console.print(f"  {error['image_id']}: {error['code']}: {error['message']}", highlight=False)
    if len(report.errors) > 20:
        console.print(f"  ... and {len(report.errors) - 20} more", highlight=False)
    if report.failure:
        sys.stderr.write(f"error: {report.failure}; what arrived is kept, rerun to resume\n")
        raise typer.Exit(code=1)
    if queries_path_for(out).exists():
        console.print(f"score them with: vsbench score --gallery {out} --queries {queries_path_for(out)} --out results.json",
                      highlight=False)
    if report.embedded + report.already_stored == 0:
        raise typer.Exit(code=1)


# ---- sharded exact search (an Indexed Job per shard, then one merge; docs/deployment.md) -----
@app.command("search-shard")
def search_shard_command(
    queries: Path = typer.Option(..., "--queries", help="queries .npy (N_q x D, float16/32)"),
    gallery: Path = typer.Option(..., "--gallery", help="gallery .npy (N x D, float16/32), read memory-mapped"),
    shard: str = typer.Option(..., "--shard", help="i/N: this process scores gallery rows [N_g*i//N, N_g*(i+1)//N)"),
    k: int = typer.Option(..., "--k", min=1, help="candidates kept per query"),
    out: Path = typer.Option(..., "--out", help="shard file (.npz) to write"),
    exclude: Optional[Path] = typer.Option(
        None, "--exclude", help="int .npy: per query a global gallery position never returned (intra self-match) or -1"
    ),
    engine: str = typer.Option("auto", help="GEMM engine: auto (calibrated), torch, numpy"),
) -> None:
    """Exact top-K of every query within one contiguous gallery shard; `vsbench search-merge`
    combines the shard files into the single-process result."""
    import numpy as np

    from services.evaluator.sharded_search import Shard, load_exclude, load_matrix, search_shard, write_npz

    _check_engine(engine)
    spec = Shard.parse(shard)
    if out.exists():
        _fail(f"{out} already exists; results are never overwritten")
    q = load_matrix(queries, "queries")
    g = load_matrix(gallery, "gallery")
    ex = None if exclude is None else load_exclude(exclude)
    arrays = search_shard(np.asarray(q, dtype=np.float32), g, spec, k, exclude=ex, engine=engine)
    write_npz(out, arrays)
    console.print(
        f"shard {spec.index}/{spec.count}: gallery rows {int(arrays['start'])}..{int(arrays['stop'])}, "
        f"{q.shape[0]} queries, k={k} -> {out}",
        highlight=False,
    )


@app.command("search-merge")
def search_merge_command(
    parts: list[Path] = typer.Argument(..., help="every shard file of one search (part-*.npz), or their folder"),
    out: Path = typer.Option(..., "--out", help="top-K file (.npz: indices, scores) to write"),
) -> None:
    """Merge `vsbench search-shard` files into the final top-K (score desc, gallery position asc)."""
    from services.evaluator.sharded_search import merge_shards, shard_files, topk_arrays, write_npz

    if out.exists():
        _fail(f"{out} already exists; results are never overwritten")
    files = shard_files(parts)
    top = merge_shards(files)
    write_npz(out, topk_arrays(top))
    console.print(f"merged {len(files)} shard files: {top.indices.shape[0]} queries, k={top.indices.shape[1]} -> {out}",
                  highlight=False)


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
    from services.embedder.triton_export import export_triton

    result = export_triton(model, out, max_batch=max_batch, instance_kind=instance_kind,
                           instance_count=instance_count, weights=weights, verify=verify)
    console.print(result.summary(), highlight=False, soft_wrap=True)
    console.print(f"wrote {result.model_dir} and {result.readme_path}", highlight=False, soft_wrap=True)


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
        console.print(f"[bold]{name}[/]  {summary}\n    options: {options or 'none'}", highlight=False)


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
        _fail(f"no fetch for {name!r}: use ilias, sop or products10k")
    retry = RetryPolicy(attempts=retries)
    progress = RichDownloadProgress(console) if show_progress else None
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
        _fail(str(exc))
        return
    finally:
        if progress is not None:
            progress.close()
    if report.instructions:
        sys.stdout.write(report.instructions + "\n")
        console.print("nothing was downloaded", highlight=False)
        return
    console.print(f"{name}: {len(report.downloaded)} file(s) in place, {len(report.extracted)} archive(s) "
                  f"extracted in {report.directory}", highlight=False)
    if report.skipped:
        console.print(f"{len(report.skipped)} listed file(s) left out (--max-shards)", highlight=False)


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
        _fail(str(exc).splitlines()[0])
        return
    digest = write_products10k_subset(subset, out)
    console.print(f"wrote {len(subset.image_ids)} ids of {subset.products} products to {out} (sha256 {digest})",
                  highlight=False)


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


@app.command()
def probe(
    out: Path = typer.Option(..., "--out", help="probe JSON to write (report: <results>/probes/<model>.json)"),
    server: Optional[str] = typer.Option(None, "--server", help="host:port of an Embedder server"),
    model: Optional[str] = typer.Option(None, "--model", help="registry model to load in this process"),
    kind: Optional[str] = typer.Option(None, "--kind", help="backend kind to load in this process (with --options)"),
    options: Optional[str] = typer.Option(None, "--options", help="the kind's options as a JSON object"),
    weights: Optional[str] = typer.Option(None, "--weights", help="weights for --model / --kind"),
    device: str = typer.Option("cpu", "--device", help="device for an in-process model"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads for an in-process model"),
    images: Optional[Path] = typer.Option(None, "--images", help="folder of images (default: the quickstart photos)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="use only the first N images"),
    batches: str = typer.Option("1,32,128", "--batches", help="request sizes whose images/s is measured"),
    throughput_images: int = typer.Option(128, "--throughput-images", min=1, help="images timed per request size"),
    max_abs_diff: float = typer.Option(1e-5, "--max-abs-diff", help="determinism threshold"),
    min_batch_cos: float = typer.Option(0.9999, "--min-batch-cos", help="batch-invariance threshold"),
    min_parity_cos: float = typer.Option(0.9999, "--min-parity-cos", help="reference-parity threshold"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing OUT"),
) -> None:
    """Measure what a served model does: dim, norms, determinism, batch invariance, images/s,
    preprocessing, fingerprint, parity with its reference library when installed.

    Writes OUT even when a check fails; exits 1 when any did (the problems are printed)."""
    import json

    from services.evaluator.probe import ProbeThresholds, load_images, run_probe

    if sum(x is not None for x in (server, model, kind)) != 1:
        _fail("give exactly one of --server HOST:PORT, --model NAME or --kind KIND")
    if options is not None and kind is None:
        _fail("--options goes with --kind")
    if out.exists() and not overwrite:
        _fail(f"{out} already exists (--overwrite replaces it)")
    thresholds = ProbeThresholds(max_abs_diff=max_abs_diff, min_batch_cos=min_batch_cos, min_parity_cos=min_parity_cos)
    items, source = load_images(images, limit)
    sizes = _parse_ks(batches, "--batches")
    backend = None
    if server is not None:
        from services.evaluator.clients.grpc import GrpcEmbeddingClient

        target = f"grpc://{server}"

        def connect(size: int):
            # One request at a time: a request of one must not be batched with another by the server.
            return GrpcEmbeddingClient(server, batch_size=size, max_in_flight=1)
    else:
        from services.embedder.backends.registry import build_backend, load_backend
        from services.evaluator.clients.inprocess import InProcessEmbeddingClient

        if kind is not None:
            try:
                parsed = json.loads(options or "{}")
            except ValueError as exc:
                raise typer.BadParameter(f"--options is not JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise typer.BadParameter("--options must be a JSON object")
            if weights is not None:
                parsed.setdefault("weights", weights)
            backend = build_backend(kind, parsed, device=device, threads=threads, max_batch=max(sizes + [32]))
            target = f"in-process:kind={kind}"
        else:
            backend = load_backend(model, weights=weights, device=device, threads=threads, max_batch=max(sizes + [32]))
            target = f"in-process:{model}"

        def connect(size: int):
            return InProcessEmbeddingClient(backend, batch_size=size, owns_backend=False)

    try:
        result = run_probe(connect, items, target=target, source=source, thresholds=thresholds,
                           throughput_batches=sizes, throughput_images=throughput_images)
    finally:
        if backend is not None:
            backend.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.to_json(), encoding="utf-8")
    speeds = ", ".join(f"b{t.request_size} {t.images_per_s:.1f}/s" for t in result.throughput)
    parity = result.parity.status + (f" (min cos {result.parity.min_cos:.6f})" if result.parity.min_cos is not None else "")
    console.print(
        f"{result.model}: dim {result.dim}, norms {result.norms.min:.4g}..{result.norms.max:.4g}, "
        f"determinism max|diff| {result.determinism_max_abs_diff:.3g}, batch-invariance min cos "
        f"{result.batch_invariance_min_cos:.6f}, {speeds}, parity {parity} -> {out}",
        highlight=False,
    )
    for problem in result.problems:
        sys.stderr.write(f"problem: {problem}\n")
    if not result.ok:
        raise typer.Exit(code=1)


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
    report = run_index(
        catalog=catalog, dataset_format=dataset_format, dataset_path=dataset_path, options=option, embedder=embedder,
        collection=collection, store=store, qdrant_url=qdrant_url, index_options=given, threshold_from=threshold_from,
        reembed=reembed, embedder_tls=embedder_tls, embedder_auth_token_env=embedder_auth_token_env,
    )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.print(
            f"{report.collection}: {report.points} images ({report.added} added, {report.updated} updated, "
            f"{report.removed} removed, {report.unchanged} unchanged, {len(report.failed)} failed), "
            f"threshold {report.threshold}", highlight=False)
        for image_id, reason in report.failed[:20]:
            console.print(f"  {image_id}: {reason}", highlight=False)
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


def _skipped(message: str) -> None:
    sys.stderr.write(f"skipped: {message}\n")


if __name__ == "__main__":
    app()
