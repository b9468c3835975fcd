"""The base of the site's page writers: template rendering, relative links between pages, and the
texts that several pages share (cell tooltips, preprocessing). The pages themselves are mixins in
overview_pages, detail_pages and query_pages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.evaluator.report.data import CellStats
from services.evaluator.report.formatting import (
    describe,
    fmt_number,
    fmt_p,
    metric_anchor,
    metric_definition,
    pct,
    signed,
)
from services.evaluator.results import RunResult
from services.evaluator.tables import metric_k, metric_label

if TYPE_CHECKING:
    from services.evaluator.report.site import SiteContext

TEMPLATES = Path(__file__).parent / "templates"


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


class PageWriterBase:
    def __init__(self, out_dir: Path, ctx: SiteContext):
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
