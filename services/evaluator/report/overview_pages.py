"""Site-wide pages: the leaderboard (index.html), statistics (stats.html), protocol (protocol.html)."""

from __future__ import annotations

import json
from typing import Any

from services.evaluator.report.data import PairComparison
from services.evaluator.report.formatting import describe, field_anchor, fmt_number, fmt_p, pct, signed
from services.evaluator.report.page_writer import PageWriterBase
from services.evaluator.tables import AVERAGE


class OverviewPages(PageWriterBase):
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

    def published_page(self) -> None:
        """Reproduced vs published (the report's Table 3, shipped as data): every metric of every
        shown run beside its published value, deltas over the tolerance flagged."""
        from services.evaluator.published import DEFAULT_TOLERANCE, comparisons_for_runs, load_published

        published = load_published()
        rows = [r for r in comparisons_for_runs(self.ctx.runs, published) if r.published is not None]
        self._write(
            "published.html",
            "published.html",
            title="Reproduced vs published",
            rows=[
                {
                    "model": r.model,
                    "model_href": self.model_href(r.model),
                    "dataset": r.dataset,
                    "metric": r.metric,
                    "reproduced": r.reproduced,
                    "published": r.published,
                    "delta": r.delta,
                    "flagged": r.flagged,
                    "published_model": r.published_model,
                    "source": r.source,
                }
                for r in rows
            ],
            tolerance=DEFAULT_TOLERANCE,
            flagged=sum(r.flagged for r in rows),
            published_datasets=sorted({p.dataset for p in published}),
        )
