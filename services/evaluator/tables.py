"""The report's Table 3 from result files: models x datasets, R@1 / R@5 / mAP@20 (in %).

One aggregation (`build_leaderboard`: the matrix, the groups, the best value per column and the
average over the datasets every listed model has) and several renderers: Markdown, CSV and LaTeX
here, the HTML leaderboard in services/evaluator/report. The average is taken only over the
datasets that every listed model has, as the seed report does, and that set is always named.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from services.evaluator.results import RunResult

BASE_METRICS: tuple[str, ...] = ("recall@1", "recall@5", "map@20")
# Shown where a dataset's runs have them (ILIAS reports mAP@1000); never averaged.
EXTRA_METRICS: tuple[str, ...] = ("map@1000",)
DEFAULT_DATASET_GROUP = "public"
DEFAULT_MODEL_GROUP = "general"
# Known groups first, in the seed's order; any other group follows alphabetically.
DATASET_GROUP_ORDER = ("private", "public")
MODEL_GROUP_ORDER = ("general", "domain-specific")
AVERAGE = "Average"


def metric_label(metric: str) -> str:
    """ "recall@5" -> "R@5", "map@20" -> "mAP@20"; anything else unchanged."""
    kind, _, k = metric.partition("@")
    return {"recall": f"R@{k}", "map": f"mAP@{k}"}.get(kind, metric) if k else metric


def metric_k(metric: str) -> int | None:
    _, _, k = metric.partition("@")
    return int(k) if k.isdigit() else None


def _group_rank(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    return lambda group: (order.index(group) if group in order else len(order), group)


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class DatasetColumn:
    name: str
    group: str
    metrics: list[str]


@dataclass
class ModelRow:
    name: str
    group: str
    cells: dict[str, dict[str, float | None]] = field(default_factory=dict)  # dataset -> metric -> %
    runs: dict[str, RunResult] = field(default_factory=dict)  # dataset -> run
    average: dict[str, float | None] = field(default_factory=dict)

    def value(self, dataset: str, metric: str) -> float | None:
        return self.cells.get(dataset, {}).get(metric)


@dataclass
class Leaderboard:
    datasets: list[DatasetColumn]
    models: list[ModelRow]
    average_metrics: list[str]
    average_over: list[str]  # the datasets every listed model has a value for
    best: dict[tuple[str, str], float]  # (dataset or AVERAGE, metric) -> best value in that column

    def dataset_groups(self) -> list[tuple[str, list[DatasetColumn]]]:
        return _grouped(self.datasets)

    def model_groups(self) -> list[tuple[str, list[ModelRow]]]:
        return _grouped(self.models)

    def is_best(self, column: str, metric: str, value: float | None) -> bool:
        best = self.best.get((column, metric))
        return value is not None and best is not None and math.isclose(value, best, abs_tol=1e-9)

    def average_note(self) -> str:
        metrics = " / ".join(metric_label(m) for m in self.average_metrics)
        if not self.average_over:
            return f"{AVERAGE} ({metrics}): none, no dataset is shared by every listed model."
        return (
            f"{AVERAGE} ({metrics}): mean over the {len(self.average_over)} dataset(s) "
            "every listed model has: " + ", ".join(self.average_over) + "."
        )


def _grouped(items: Sequence) -> list[tuple[str, list]]:
    groups: list[tuple[str, list]] = []
    for item in items:
        if groups and groups[-1][0] == item.group:
            groups[-1][1].append(item)
        else:
            groups.append((item.group, [item]))
    return groups


def dataset_group(run: RunResult) -> str:
    return str(run.data.get("dataset", {}).get("group") or DEFAULT_DATASET_GROUP)


def model_group(run: RunResult) -> str:
    return str(run.data.get("model", {}).get("group") or DEFAULT_MODEL_GROUP)


def build_leaderboard(
    runs: Iterable[RunResult],
    metrics: Sequence[str] = BASE_METRICS,
    extra_metrics: Sequence[str] = EXTRA_METRICS,
) -> Leaderboard:
    """The Table 3 matrix. One run per (dataset, model) is expected (load_results' latest_only);
    if several are given, the newest wins. Models are sorted within their group by the average
    of the first metric, best first, then by name."""
    newest: dict[tuple[str, str], RunResult] = {}
    for run in runs:
        key = (run.dataset, run.model)
        if key not in newest or (run.created, run.data.get("run_id", "")) > (
            newest[key].created,
            newest[key].data.get("run_id", ""),
        ):
            newest[key] = run

    dataset_groups: dict[str, str] = {}
    dataset_extras: dict[str, list[str]] = {}
    rows: dict[str, ModelRow] = {}
    for (dataset, model), run in sorted(newest.items()):
        dataset_groups.setdefault(dataset, dataset_group(run))
        row = rows.setdefault(model, ModelRow(name=model, group=model_group(run)))
        row.runs[dataset] = run
        shown = list(metrics) + [m for m in extra_metrics if _finite(run.metrics.get(m)) is not None]
        row.cells[dataset] = {m: _finite(run.metrics.get(m)) for m in shown}
        extras = dataset_extras.setdefault(dataset, [])
        extras.extend(m for m in shown[len(metrics) :] if m not in extras)

    dataset_rank = _group_rank(DATASET_GROUP_ORDER)
    columns = sorted(
        (
            DatasetColumn(
                name=d, group=g, metrics=list(metrics) + [m for m in extra_metrics if m in dataset_extras[d]]
            )
            for d, g in dataset_groups.items()
        ),
        key=lambda c: (dataset_rank(c.group), c.name.casefold(), c.name),
    )
    models = list(rows.values())
    average_over = common_datasets(models, [c.name for c in columns], metrics)
    for row in models:
        row.average = average_of(row, average_over, metrics)

    model_rank = _group_rank(MODEL_GROUP_ORDER)
    first = metrics[0] if metrics else None

    def sort_key(row: ModelRow) -> tuple:
        avg = row.average.get(first) if first else None
        return (model_rank(row.group), avg is None, -(avg or 0.0), row.name.casefold(), row.name)

    models.sort(key=sort_key)
    best: dict[tuple[str, str], float] = {}
    for column in columns:
        for metric in column.metrics:
            values = [v for r in models if (v := r.value(column.name, metric)) is not None]
            if values:
                best[(column.name, metric)] = max(values)
    for metric in metrics:
        values = [v for r in models if (v := r.average.get(metric)) is not None]
        if values:
            best[(AVERAGE, metric)] = max(values)
    return Leaderboard(
        datasets=columns, models=models, average_metrics=list(metrics), average_over=average_over, best=best
    )


def common_datasets(models: Sequence[ModelRow], datasets: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """Datasets (in column order) for which every model has every averaged metric."""
    if not models:
        return []
    return [d for d in datasets if all(r.value(d, m) is not None for r in models for m in metrics)]


def average_of(row: ModelRow, datasets: Sequence[str], metrics: Sequence[str]) -> dict[str, float | None]:
    if not datasets:
        return {m: None for m in metrics}
    return {m: sum(row.value(d, m) or 0.0 for d in datasets) / len(datasets) for m in metrics}


# ---- renderers ------------------------------------------------------------------------------


def _fmt(value: float | None, precision: int) -> str | None:
    return None if value is None else f"{value:.{precision}f}"


def _markdown_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def render_markdown(board: Leaderboard, precision: int = 1) -> str:
    def cell(column: str, metrics: Sequence[str], values: Mapping[str, float | None]) -> str:
        parts = []
        for metric in metrics:
            text = _fmt(values.get(metric), precision)
            if text is None:
                parts.append("–")
            else:
                parts.append(f"**{text}**" if board.is_best(column, metric, values.get(metric)) else text)
        return " / ".join(parts)

    header = ["Model"]
    for column in board.datasets:
        labels = " / ".join(metric_label(m) for m in column.metrics)
        header.append(f"{_markdown_escape(column.name)} ({_markdown_escape(column.group)}): {labels}")
    header.append(f"{AVERAGE}: " + " / ".join(metric_label(m) for m in board.average_metrics))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, models in board.model_groups():
        lines.append(
            "| " + " | ".join([f"*{_markdown_escape(group.capitalize())}*"] + [""] * (len(header) - 1)) + " |"
        )
        for row in models:
            cells = [_markdown_escape(row.name)]
            cells += [cell(c.name, c.metrics, row.cells.get(c.name, {})) for c in board.datasets]
            cells.append(cell(AVERAGE, board.average_metrics, row.average))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{board.average_note()} Values in %. **Bold**: best in its column. –: no result.")
    return "\n".join(lines) + "\n"


def render_csv(board: Leaderboard, precision: int = 1) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "model_group"]
    for column in board.datasets:
        header += [f"{column.name} {metric_label(m)}" for m in column.metrics]
    header += [f"{AVERAGE} {metric_label(m)}" for m in board.average_metrics]
    header.append("average_over")
    writer.writerow(header)
    over = "; ".join(board.average_over)
    for row in board.models:
        values = [row.name, row.group]
        for column in board.datasets:
            values += [_fmt(row.value(column.name, m), precision) or "" for m in column.metrics]
        values += [_fmt(row.average.get(m), precision) or "" for m in board.average_metrics]
        values.append(over)
        writer.writerow(values)
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(board: Leaderboard, precision: int = 1) -> str:
    """A booktabs table (needs \\usepackage{booktabs}) in the seed's two-level header layout."""
    spans: list[tuple[str, int]] = [(c.name, len(c.metrics)) for c in board.datasets]
    spans.append((AVERAGE, len(board.average_metrics)))
    n_cols = 1 + sum(width for _, width in spans)
    colspec = "l" + "".join(" " + "c" * width for _, width in spans)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]

    group_cells, rules, start = [" "], [], 2
    for group, columns in board.dataset_groups():
        width = sum(len(c.metrics) for c in columns)
        group_cells.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group.capitalize())}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    group_cells.append(rf"\multicolumn{{{len(board.average_metrics)}}}{{c}}{{}}")
    out.append(" & ".join(group_cells).strip() + r" \\")
    out.append(" ".join(rules))
    out.append(
        " & ".join(["Model"] + [rf"\multicolumn{{{w}}}{{c}}{{{latex_escape(name)}}}" for name, w in spans])
        + r" \\"
    )
    metric_cells = [" "]
    for column in board.datasets:
        metric_cells += [latex_escape(metric_label(m)) for m in column.metrics]
    metric_cells += [latex_escape(metric_label(m)) for m in board.average_metrics]
    out.append(" & ".join(metric_cells).strip() + r" \\")
    out.append(r"\midrule")

    def cell(column: str, metric: str, value: float | None) -> str:
        text = _fmt(value, precision)
        if text is None:
            return "--"
        return rf"\textbf{{{text}}}" if board.is_best(column, metric, value) else text

    for index, (group, models) in enumerate(board.model_groups()):
        if index:
            out.append(r"\midrule")
        out.append(rf"\multicolumn{{{n_cols}}}{{l}}{{\textit{{{latex_escape(group.capitalize())}}}}} \\")
        for row in models:
            cells = [latex_escape(row.name)]
            for column in board.datasets:
                cells += [cell(column.name, m, row.value(column.name, m)) for m in column.metrics]
            cells += [cell(AVERAGE, m, row.average.get(m)) for m in board.average_metrics]
            out.append(" & ".join(cells) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    caption = "Image-to-image instance retrieval results in \\%. Best per column in bold. " + latex_escape(
        board.average_note()
    )
    out.append(rf"\caption{{{caption}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[Leaderboard, int], str]] = {
    "markdown": render_markdown,
    "csv": render_csv,
    "latex": render_latex,
}


def render_table(runs: Iterable[RunResult], fmt: str = "markdown", precision: int = 1) -> str:
    """Table 3 for `runs` (e.g. load_results(dir)) as "markdown", "csv" or "latex"."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(RENDERERS)}")
    return renderer(build_leaderboard(runs), precision)


# The decision analytics' views (services/evaluator/analytics/views.py), beside Table 3.
ANALYSIS_VIEWS = ("open-set", "scaling", "compression", "pareto")


def render_analysis_view(runs: Iterable[RunResult], view: str, fmt: str = "markdown") -> str:
    """One analysis as a table ("markdown" or "csv"); ViewError when no record holds it."""
    from services.evaluator.analytics.views import render_view

    return render_view(list(runs), view, fmt)
