"""One page per dataset (datasets/<d>.html) and per model (models/<m>.html)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from services.evaluator.report import charts
from services.evaluator.report.data import cost_per_1k, images_per_second, oracle_summary
from services.evaluator.report.formatting import describe, fmt_number, input_size, key_values
from services.evaluator.report.page_writer import PageWriterBase


class DetailPages(PageWriterBase):
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
            probe=ctx.probes.get(model),
            per_dataset=per_dataset,
            average=[(m, row.average.get(m)) for m in ctx.board.average_metrics],
            average_over=ctx.board.average_over,
        )
