"""`vsbench report`: a static companion site built from result files only (never by re-running).

    build_site(results_dir, out_dir, image_resolver=None) -> path of index.html

Pages (all links relative, so the folder works from file:// and from any static host; no CDN,
every script and style is copied from this package's assets/):

    index.html                      leaderboard in the seed's Table 3 layout (sortable, filterable)
    stats.html                      95% bootstrap intervals and pairwise paired tests per dataset
    protocol.html                   how every number was computed (one section per distinct protocol)
    datasets/<d>.html               Table 1 facts, results with intervals, Recall@K, cost/throughput
    models/<m>.html                 Table 2 model card, usage/cost, results across datasets
    failures/<d>/<m>.html           queries the model missed at rank 1, with thumbnails and top-5
    compare/<d>/<a>--<b>.html       queries one model gets right and the other wrong
    hard/<d>.html                   queries every model misses
    analysis/<d>/<kind>.html        open-set / scaling / compression analyses (analysis_pages)
    pareto.html                     accuracy vs $/1k vs images/s vs bytes, Pareto-optimal marked
    published.html                  reproduced vs the report's published Table 3 values, deltas
    thumbs/, assets/                small JPEG thumbnails; css/js

This module loads the results and computes what the pages share (SiteContext); the pages are
written by page_writer.PageWriterBase and its mixins overview_pages (index, stats, protocol),
detail_pages (datasets/, models/) and query_pages (failures/, compare/, hard/), with the text
helpers in formatting and the protocol ids in protocols.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from services.common.errors import VsbenchError
from services.evaluator.report import charts
from services.evaluator.report.analysis_pages import AnalysisPages
from services.evaluator.report.data import (
    CellStats,
    PairComparison,
    PerQueryError,
    RunQueries,
    cell_stats,
    load_run_queries,
    pairwise,
)
from services.evaluator.report.detail_pages import DetailPages
from services.evaluator.report.formatting import pct, unique_slugs
from services.evaluator.report.overview_pages import OverviewPages
from services.evaluator.report.protocols import ProtocolRegistry
from services.evaluator.report.query_pages import QueryPages
from services.evaluator.report.thumbs import ImageResolver, ThumbnailStore, default_resolver
from services.evaluator.results import RunResult, load_results
from services.evaluator.tables import Leaderboard, ModelRow, build_leaderboard, metric_label

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
ASSETS = PACKAGE_DIR / "assets"
MARKER = ".vsbench-site"
# What a rebuild replaces inside an output folder it made before (nothing else is touched).
GENERATED = (
    "index.html",
    "stats.html",
    "protocol.html",
    "datasets",
    "models",
    "failures",
    "compare",
    "hard",
    "thumbs",
    "assets",
    "analysis",
    "pareto.html",
    "published.html",
)


@dataclass
class SiteOptions:
    n_boot: int = 1000  # bootstrap replicates per cell
    n_resamples: int = 10_000  # Monte Carlo sign flips per paired test when not exact
    alpha: float = 0.05
    seed: int = 0
    max_failures: int = 100  # queries shown per failure gallery (all are counted)
    max_compare: int = 40  # queries shown per direction on a model-vs-model page
    thumb_px: int = 96
    recall_curve_max_k: int = 20
    title: str = "vsbench results"


class SiteError(VsbenchError, ValueError):
    """The site cannot be built as asked (no results, an unsafe output folder)."""


# ---- the build -------------------------------------------------------------------------------


@dataclass
class SiteContext:
    runs: list[RunResult]
    board: Leaderboard
    dslug: dict[str, str]
    mslug: dict[str, str]
    protocols: ProtocolRegistry
    queries: dict[tuple[str, str], RunQueries]  # (dataset, model)
    warnings: list[str]
    cells: dict[tuple[str, str, str], CellStats]  # (dataset, model, metric)
    pairs: dict[tuple[str, str], dict[tuple[str, str], PairComparison]]  # (dataset, metric) -> pairs
    colors: dict[str, tuple[str, str]]
    thumbs: ThumbnailStore
    options: SiteOptions
    generated: str
    source_name: str
    # `vsbench probe` results under <results>/probes/, per model, when their fingerprint matches
    # the model's newest record (a probe of other weights says nothing about these results).
    probes: dict[str, Any] = field(default_factory=dict)

    def run(self, dataset: str, model: str) -> RunResult | None:
        row = next((r for r in self.board.models if r.name == model), None)
        return row.runs.get(dataset) if row else None

    def models_of(self, dataset: str) -> list[ModelRow]:
        return [r for r in self.board.models if dataset in r.runs]

    def dataset_queries(self, dataset: str) -> dict[str, RunQueries]:
        return {
            m.name: self.queries[(dataset, m.name)]
            for m in self.models_of(dataset)
            if (dataset, m.name) in self.queries
        }


def build_site(
    results_dir: Path,
    out_dir: Path,
    image_resolver: ImageResolver | None = None,
    options: SiteOptions | None = None,
) -> Path:
    """Build the site from the newest run per (dataset, model) under results_dir; returns index.html.

    image_resolver(dataset_name, image_id) -> local image path or None; by default root/<image_id>
    under the dataset root recorded in each result, else a placeholder thumbnail.
    """
    options = options or SiteOptions()
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    runs = [run for run in load_results(results_dir) if run.ok]  # failed records have no metrics
    if not runs:
        raise SiteError(f"no vsbench run records with metrics under {results_dir}")
    _prepare_out_dir(out_dir, results_dir)

    board = build_leaderboard(runs)
    runs = [run for row in board.models for run in row.runs.values()]
    warnings: list[str] = []
    queries: dict[tuple[str, str], RunQueries] = {}
    for run in runs:
        try:
            loaded = load_run_queries(run)
        except PerQueryError as exc:
            warnings.append(f"{run.dataset} / {run.model}: {exc}; shown without per-query views")
            continue
        if loaded is None:
            warnings.append(
                f"{run.dataset} / {run.model}: no per-query file; no intervals, tests or galleries"
            )
        else:
            queries[(run.dataset, run.model)] = loaded

    cells: dict[tuple[str, str, str], CellStats] = {}
    for column in board.datasets:
        for row in board.models:
            if column.name not in row.runs:
                continue
            for metric in column.metrics:
                stats_ = cell_stats(
                    row.value(column.name, metric),
                    queries.get((column.name, row.name)),
                    metric,
                    n_boot=options.n_boot,
                    alpha=options.alpha,
                    seed=options.seed,
                )
                cells[(column.name, row.name, metric)] = stats_
                if not stats_.agrees:
                    warnings.append(
                        f"{column.name} / {row.name}: summary {metric_label(metric)} = "
                        f"{pct(stats_.value, 2)} but "
                        f"the per-query file gives {pct(stats_.mean, 2)}"
                    )

    pairs: dict[tuple[str, str], dict[tuple[str, str], PairComparison]] = {}
    for column in board.datasets:
        per_model = {m: q for (d, m), q in queries.items() if d == column.name}
        for metric in column.metrics:
            pairs[(column.name, metric)] = pairwise(
                per_model, metric, n_resamples=options.n_resamples, seed=options.seed
            )

    ctx = SiteContext(
        runs=runs,
        board=board,
        dslug=unique_slugs(c.name for c in board.datasets),
        mslug=unique_slugs(r.name for r in board.models),
        protocols=ProtocolRegistry(runs),
        queries=queries,
        warnings=warnings,
        cells=cells,
        pairs=pairs,
        colors={
            row.name: charts.series_style(i)
            for i, row in enumerate(sorted(board.models, key=lambda r: r.name))
        },
        thumbs=ThumbnailStore(out_dir, image_resolver or default_resolver(runs), size=options.thumb_px),
        options=options,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        source_name=results_dir.resolve().name,
        probes=_matching_probes(results_dir, board),
    )
    writer = _PageWriter(out_dir, ctx)
    shutil.copytree(ASSETS, out_dir / "assets", dirs_exist_ok=True)
    try:
        writer.leaderboard()
        writer.stats_page()
        writer.protocol_page()
        for column in board.datasets:
            writer.dataset_page(column.name)
            writer.hard_page(column.name)
            for row in ctx.models_of(column.name):
                writer.failure_page(column.name, row.name)
            names = sorted(ctx.dataset_queries(column.name))
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    writer.compare_page(column.name, a, b)
        for row in board.models:
            writer.model_page(row.name)
        for column in board.datasets:
            writer.analysis_pages(column.name)
        writer.pareto_page(load_results(results_dir, latest_only=False))
        writer.published_page()
    finally:
        ctx.thumbs.close()
    if ctx.thumbs.resolver_errors:
        log.warning(
            "the image resolver raised for %d image(s); they show the placeholder", ctx.thumbs.resolver_errors
        )
    log.info(
        "report: %d runs, %d thumbnails (%d placeholders) -> %s",
        len(runs),
        ctx.thumbs.made,
        ctx.thumbs.missing,
        out_dir,
    )
    return out_dir / "index.html"


def _matching_probes(results_dir: Path, board: Leaderboard) -> dict[str, Any]:
    """model -> its newest probe whose fingerprint equals the model's newest record's."""
    from services.evaluator.probe import PROBES_FOLDER, read_probe

    folder = results_dir / PROBES_FOLDER
    if not folder.is_dir():
        return {}
    probes = []
    for path in sorted(folder.glob("*.json")):
        try:
            probes.append(read_probe(path))
        except VsbenchError as exc:
            log.warning("report: skipping probe %s", exc)
    found: dict[str, Any] = {}
    for row in board.models:
        newest = max(row.runs.values(), key=lambda r: r.created)
        fingerprint = newest.record.model.fingerprint
        matching = [p for p in probes if fingerprint and p.fingerprint == fingerprint]
        if matching:
            found[row.name] = max(matching, key=lambda p: p.created)
    return found


def _prepare_out_dir(out_dir: Path, results_dir: Path) -> None:
    out, results = out_dir.resolve(), results_dir.resolve()
    if out == results or results.is_relative_to(out):
        raise SiteError(f"output folder {out_dir} holds the results {results_dir}; choose another folder")
    if out.exists() and not out.is_dir():
        raise SiteError(f"output {out_dir} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SiteError(
            f"output folder {out_dir} is not empty and was not made by `vsbench report`; "
            "choose a new or empty folder (nothing was written)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (out / MARKER).write_text("made by vsbench report; a rebuild replaces this folder's generated pages\n")


class _PageWriter(OverviewPages, DetailPages, QueryPages, AnalysisPages):
    """Writes every page of the site; the pages are grouped by kind in the mixins."""
