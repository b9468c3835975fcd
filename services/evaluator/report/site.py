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
    thumbs/, assets/                small JPEG thumbnails; css/js
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from services.common.errors import VsbenchError
from services.evaluator.report import charts
from services.evaluator.report.data import (
    CellStats,
    PairComparison,
    PerQueryError,
    RunQueries,
    cell_stats,
    cost_per_1k,
    hub_images,
    images_per_second,
    load_run_queries,
    missed_at_1,
    oracle_summary,
    pairwise,
    right_wrong,
)
from services.evaluator.report.thumbs import ImageResolver, ThumbnailStore, default_resolver
from services.evaluator.results import RunResult, load_results, path_segment
from services.evaluator.tables import (
    AVERAGE,
    Leaderboard,
    ModelRow,
    build_leaderboard,
    metric_k,
    metric_label,
)

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
TEMPLATES = PACKAGE_DIR / "templates"
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
)
# Keys never shown from free-form model details, in case a backend put a credential there.
_HIDDEN_KEY_PARTS = ("key", "token", "secret", "password", "authorization", "credential")


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


# ---- small helpers ---------------------------------------------------------------------------


def unique_slugs(names: Iterable[str]) -> dict[str, str]:
    """File-name slugs, unique even on case-insensitive file systems."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(set(names)):
        base = path_segment(name)
        slug, n = base, 2
        while slug.lower() in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug.lower())
        out[name] = slug
    return out


def pct(value: float | None, precision: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{precision}f}"


def signed(points: float) -> str:
    """+1.2 / −3.4 / 0.0 (never "-0.0"), with a true minus sign."""
    text = f"{abs(points):.1f}"
    if text == "0.0":
        return text
    return ("+" if points > 0 else "\u2212") + text


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _hidden(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _HIDDEN_KEY_PARTS)


def describe(value: Any, key: str = "") -> str:
    """A one-line human form of a free-form record field: dicts as k=v pairs, sizes as 224×224,
    other lists comma-separated."""
    if isinstance(value, Mapping):
        return (
            "; ".join(
                f"{k}={'(hidden)' if _hidden(str(k)) else describe(v, str(k))}" for k, v in value.items()
            )
            or "–"
        )
    if isinstance(value, (list, tuple)):
        if any(word in key.lower() for word in ("size", "shape", "resolution")) and all(
            isinstance(v, int) for v in value
        ):
            return "×".join(str(v) for v in value)
        return ", ".join(
            str(v) if isinstance(v, int) and not isinstance(v, bool) else describe(v) for v in value
        )
    return fmt_number(value)


def key_values(record: Any, limit: int = 240) -> list[tuple[str, str]]:
    """(key, value) rows of a free-form record; long values are cut (the result file has them whole)."""
    if not isinstance(record, Mapping):
        return []
    rows = []
    for key, value in record.items():
        text = "(hidden)" if _hidden(str(key)) else describe(value, str(key))
        rows.append((str(key), text if len(text) <= limit else text[: limit - 1] + "…"))
    return rows


def input_size(model: Mapping[str, Any]) -> str | None:
    """From the record's details or preprocessing: a field when there is one, else a best-effort
    reading of a preprocessing description ("resize 256, center crop 224" -> 224×224)."""
    details = model.get("details") if isinstance(model.get("details"), Mapping) else {}
    prep = model.get("preprocessing")
    for source in (details, prep if isinstance(prep, Mapping) else {}):
        for key in ("input_size", "image_size", "crop_size", "size", "resize"):
            if source.get(key) not in (None, "", {}):
                return describe(source[key], key)
    if isinstance(prep, str):
        pair = re.search(r"(\d{2,4})\s*[x×]\s*(\d{2,4})", prep)
        if pair:
            return f"{pair.group(1)}×{pair.group(2)} (from the preprocessing description)"
        crop = re.search(r"crop\D{0,12}?(\d{2,4})", prep, re.IGNORECASE)
        if crop:
            return f"{crop.group(1)}×{crop.group(1)} (from the preprocessing description)"
    return None


def metric_definition(metric: str, protocol: Mapping[str, Any]) -> str:
    kind = metric.partition("@")[0]
    if kind == "recall":
        return str(protocol.get("recall_definition") or "hit rate: 1 if any relevant item is in the top K")
    if kind == "map":
        return str(protocol.get("map_definition") or "AP@K = (1/min(K, n_rel)) * sum_{i<=K} P(i) rel(i)")
    return metric


def metric_anchor(metric: str) -> str:
    return {"recall": "metric-recall", "map": "metric-map"}.get(metric.partition("@")[0], "metrics")


def field_anchor(key: str) -> str:
    """Anchor of a protocol field: recall_k / recall_definition -> metric-recall, tie_rule -> tie-rule."""
    head = key.split("_")[0]
    if head in ("recall", "map"):
        return metric_anchor(head + "@")
    return key.replace("_", "-")


# ---- protocols -------------------------------------------------------------------------------


@dataclass
class ProtocolEntry:
    pid: str
    record: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return self.pid.lower()


class ProtocolRegistry:
    """Identical protocol records share one id (P1, P2, ...) so a reader sees at once which runs
    were computed the same way."""

    def __init__(self, runs: Sequence[RunResult]):
        self.entries: list[ProtocolEntry] = []
        self._by_key: dict[str, ProtocolEntry] = {}
        self._by_run: dict[tuple[str, str], ProtocolEntry] = {}
        for run in runs:
            record = run.data.get("protocol") or {}
            key = json.dumps(record, sort_keys=True, default=str)
            if key not in self._by_key:
                self._by_key[key] = ProtocolEntry(f"P{len(self.entries) + 1}", dict(record))
                self.entries.append(self._by_key[key])
            self._by_key[key].runs.append(run)
            self._by_run[(run.dataset, run.model)] = self._by_key[key]

    def of(self, run: RunResult) -> ProtocolEntry:
        return self._by_run[(run.dataset, run.model)]


# ---- the build -------------------------------------------------------------------------------


@dataclass
class _Context:
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
    runs = load_results(results_dir)
    if not runs:
        raise SiteError(f"no vsbench results (schema vsbench.result/v1) under {results_dir}")
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

    ctx = _Context(
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


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, fmt_p=fmt_p, num=fmt_number, label=metric_label, signed=signed)
    return env


class _PageWriter:
    def __init__(self, out_dir: Path, ctx: _Context):
        self.out = out_dir
        self.ctx = ctx
        self.env = _environment()

    # -- plumbing --
    def _write(self, relative: str, template: str, **context: Any) -> None:
        from markupsafe import Markup

        depth = relative.count("/")
        root = "../" * depth
        page = self.env.get_template(template).render(
            root=root,
            title=context.pop("title"),
            site_title=self.ctx.options.title,
            generated=self.ctx.generated,
            source_name=self.ctx.source_name,
            n_runs=len(self.ctx.runs),
            nav_datasets=[
                (c.name, f"datasets/{self.ctx.dslug[c.name]}.html") for c in self.ctx.board.datasets
            ],
            nav_models=[(r.name, f"models/{self.ctx.mslug[r.name]}.html") for r in self.ctx.board.models],
            svg=lambda s: Markup(s),
            **context,
        )
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")

    def dataset_href(self, dataset: str) -> str:
        return f"datasets/{self.ctx.dslug[dataset]}.html"

    def model_href(self, model: str) -> str:
        return f"models/{self.ctx.mslug[model]}.html"

    def failure_href(self, dataset: str, model: str) -> str:
        return f"failures/{self.ctx.dslug[dataset]}/{self.ctx.mslug[model]}.html"

    def compare_href(self, dataset: str, a: str, b: str) -> str:
        a, b = sorted((a, b))
        return f"compare/{self.ctx.dslug[dataset]}/{self.ctx.mslug[a]}--{self.ctx.mslug[b]}.html"

    def protocol_href(self, run: RunResult, metric: str | None = None) -> str:
        entry = self.ctx.protocols.of(run)
        return f"protocol.html#{entry.anchor}" + (f"-{metric_anchor(metric)}" if metric else "")

    def preprocessing(self, run: RunResult) -> str:
        return describe(run.data.get("model", {}).get("preprocessing")) if run.data.get("model") else "–"

    def cell_tooltip(self, run: RunResult, metric: str, cell: CellStats) -> str:
        protocol = run.data.get("protocol") or {}
        parts = [f"{metric_label(metric)} = {pct(cell.value)}%"]
        if cell.low is not None:
            parts.append(
                f"95% CI [{pct(cell.low)}, {pct(cell.high)}] over {cell.n:,} queries "
                f"(percentile bootstrap, B={self.ctx.options.n_boot})"
            )
        parts.append(f"{metric_definition(metric, protocol)}; K={metric_k(metric)}")
        if protocol.get("tie_rule"):
            parts.append(f"ties: {protocol['tie_rule']}")
        parts.append(f"preprocessing: {self.preprocessing(run)}")
        parts.append(f"protocol {self.ctx.protocols.of(run).pid}, run {run.data.get('run_id', '?')}")
        return " · ".join(parts)

    # -- pages --
    def leaderboard(self) -> None:
        ctx, board = self.ctx, self.ctx.board
        groups = []
        for group, models in board.model_groups():
            rows = []
            for row in models:
                cells = []
                for column in board.datasets:
                    run = row.runs.get(column.name)
                    for metric in column.metrics:
                        value = row.value(column.name, metric)
                        cell = ctx.cells.get((column.name, row.name, metric))
                        cells.append(
                            {
                                "dataset": column.name,
                                "dgroup": column.group,
                                "metric": metric,
                                "first": metric == column.metrics[0],
                                "value": value,
                                "best": board.is_best(column.name, metric, value),
                                "ci": None
                                if cell is None or cell.low is None
                                else f"{pct(cell.low)}–{pct(cell.high)}",
                                "tooltip": self.cell_tooltip(run, metric, cell)
                                if run and cell and value is not None
                                else "no result for this model on this dataset",
                                "href": f"{self.dataset_href(column.name)}#r-{ctx.mslug[row.name]}"
                                if run
                                else None,
                            }
                        )
                averages = [
                    {
                        "metric": m,
                        "value": row.average.get(m),
                        "best": board.is_best(AVERAGE, m, row.average.get(m)),
                    }
                    for m in board.average_metrics
                ]
                rows.append(
                    {
                        "name": row.name,
                        "href": self.model_href(row.name),
                        "cells": cells,
                        "averages": averages,
                    }
                )
            groups.append({"name": group, "rows": rows})
        dataset_groups = [
            {
                "name": g,
                "width": sum(len(c.metrics) for c in cols),
                "columns": [
                    {
                        "name": c.name,
                        "href": self.dataset_href(c.name),
                        "metrics": c.metrics,
                        "title": self._dataset_blurb(c.name),
                    }
                    for c in cols
                ],
            }
            for g, cols in board.dataset_groups()
        ]
        all_metrics = list(dict.fromkeys(m for c in board.datasets for m in c.metrics))
        self._write(
            "index.html",
            "leaderboard.html",
            title="Leaderboard",
            dataset_groups=dataset_groups,
            model_groups=groups,
            average_metrics=board.average_metrics,
            average_note=board.average_note(),
            all_metrics=all_metrics,
            average_json=json.dumps(board.average_metrics),
            dgroup_names=[g["name"] for g in dataset_groups],
            mgroup_names=[g["name"] for g in groups],
            warnings=ctx.warnings,
            n_boot=ctx.options.n_boot,
        )

    def _dataset_blurb(self, dataset: str) -> str:
        run = next(iter(r for r in self.ctx.runs if r.dataset == dataset))
        info = run.data.get("dataset", {})
        counts = info.get("counts") or {}
        text = f"{info.get('setup', '?')} retrieval, {info.get('gallery_type', '?')} gallery"
        if counts.get("query_images") is not None:
            text += f", {fmt_number(counts.get('query_images'))} queries"
        if counts.get("gallery_images") is not None:
            text += f", {fmt_number(counts.get('gallery_images'))} gallery images"
        return text

    def stats_page(self) -> None:
        ctx = self.ctx
        sections = []
        for column in ctx.board.datasets:
            models = ctx.models_of(column.name)
            ci_rows = []
            for row in models:
                ci_rows.append(
                    {
                        "name": row.name,
                        "href": self.model_href(row.name),
                        "cells": [ctx.cells.get((column.name, row.name, m)) for m in column.metrics],
                    }
                )
            matrices = []
            for metric in column.metrics:
                table = ctx.pairs.get((column.name, metric), {})
                if not table:
                    continue
                names = [r.name for r in models if (column.name, r.name) in ctx.queries]
                matrix_rows = []
                for a in names:
                    cells = []
                    for b in names:
                        comparison = table.get((a, b))
                        cells.append(None if comparison is None else self._pair_cell(column.name, comparison))
                    matrix_rows.append({"name": a, "cells": cells})
                matrices.append(
                    {
                        "metric": metric,
                        "names": names,
                        "rows": matrix_rows,
                        "method": ", ".join(sorted({c.result.method for c in table.values()})),
                    }
                )
            sections.append(
                {
                    "name": column.name,
                    "slug": ctx.dslug[column.name],
                    "href": self.dataset_href(column.name),
                    "metrics": column.metrics,
                    "ci_rows": ci_rows,
                    "matrices": matrices,
                }
            )
        self._write(
            "stats.html",
            "stats.html",
            title="Statistics",
            sections=sections,
            alpha=ctx.options.alpha,
            n_boot=ctx.options.n_boot,
            n_resamples=ctx.options.n_resamples,
        )

    def _pair_cell(self, dataset: str, comparison: PairComparison) -> dict[str, Any]:
        result = comparison.result
        significant = comparison.significant(self.ctx.options.alpha)
        verdict = "ns" if not significant else ("better" if result.diff > 0 else "worse")
        return {
            "diff": result.diff * 100,
            "diff_text": signed(result.diff * 100),
            "verdict": verdict,
            "href": self.compare_href(dataset, comparison.a, comparison.b),
            "tooltip": (
                f"{comparison.a} − {comparison.b}: {signed(result.diff * 100)} points "
                f"on {result.n:,} shared queries; "
                f"{comparison.a} better on {result.a_only:,}, {comparison.b} better on {result.b_only:,}; "
                f"{result.method}, p = {fmt_p(result.p_value)}, Holm-adjusted p = {fmt_p(comparison.p_holm)}"
            ),
        }

    def protocol_page(self) -> None:
        entries = []
        for entry in self.ctx.protocols.entries:
            fields, used = [], set()
            for key, value in entry.record.items():
                anchor = f"{entry.anchor}-{field_anchor(key)}"
                fields.append((key, describe(value), None if anchor in used else anchor))
                used.add(anchor)
            entries.append(
                {
                    "pid": entry.pid,
                    "anchor": entry.anchor,
                    "fields": fields,
                    "runs": [
                        {
                            "dataset": r.dataset,
                            "model": r.model,
                            "href": self.dataset_href(r.dataset),
                            "run_id": r.data.get("run_id", ""),
                        }
                        for r in entry.runs
                    ],
                }
            )
        runs = [
            {
                "dataset": r.dataset,
                "model": r.model,
                "run_id": r.data.get("run_id", ""),
                "created": r.created,
                "pid": self.ctx.protocols.of(r).pid,
                "anchor": self.ctx.protocols.of(r).anchor,
                "preprocessing": self.preprocessing(r),
                "versions": describe(r.data.get("versions") or {}),
            }
            for r in self.ctx.runs
        ]
        self._write(
            "protocol.html",
            "protocol.html",
            title="Protocol",
            entries=entries,
            runs=runs,
            options=self.ctx.options,
        )

    def dataset_page(self, dataset: str) -> None:
        ctx = self.ctx
        column = next(c for c in ctx.board.datasets if c.name == dataset)
        models = ctx.models_of(dataset)
        first = models[0].runs[dataset]
        recorded = first.data.get("dataset", {})
        info = {
            "description": str(recorded.get("description") or ""),
            "setup": str(recorded.get("setup") or "–"),
            "gallery_type": str(recorded.get("gallery_type") or "–"),
            "counts": recorded.get("counts") if isinstance(recorded.get("counts"), Mapping) else {},
            "source": recorded.get("source"),
        }
        source = info.get("source") if isinstance(info.get("source"), Mapping) else {}
        source_text = ", ".join(
            f"{k}: {Path(str(v)).name if k in ('path', 'root') else describe(v)}" for k, v in source.items()
        )
        rows = []
        for row in models:
            run = row.runs[dataset]
            q = run.data.get("queries") or {}
            g = run.data.get("gallery") or {}
            rows.append(
                {
                    "name": row.name,
                    "slug": ctx.mslug[row.name],
                    "href": self.model_href(row.name),
                    "color": ctx.colors[row.name][0],
                    "cells": [
                        {
                            "metric": m,
                            "stats": ctx.cells.get((dataset, row.name, m)),
                            "best": ctx.board.is_best(dataset, m, row.value(dataset, m)),
                            "how": self.protocol_href(run, m),
                            "tooltip": self.cell_tooltip(run, m, ctx.cells[(dataset, row.name, m)]),
                        }
                        for m in column.metrics
                    ],
                    "scored": q.get("scored"),
                    "unanswerable": q.get("unanswerable"),
                    "failed": (q.get("failed_to_embed") or 0) + (g.get("failed_to_embed") or 0),
                    "missing": (q.get("missing_files") or 0) + (g.get("missing_files") or 0),
                    "protocol": ctx.protocols.of(run).pid,
                    "protocol_href": self.protocol_href(run),
                    "run_id": run.data.get("run_id", ""),
                    "failures_href": self.failure_href(dataset, row.name)
                    if (dataset, row.name) in ctx.queries
                    else None,
                }
            )
        per_model = ctx.dataset_queries(dataset)
        curve_series = []
        depths = []
        for row in sorted(models, key=lambda r: r.name):
            q = per_model.get(row.name)
            if q is None:
                continue
            depths.append(q.depth)
            color, dash = ctx.colors[row.name]
            curve_series.append(
                charts.Series(row.name, q.recall_curve(ctx.options.recall_curve_max_k), color, dash)
            )
        recall_chart = charts.line_chart(
            curve_series, title=f"Recall@K on {dataset}", x_label="K (rank cut-off)", y_label="Recall@K (%)"
        )
        cost_points, speed_points, no_cost, no_speed = [], [], [], []
        for row in models:
            run = row.runs[dataset]
            r1 = row.value(dataset, "recall@1")
            color = ctx.colors[row.name][0]
            cost, speed = cost_per_1k(run), images_per_second(run)
            if cost is not None and r1 is not None:
                cost_points.append(
                    charts.Point(
                        row.name, cost, r1, color, f"{row.name}: R@1 {r1:.1f}% at ${cost:.4g} per 1k images"
                    )
                )
            else:
                no_cost.append(row.name)
            if speed is not None and r1 is not None:
                speed_points.append(
                    charts.Point(
                        row.name, speed, r1, color, f"{row.name}: R@1 {r1:.1f}% at {speed:.3g} images/s"
                    )
                )
            else:
                no_speed.append(row.name)
        n_common, hard_ids, oracle = oracle_summary(per_model)
        compare_links = []
        names = sorted(per_model)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                compare_links.append({"a": a, "b": b, "href": self.compare_href(dataset, a, b)})
        self._write(
            f"datasets/{ctx.dslug[dataset]}.html",
            "dataset.html",
            title=dataset,
            name=dataset,
            info=info,
            counts=key_values(info.get("counts") or {}),
            source_text=source_text,
            group=column.group,
            metrics=column.metrics,
            rows=rows,
            recall_chart=recall_chart,
            curve_depth=min(depths) if depths else None,
            max_k=ctx.options.recall_curve_max_k,
            cost_chart=charts.scatter_chart(
                cost_points,
                title=f"R@1 vs cost on {dataset}",
                x_label="estimated USD per 1,000 images",
                y_label="R@1 (%)",
            ),
            speed_chart=charts.scatter_chart(
                speed_points,
                title=f"R@1 vs throughput on {dataset}",
                x_label="images embedded per second (log scale)",
                y_label="R@1 (%)",
                log_x=True,
            ),
            no_cost=no_cost,
            no_speed=no_speed,
            n_common=n_common,
            n_hard=len(hard_ids),
            oracle=oracle,
            best_single=max((r.value(dataset, "recall@1") or 0.0 for r in models), default=None),
            hard_href=f"hard/{ctx.dslug[dataset]}.html",
            compare_links=compare_links,
            slug=ctx.dslug[dataset],
        )

    def model_page(self, model: str) -> None:
        ctx = self.ctx
        row = next(r for r in ctx.board.models if r.name == model)
        runs = sorted(row.runs.values(), key=lambda r: (r.created, r.data.get("run_id", "")))
        latest = runs[-1].data.get("model", {})
        details = latest.get("details") if isinstance(latest.get("details"), Mapping) else {}
        card = [
            (
                "Provider / backend",
                " / ".join(
                    str(x)
                    for x in (
                        latest.get("provider") or details.get("provider") or details.get("vendor"),
                        latest.get("backend"),
                    )
                    if x
                )
                or "–",
            ),
            (
                "Architecture",
                describe(details.get("architecture") or details.get("arch") or latest.get("architecture")),
            ),
            ("Input size", input_size(latest) or "–"),
            ("Embedding dimension", fmt_number(latest.get("dim"))),
            ("Embedding dtype", describe(latest.get("dtype"))),
            ("Normalised by the model", fmt_number(latest.get("normalized"))),
            ("Revision", describe(latest.get("revision"))),
            ("Max batch", fmt_number(latest.get("max_batch"))),
            ("Group", row.group),
        ]
        usages = [r.data["usage"] for r in runs if isinstance(r.data.get("usage"), Mapping)]
        billed = [(u.get("cost_usd"), u.get("billed_images")) for u in usages]
        billed = [
            (c, n) for c, n in billed if isinstance(c, (int, float)) and isinstance(n, (int, float)) and n > 0
        ]
        if billed:
            per_1k = sum(c for c, _ in billed) / sum(n for _, n in billed) * 1000
            card.append(("API cost per 1k images", f"${per_1k:.4g} (estimated, over {len(billed)} run(s))"))
        per_dataset = []
        for column in ctx.board.datasets:
            run = row.runs.get(column.name)
            if run is None:
                continue
            ranked = sorted(
                (r.value(column.name, "recall@1") or -1.0 for r in ctx.models_of(column.name)), reverse=True
            )
            mine = row.value(column.name, "recall@1")
            usage = run.data.get("usage") if isinstance(run.data.get("usage"), Mapping) else {}
            timings = run.data.get("timings") if isinstance(run.data.get("timings"), Mapping) else {}
            per_dataset.append(
                {
                    "dataset": column.name,
                    "href": self.dataset_href(column.name),
                    "anchor": f"{self.dataset_href(column.name)}#r-{ctx.mslug[model]}",
                    "scores": [(m, row.value(column.name, m)) for m in column.metrics],
                    "rank": (ranked.index(mine) + 1) if mine is not None else None,
                    "of": len(ranked),
                    "preprocessing": self.preprocessing(run),
                    "cost": cost_per_1k(run),
                    "speed": images_per_second(run),
                    "usage": key_values(usage),
                    "timings": key_values(timings),
                    "failures_href": self.failure_href(column.name, model)
                    if (column.name, model) in ctx.queries
                    else None,
                    "run_id": run.data.get("run_id", ""),
                }
            )
        self._write(
            f"models/{ctx.mslug[model]}.html",
            "model.html",
            title=model,
            name=model,
            card=card,
            preprocessing=key_values(latest.get("preprocessing"))
            or [("", describe(latest.get("preprocessing")))],
            details=key_values(details),
            per_dataset=per_dataset,
            average=[(m, row.average.get(m)) for m in ctx.board.average_metrics],
            average_over=ctx.board.average_over,
        )

    def _thumb(self, dataset: str, image_id: str) -> dict[str, Any]:
        src = self.ctx.thumbs.url(dataset, image_id)
        return {"id": image_id, "src": src, "placeholder": self.ctx.thumbs.is_placeholder(src)}

    def _query_card(self, dataset: str, q: RunQueries, i: int) -> dict[str, Any]:
        top = []
        for rank, (gid, score, relevant) in enumerate(
            zip(q.top_ids[i], q.top_scores[i], q.top_relevant[i]), 1
        ):
            top.append({**self._thumb(dataset, gid), "rank": rank, "score": score, "relevant": relevant})
        margin = q.margin[i]
        return {
            **self._thumb(dataset, q.query_ids[i]),
            "product": q.product_ids[i],
            "n_relevant": int(q.n_relevant[i]),
            "rank": int(q.first_rank[i]),
            "depth": q.depth,
            "margin": None if math.isnan(margin) else float(margin),
            "margin_bound": bool(q.margin_is_bound[i]),
            "top": top,
        }

    def failure_page(self, dataset: str, model: str) -> None:
        ctx = self.ctx
        q = ctx.queries.get((dataset, model))
        if q is None:
            return
        missed = missed_at_1(q)
        scored = q.scored & q.answerable
        hits = scored & (q.first_rank == 1)
        hubs = [{**self._thumb(dataset, gid), "count": count} for gid, count in hub_images(q)]
        histogram = charts.histogram_chart(
            [
                ("top-1 correct", q.top1_score[hits].tolist(), "#009E73"),
                ("top-1 wrong", q.top1_score[scored & ~hits].tolist(), "#D55E00"),
            ],
            title=f"Top-1 similarity of {model} on {dataset}",
            x_label="top-1 score (dot product)",
            y_label="queries",
        )
        beyond = int((scored & ((q.first_rank == 0) | (q.first_rank > 5))).sum())
        others = [m for m in sorted(ctx.dataset_queries(dataset)) if m != model]
        self._write(
            self.failure_href(dataset, model),
            "failures.html",
            title=f"{model} misses on {dataset}",
            dataset=dataset,
            model=model,
            dataset_href=self.dataset_href(dataset),
            model_href=self.model_href(model),
            n_scored=int(scored.sum()),
            n_missed=int(missed.size),
            n_beyond5=beyond,
            cards=[self._query_card(dataset, q, int(i)) for i in missed[: ctx.options.max_failures]],
            hubs=hubs,
            histogram=histogram,
            depth=q.depth,
            compare=[{"other": m, "href": self.compare_href(dataset, model, m)} for m in others],
        )

    def compare_page(self, dataset: str, a: str, b: str) -> None:
        ctx = self.ctx
        qa, qb = ctx.queries[(dataset, a)], ctx.queries[(dataset, b)]
        a_right, b_right, n_common = right_wrong(qa, qb)  # positions in qa / in qb

        def section(
            winner: str, loser: str, qw: RunQueries, ql: RunQueries, wins: np.ndarray
        ) -> dict[str, Any]:
            ids = [qw.query_ids[i] for i in wins]
            loser_pos = np.array([ql.index[q] for q in ids], dtype=np.int64)
            # Most confident wrong answers of the loser first: the sharpest contrasts.
            margin = np.nan_to_num(ql.margin[loser_pos], nan=-np.inf) if ids else np.zeros(0)
            order = np.lexsort((np.arange(len(ids)), -margin))[: ctx.options.max_compare]
            return {
                "winner": winner,
                "loser": loser,
                "count": len(ids),
                "queries": [
                    {
                        "winner": self._query_card(dataset, qw, int(wins[k])),
                        "loser": self._query_card(dataset, ql, int(loser_pos[k])),
                    }
                    for k in order
                ],
            }

        test = ctx.pairs.get((dataset, "recall@1"), {}).get((a, b))
        self._write(
            self.compare_href(dataset, a, b),
            "compare.html",
            title=f"{a} vs {b} on {dataset}",
            dataset=dataset,
            a=a,
            b=b,
            dataset_href=self.dataset_href(dataset),
            n_common=n_common,
            sections=[section(a, b, qa, qb, a_right), section(b, a, qb, qa, b_right)],
            test=None
            if test is None
            else {
                "p": test.result.p_value,
                "p_holm": test.p_holm,
                "method": test.result.method,
                "diff": test.result.diff * 100,
            },
            a_href=self.failure_href(dataset, a),
            b_href=self.failure_href(dataset, b),
        )

    def hard_page(self, dataset: str) -> None:
        ctx = self.ctx
        per_model = ctx.dataset_queries(dataset)
        n_common, hard_ids, oracle = oracle_summary(per_model)
        items = []
        names = sorted(per_model)
        for qid in hard_ids[: ctx.options.max_failures]:
            first = per_model[names[0]]
            i = first.index[qid]
            answers = []
            for name in names:
                q = per_model[name]
                j = q.index[qid]
                top = q.top_ids[j][0] if q.top_ids[j] else None
                answers.append(
                    {
                        "model": name,
                        "rank": int(q.first_rank[j]),
                        "depth": q.depth,
                        "top": self._thumb(dataset, top) if top else None,
                        "score": q.top_scores[j][0] if q.top_scores[j] else None,
                    }
                )
            items.append({**self._thumb(dataset, qid), "product": first.product_ids[i], "answers": answers})
        self._write(
            f"hard/{ctx.dslug[dataset]}.html",
            "hard.html",
            title=f"Queries no model solves on {dataset}",
            dataset=dataset,
            dataset_href=self.dataset_href(dataset),
            n_common=n_common,
            n_hard=len(hard_ids),
            oracle=oracle,
            items=items,
            models=names,
        )
