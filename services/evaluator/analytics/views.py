"""`vsbench table --view open-set|scaling|compression|pareto`: the analyses as tables.

Rows come from the newest run per (dataset, model) (what the leaderboard shows); the Pareto view
also looks at older runs of the same model fingerprint for a measured throughput, since a run that
reused stored vectors embedded nothing and measured none.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from services.common.errors import VsbenchError
from services.evaluator.analytics.pareto import OBJECTIVES, OBJECTIVE_LABELS, ParetoPoint, pareto_front
from services.evaluator.results import RunResult

VIEWS = ("open-set", "scaling", "compression", "pareto")
FORMATS = ("markdown", "csv")
PARETO_ACCURACY = "recall@1"


class ViewError(VsbenchError, ValueError):
    """A view that cannot be printed as asked (unknown view or format, no record holds it)."""


def newest_runs(runs: Iterable[RunResult]) -> list[RunResult]:
    newest: dict[tuple[str, str], RunResult] = {}
    for run in runs:
        if not run.ok:
            continue
        key = (run.dataset, run.model)
        if key not in newest or (run.created, run.data.get("run_id", "")) > (
            newest[key].created, newest[key].data.get("run_id", "")
        ):
            newest[key] = run
    return [newest[k] for k in sorted(newest)]


def _analysis(run: RunResult, name: str) -> dict | None:
    block = run.data.get("analyses") or {}
    value = block.get(name)
    return value if isinstance(value, dict) else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    notes: list[str]


def open_set_table(runs: Sequence[RunResult]) -> Table:
    header = ["dataset", "model", "in-catalog", "out-of-catalog", "AUROC", "DIR@FAR=1%", "DIR@FAR=5%",
              "DIR@FAR=10%", "target precision", "threshold", "precision (CV)", "coverage (CV)"]
    rows = []
    for run in newest_runs(runs):
        a = _analysis(run, "open_set")
        if a is None:
            continue
        rec = a["recommendation"]
        threshold = "accept all" if rec.get("accept_all") else _fmt(rec["threshold"], 4)
        rows.append([run.dataset, run.model, a["in_catalog"], a["out_of_catalog"], a["auroc"],
                     a["dir_at_far"].get("0.01"), a["dir_at_far"].get("0.05"), a["dir_at_far"].get("0.1"),
                     rec["target_precision"], threshold, rec["cv_precision"], rec["cv_coverage"]])
    return Table(header, rows, ["Values in %. The threshold accepts a top-1 answer when its score is above it; "
                                "precision and coverage are cross-validated (docs/analytics.md)."])


def scaling_table(runs: Sequence[RunResult]) -> Table:
    metric_names: list[str] = []
    found = []
    for run in newest_runs(runs):
        a = _analysis(run, "scaling")
        if a is None:
            continue
        found.append((run, a))
        for p in a["points"]:
            metric_names.extend(n for n in p["metrics"] if n not in metric_names)
    header = ["dataset", "model", "distractors", "subsets"]
    for name in metric_names:
        header += [name, f"{name} min", f"{name} max"]
    rows, notes = [], ["Values in %: the mean over random distractor subsets, and their min / max."]
    for run, a in found:
        for p in a["points"]:
            row = [run.dataset, run.model, p["distractors"], p["subsets"]]
            for name in metric_names:
                spread = (p.get("spread") or {}).get(name) or {}
                row += [p["metrics"].get(name), spread.get("min"), spread.get("max")]
            rows.append(row)
        fit = a.get("fit")
        if fit:
            ex = fit["extrapolation"]
            notes.append(f"{run.dataset} / {run.model}: {fit['metric']} = {fit['intercept']:.2f} "
                         f"{fit['slope']:+.2f} * log10(distractors); at {ex['distractors']:,} distractors "
                         f"(10x, extrapolated, not measured): {ex['value']:.1f}")
    return Table(header, rows, notes)


def compression_table(runs: Sequence[RunResult]) -> Table:
    metric_names: list[str] = []
    found = []
    for run in newest_runs(runs):
        a = _analysis(run, "compression")
        if a is None:
            continue
        found.append((run, a))
        for r in a["rows"]:
            metric_names.extend(n for n in r["metrics"] if n not in metric_names)
    header = ["dataset", "model", "dims", "quantization", "rescore", "bytes/vector", "engine", *metric_names, "note"]
    rows = []
    for run, a in found:
        for r in a["rows"]:
            rows.append([run.dataset, run.model, r["dims"], r["quantization"], r["rescore"], r["bytes_per_vector"],
                         r["engine"], *[r["metrics"].get(n) for n in metric_names], r.get("note", "")])
    return Table(header, rows, ["Values in %. Rescore: the top candidates re-scored with the float32 vectors."])


def pareto_points(runs: Sequence[RunResult]) -> dict[str, tuple[list[ParetoPoint], list[str]]]:
    """Per dataset: the Pareto front over its models and the objectives compared."""
    runs = [r for r in runs if r.ok]
    out: dict[str, tuple[list[ParetoPoint], list[str]]] = {}
    by_dataset: dict[str, dict[str, dict[str, float | None]]] = {}
    for run in newest_runs(runs):
        fingerprint = run.data["model"].get("fingerprint", "")
        same = [r for r in runs if r.dataset == run.dataset and r.model == run.model
                and r.data["model"].get("fingerprint", "") == fingerprint]
        speeds = [s for r in sorted(same, key=lambda r: r.created, reverse=True) if (s := images_per_second(r))]
        costs = [c for r in sorted(same, key=lambda r: r.created, reverse=True) if (c := cost_per_1k(r)) is not None]
        dim = run.data["model"].get("dim") or 0
        by_dataset.setdefault(run.dataset, {})[run.model] = {
            "accuracy": run.metrics.get(PARETO_ACCURACY),
            "cost_per_1k": costs[0] if costs else None,
            "images_per_s": speeds[0] if speeds else None,
            "bytes_per_vector": 4.0 * dim if dim else None,  # stored as float32
        }
    for dataset, values in by_dataset.items():
        out[dataset] = pareto_front(values)
    return out


def pareto_table(runs: Sequence[RunResult]) -> Table:
    header = ["dataset", "model", *[OBJECTIVE_LABELS[o] for o in OBJECTIVES], "Pareto-optimal", "dominated by"]
    rows, notes = [], []
    for dataset, (points, shared) in sorted(pareto_points(runs).items()):
        for p in points:
            rows.append([dataset, p.model, *[p.values.get(o) for o in OBJECTIVES], p.optimal,
                         ", ".join(p.dominated_by)])
        notes.append(f"{dataset}: compared on " + (", ".join(OBJECTIVE_LABELS[o] for o in shared) or "nothing")
                     + " (objectives every model of the dataset has)")
    return Table(header, rows, notes)


def cost_per_1k(run: RunResult) -> float | None:
    usage = run.data.get("usage") or {}
    cost, images = usage.get("cost_usd"), usage.get("billed_images")
    if not isinstance(cost, (int, float)) or not isinstance(images, (int, float)) or images <= 0:
        return None
    return float(cost) / float(images) * 1000.0


def images_per_second(run: RunResult) -> float | None:
    rate = (run.data.get("timings") or {}).get("images_per_s")
    return float(rate) if isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate) else None


BUILDERS = {"open-set": open_set_table, "scaling": scaling_table, "compression": compression_table,
            "pareto": pareto_table}


def render_view(runs: Sequence[RunResult], view: str, fmt: str = "markdown") -> str:
    if view not in BUILDERS:
        raise ViewError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if fmt not in FORMATS:
        raise ViewError(f"--view {view} prints {' or '.join(FORMATS)}, not {fmt!r}")
    table = BUILDERS[view](runs)
    if not table.rows:
        raise ViewError(f"no run record holds the {view} analysis"
                        + ("" if view == "pareto" else f" (score with --{view})"))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(table.header)
        for row in table.rows:
            writer.writerow(["" if v is None else (f"{v:.4f}" if isinstance(v, float) else v) for v in row])
        return buffer.getvalue()
    escape = lambda t: str(t).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(h) for h in table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(escape(_fmt(v)) for v in row) + " |" for row in table.rows]
    return "\n".join(lines + [""] + table.notes) + "\n"
