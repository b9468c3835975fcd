"""Running evaluations (`run`, `embed`, `quickstart`) and measuring a served model (`probe`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from services.evaluator.cli.core import (
    fail,
    parse_ks,
    app,
    stderr_console,
)


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
        fail("--embed-only and --score-only exclude each other")
    try:
        spec = RunSpec.from_yaml(config)
        if shard_index is not None or shard_count is not None:
            spec.shard = ShardEntry(index=shard_index or 0, count=shard_count or 1)
        overrides = {"search": search, "unanswerable_as_miss": unanswerable_as_miss, "reembed": reembed or None}
        spec = RunSpec.model_validate(
            {**spec.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        fail(f"{config}: {' '.join(str(exc).split())}")
        return
    check_model_definitions(spec)
    if dry_run:
        _print_plan(spec)
        return
    outcomes = run_spec(spec, embed=not score_only, score=not embed_only, console=stderr_console(), show_progress=not quiet)
    for outcome in outcomes:
        if outcome.result is not None:
            stderr_console().print(f"wrote {outcome.result.path}", highlight=False)
    failed = sum(outcome.failed for outcome in outcomes)
    if failed:
        sys.stderr.write(f"error: {failed} of {len(outcomes)} runs failed (see above); stored vectors are kept\n")
        raise typer.Exit(code=1)


def _print_plan(spec) -> None:
    from rich.console import Console
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
    stderr_console().print(
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
    out: Path = typer.Option(
        ..., "--out", help="OUT.npz: NPZ files; any other path: an embedding directory (both `vsbench score` formats)"
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="embedding directories: float32 or float16 (half the disk; ILIAS stores float16)"
    ),
    batch_size: int = typer.Option(32, help="images per request"),
    reembed: bool = typer.Option(False, "--reembed", help="replace an OUT made by another model fingerprint"),
    part: Optional[str] = typer.Option(
        None, "--part",
        help="i/N: embed only shard i of N (the images `vsbench run --shard-index i --shard-count N` embeds) into "
             "OUT/gallery/part-<i>/ and OUT/queries/part-<i>/; embedding directories only",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Embed images through a server into a format `vsbench score` reads.

    OUT ending in .npz: OUT (gallery) and, for a dataset with a query split (folder layout with
    query/, or an inter manifest), OUT's name with .queries.npz; held in memory while written.
    Any other OUT: an embedding directory, written streaming for galleries larger than memory:
    OUT/gallery/ and OUT/queries/, each embeddings.npy + items.parquet. Interrupted, either keeps
    what arrived (in OUT's .partial folder) and a rerun embeds only the rest.

    --part i/N (one pod of an Indexed Job each): the N part directories read back as one split.
    """
    from services.evaluator.runner import embed_to_files, score_command_for
    from services.evaluator.sharded_search import Shard

    if dtype not in ("float32", "float16"):
        raise typer.BadParameter(f"--dtype takes float32 or float16, got {dtype!r}")
    spec = None if part is None else Shard.parse(part, "--part")
    outcome = embed_to_files(server, images, out, batch_size=batch_size, show_progress=not quiet, reembed=reembed,
                             dtype=dtype, part=None if spec is None else (spec.index, spec.count))
    report = outcome.report
    stderr_console().print(
        f"embedded {report.embedded}, already stored {report.already_stored}, errors {len(report.errors)} -> {out}",
        highlight=False,
    )
    for error in report.errors[:20]:
        stderr_console().print(f"  {error['image_id']}: {error['code']}: {error['message']}", highlight=False)
    if len(report.errors) > 20:
        stderr_console().print(f"  ... and {len(report.errors) - 20} more", highlight=False)
    if report.failure:
        sys.stderr.write(f"error: {report.failure}; what arrived is kept, rerun to resume\n")
        raise typer.Exit(code=1)
    hint = score_command_for(out)
    if hint:
        when = "" if spec is None else f"once all {spec.count} parts are written, "
        stderr_console().print(f"{when}score them with: {hint}", highlight=False)
    if report.embedded + report.already_stored == 0:
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
                   console=stderr_console(), show_progress=not quiet)


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
        fail("give exactly one of --server HOST:PORT, --model NAME or --kind KIND")
    if options is not None and kind is None:
        fail("--options goes with --kind")
    if out.exists() and not overwrite:
        fail(f"{out} already exists (--overwrite replaces it)")
    thresholds = ProbeThresholds(max_abs_diff=max_abs_diff, min_batch_cos=min_batch_cos, min_parity_cos=min_parity_cos)
    items, source = load_images(images, limit)
    sizes = parse_ks(batches, "--batches")
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
    stderr_console().print(
        f"{result.model}: dim {result.dim}, norms {result.norms.min:.4g}..{result.norms.max:.4g}, "
        f"determinism max|diff| {result.determinism_max_abs_diff:.3g}, batch-invariance min cos "
        f"{result.batch_invariance_min_cos:.6f}, {speeds}, parity {parity} -> {out}",
        highlight=False,
    )
    for problem in result.problems:
        sys.stderr.write(f"problem: {problem}\n")
    if not result.ok:
        raise typer.Exit(code=1)
