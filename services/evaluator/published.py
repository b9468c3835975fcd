"""The report's published Table 3 values, and reproduced numbers set beside them.

``data/published_table3.csv`` holds the public columns (ILIAS, Products-10K, SOP) of the report's
Table 3: one row per (model, dataset, metric), values in percent, with the vsbench model name the
row maps to (empty for a model vsbench cannot run) and where the number comes from. ``setting``
is empty for the Table 3 setting and names any other one (e.g. DINOv3 on ILIAS at 768 px).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from services.common.errors import VsbenchError

PUBLISHED_TABLE3 = Path(__file__).parent / "data" / "published_table3.csv"
# A reproduced value further than this from the published one (in percentage points) is flagged.
DEFAULT_TOLERANCE = 0.5
COLUMNS = ("model", "vsbench_model", "dataset", "metric", "value", "setting", "source", "note")


class PublishedDataError(VsbenchError, ValueError):
    """A malformed published-values file; the message names the line."""


@dataclass(frozen=True)
class PublishedValue:
    model: str  # as printed in the report
    vsbench_model: str  # registry or provider/model name; "" when vsbench cannot run it
    dataset: str
    metric: str
    value: float  # percent
    setting: str = ""
    source: str = ""
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    model: str
    dataset: str
    metric: str
    reproduced: float | None
    published: float | None
    delta: float | None  # reproduced - published, percentage points
    flagged: bool  # |delta| > tolerance
    published_model: str = ""
    source: str = ""


def load_published(path: str | os.PathLike | None = None) -> list[PublishedValue]:
    """Rows of a published-values CSV (the shipped Table 3 when `path` is None); '#' lines are comments."""
    file = Path(path) if path is not None else PUBLISHED_TABLE3
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PublishedDataError(f"{file}: published values file not found") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in lines)))
    missing = [c for c in COLUMNS[:5] if c not in (reader.fieldnames or [])]
    if missing:
        raise PublishedDataError(f"{file}: missing column(s) {', '.join(missing)}")
    values: list[PublishedValue] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    for (number, _), row in zip(lines[1:], reader):
        where = f"{file.name} line {number}"
        try:
            value = float(row["value"])
        except (TypeError, ValueError):
            raise PublishedDataError(f"{where}: value {row['value']!r} is not a number") from None
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise PublishedDataError(f"{where}: value {value} is not a percentage")
        entry = PublishedValue(
            model=row["model"].strip(), vsbench_model=(row.get("vsbench_model") or "").strip(),
            dataset=row["dataset"].strip(), metric=row["metric"].strip(), value=value,
            setting=(row.get("setting") or "").strip(), source=(row.get("source") or "").strip(),
            note=(row.get("note") or "").strip(),
        )
        key = (entry.model, entry.dataset, entry.metric, entry.setting)
        if key in seen:
            raise PublishedDataError(f"{file.name} lines {seen[key]} and {number}: {key} listed twice")
        seen[key] = number
        values.append(entry)
    return values


def compare_with_published(
    reproduced: Iterable[tuple[str, str, str, float | None]],
    published: Sequence[PublishedValue] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    setting: str = "",
) -> list[Comparison]:
    """One row per reproduced (model, dataset, metric, value), in input order.

    A model matches a published row by its vsbench name or the report's name. Values are percent;
    delta = reproduced - published, flagged when |delta| > tolerance. A value without a published
    counterpart (or a missing reproduced value) gets delta None and is not flagged. `setting`
    picks published rows of another setting (e.g. "768 px").
    """
    table = load_published() if published is None else published
    index: dict[tuple[str, str, str], PublishedValue] = {}
    for entry in table:
        if entry.setting != setting:
            continue
        for name in {entry.vsbench_model, entry.model} - {""}:
            index[(name, entry.dataset, entry.metric)] = entry
    rows: list[Comparison] = []
    for model, dataset, metric, value in reproduced:
        match = index.get((model, dataset, metric))
        delta = None
        if match is not None and value is not None:
            delta = round(float(value) - match.value, 6)
        rows.append(
            Comparison(
                model=model, dataset=dataset, metric=metric,
                reproduced=None if value is None else float(value),
                published=None if match is None else match.value,
                delta=delta,
                flagged=delta is not None and abs(delta) > tolerance,
                published_model="" if match is None else match.model,
                source="" if match is None else match.source,
            )
        )
    return rows


def comparisons_for_runs(runs, published: Sequence[PublishedValue] | None = None, *,
                         tolerance: float = DEFAULT_TOLERANCE, setting: str = "") -> list[Comparison]:
    """Every metric of every run record beside its published value (runs: RunResult objects).
    The dataset name of a run is matched case-insensitively to the published one ("SOP" = "sop")."""
    table = load_published() if published is None else published
    known = {entry.dataset.lower(): entry.dataset for entry in table}
    reproduced = [
        (run.model, known.get(run.dataset.lower(), run.dataset), metric, value)
        for run in runs
        for metric, value in run.metrics.items()
    ]
    return compare_with_published(reproduced, table, tolerance=tolerance, setting=setting)


def render_comparisons(rows: Sequence[Comparison], fmt: str = "markdown", *,
                       tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Reproduced vs published, one line per (model, dataset, metric); |delta| > tolerance flagged."""
    header = ["model", "dataset", "metric", "reproduced", "published", "delta", "flag"]

    def cell(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.2f}" if signed else f"{value:.2f}"

    body = [
        [r.model, r.dataset, r.metric, cell(r.reproduced), cell(r.published), cell(r.delta, signed=True),
         f"|delta| > {tolerance:g}" if r.flagged else ("" if r.published is not None else "not published")]
        for r in rows
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue()
    if fmt != "markdown":
        raise PublishedDataError(f"--against prints markdown or csv, not {fmt!r}")
    flagged = sum(r.flagged for r in rows)
    compared = sum(r.delta is not None for r in rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines.append("")
    lines.append(
        f"{compared} value(s) compared with the report's Table 3 (source: {PUBLISHED_TABLE3.name}); "
        f"{flagged} differ by more than {tolerance:g} points."
    )
    return "\n".join(lines) + "\n"
