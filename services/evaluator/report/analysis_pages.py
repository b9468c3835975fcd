"""The decision analytics on the site (docs/analytics.md): per dataset an open-set page (ROC and
accuracy-rejection curves), a scaling page (metrics vs distractors with the spread and the fitted
extrapolation) and a compression page (recall vs bytes per vector); and one Pareto page (accuracy
vs $/1k images vs images/s vs bytes per vector, Pareto-optimal models marked)."""

from __future__ import annotations

from services.evaluator.analytics.pareto import OBJECTIVE_LABELS, OBJECTIVES
from services.evaluator.analytics.views import pareto_points
from services.evaluator.report import analysis_charts as ac
from services.evaluator.report.charts import Point, series_style
from services.evaluator.report.page_writer import PageWriterBase
from services.evaluator.results import RunResult

KINDS = {
    "open-set": ("open_set", "Open-set rejection"),
    "scaling": ("scaling", "Gallery scaling"),
    "compression": ("compression", "Compression"),
}


class AnalysisPages(PageWriterBase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The dataset page lists the analysis pages its runs have (a template global, so the
        # dataset page's own code stays as it is).
        self.env.globals["analysis_links"] = self.analysis_links
        self.all_runs: list[RunResult] = []  # every run (for the Pareto view's throughput)

    # -- which pages exist --
    def _runs_with(self, dataset: str, key: str) -> list[tuple[str, dict]]:
        out = []
        for row in sorted(self.ctx.models_of(dataset), key=lambda r: r.name):
            block = (row.runs[dataset].data.get("analyses") or {}).get(key)
            if isinstance(block, dict):
                out.append((row.name, block))
        return out

    def analysis_href(self, dataset: str, kind: str) -> str:
        return f"analysis/{self.ctx.dslug[dataset]}/{kind}.html"

    def analysis_links(self, dataset: str) -> list[tuple[str, str]]:
        return [(title, self.analysis_href(dataset, kind)) for kind, (key, title) in KINDS.items()
                if self._runs_with(dataset, key)]

    def analysis_pages(self, dataset: str) -> None:
        for kind, (key, title) in KINDS.items():
            found = self._runs_with(dataset, key)
            if not found:
                continue
            page = getattr(self, f"_{key}_context")(dataset, found)
            self._write(self.analysis_href(dataset, kind), "analysis.html", title=f"{title} on {dataset}",
                        kind=kind, heading=title, dataset=dataset, dataset_href=self.dataset_href(dataset), **page)

    # -- open set --
    def _open_set_context(self, dataset: str, found) -> dict:
        roc, ar, rows = [], [], []
        for model, a in found:
            color, dash = self.ctx.colors[model]
            roc.append(ac.Curve(model, [(p["far"], p["tpr"]) for p in reversed(a["roc"])
                                        if p["far"] is not None and p["tpr"] is not None], color, dash))
            ar.append(ac.Curve(model, [(p["coverage"], p["precision"]) for p in reversed(a["accuracy_rejection"])
                                       if p["coverage"] is not None and p["precision"] is not None], color, dash))
            rows.append({"model": model, "href": self.model_href(model), "a": a, "rec": a["recommendation"]})
        return {
            "rows": rows,
            "charts": [
                ("ROC: in-catalog accepted vs out-of-catalog accepted",
                 ac.curve_chart(roc, title=f"ROC on {dataset}", x_label="false-accept rate (% of out-of-catalog accepted)",
                                y_label="in-catalog accepted (%)", percent_x=True, x_unit="%")),
                ("Accuracy-rejection: precision of the answers given vs share of queries answered",
                 ac.curve_chart(ar, title=f"Accuracy-rejection on {dataset}", x_label="coverage (% of queries answered)",
                                y_label="precision of answers (%)", percent_x=True, x_unit="%")),
            ],
        }

    # -- scaling --
    def _scaling_context(self, dataset: str, found) -> dict:
        metrics: list[str] = []
        for _, a in found:
            for p in a["points"]:
                metrics.extend(m for m in p["metrics"] if m not in metrics)
        charts = []
        for metric in metrics:
            curves = []
            for model, a in found:
                color, dash = self.ctx.colors[model]
                pts = [(p["distractors"], p["metrics"][metric]) for p in a["points"] if p["metrics"].get(metric) is not None]
                band = [(p["distractors"], p["spread"][metric]["min"], p["spread"][metric]["max"])
                        for p in a["points"] if (p.get("spread") or {}).get(metric)]
                fit = a.get("fit")
                ext = [(fit["extrapolation"]["distractors"], fit["extrapolation"]["value"])] if fit and fit["metric"] == metric else []
                curves.append(ac.Curve(model, pts, color, dash, band=band, extrapolation=ext))
            charts.append((f"{metric} vs distractors", ac.curve_chart(
                curves, title=f"{metric} vs distractors on {dataset}", x_label="distractors in the gallery (log scale)",
                y_label=f"{metric} (%)", log_x=True, x_unit=" distractors")))
        return {"rows": [{"model": m, "href": self.model_href(m), "a": a} for m, a in found], "metrics": metrics,
                "charts": charts}

    # -- compression --
    def _compression_context(self, dataset: str, found) -> dict:
        """One chart per model: R@1 vs bytes per vector, a line per family (truncation; our
        quantizers and Qdrant's, each without and with rescoring; the table names each point)."""
        metric = "recall@1"
        charts = []
        for model, a in found:
            families: dict[str, list[tuple[float, float]]] = {}
            for r in a["rows"]:
                value = r["metrics"].get(metric)
                if value is None or not r.get("bytes_per_vector"):
                    continue
                if r["quantization"] == "float32":
                    name = "truncated float32"
                else:
                    engine = "Qdrant quantization" if r["engine"].startswith("qdrant") else "float16 / int8 / binary"
                    name = f"{engine}{' + rescore' if r['rescore'] else ''}"
                families.setdefault(name, []).append((r["bytes_per_vector"], value))
            curves = [ac.Curve(name, sorted(pts), *series_style(i)) for i, (name, pts) in enumerate(families.items())]
            charts.append((f"{model}: R@1 vs bytes per vector", ac.curve_chart(
                curves, title=f"{model}: R@1 vs bytes per vector on {dataset}",
                x_label="bytes per vector (log scale)", y_label="R@1 (%)", log_x=True, x_unit=" B")))
        return {"rows": [{"model": m, "href": self.model_href(m), "a": a} for m, a in found], "charts": charts}

    # -- Pareto --
    def pareto_page(self, runs: list[RunResult]) -> None:
        sections = []
        for dataset, (points, shared) in sorted(pareto_points(runs).items()):
            if dataset not in self.ctx.dslug:
                continue
            optimal = {p.model for p in points if p.optimal}
            charts = []
            for objective, log_x in (("cost_per_1k", True), ("images_per_s", True), ("bytes_per_vector", True)):
                chart_points = [
                    Point(p.model, p.values[objective], p.values["accuracy"], self.ctx.colors[p.model][0],
                          f"{p.model}: R@1 {p.values['accuracy']:.1f}% at {p.values[objective]:.4g} {OBJECTIVE_LABELS[objective]}")
                    for p in points
                    if p.model in self.ctx.colors and p.values.get(objective) is not None and p.values.get("accuracy") is not None
                ]
                if not chart_points:  # e.g. no model of the dataset has a price: said in the table
                    continue
                charts.append((OBJECTIVE_LABELS[objective], ac.pareto_chart(
                    chart_points, optimal, title=f"R@1 vs {OBJECTIVE_LABELS[objective]} on {dataset}",
                    x_label=f"{OBJECTIVE_LABELS[objective]} (log scale)", y_label="R@1 (%)", log_x=log_x)))
            sections.append({
                "dataset": dataset, "href": self.dataset_href(dataset), "slug": self.ctx.dslug[dataset],
                "points": [{"model": p.model, "href": self.model_href(p.model) if p.model in self.ctx.mslug else None,
                            "cells": [p.values.get(o) for o in OBJECTIVES], "optimal": p.optimal,
                            "dominated_by": p.dominated_by} for p in points],
                "shared": [OBJECTIVE_LABELS[o] for o in shared],
                "charts": charts,
            })
        self._write("pareto.html", "pareto.html", title="Pareto view", sections=sections,
                    objectives=[OBJECTIVE_LABELS[o] for o in OBJECTIVES])
