"""Tables and the report site, built from run records only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from services.evaluator.cli.core import (
    fail,
    skipped,
    app,
    stderr_console,
)


# ---- tables and report ------------------------------------------------------------------------
@app.command()
def table(
    results_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a results directory"),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv or latex"),
    out: Optional[Path] = typer.Option(None, "--out", help="write to this file instead of stdout"),
    against: Optional[str] = typer.Option(
        None, "--against",
        help="'published' (the report's Table 3, shipped) or a CSV of published values: reproduced, published, delta",
    ),
    published_setting: str = typer.Option(
        "", "--published-setting", help="with --against: compare with another published setting, e.g. '768 px'"
    ),
    view: str = typer.Option(
        "leaderboard", "--view", help="leaderboard, or an analysis: open-set, scaling, compression, pareto"
    ),
) -> None:
    """The report's Table 3: models x datasets, R@1 / R@5 / mAP@20, with the average over common datasets.

    --view prints an analysis instead (docs/analytics.md)."""
    from services.evaluator.results import load_results
    from services.evaluator.tables import ANALYSIS_VIEWS, render_analysis_view, render_table

    if view != "leaderboard" and view not in ANALYSIS_VIEWS:
        fail(f"--view takes leaderboard, {', '.join(ANALYSIS_VIEWS)}; got {view!r}")
    # The Pareto view also reads older runs (a run that reused stored vectors measured no throughput).
    runs = [run for run in load_results(results_dir, latest_only=view != "pareto", on_skip=skipped) if run.ok]
    if not runs:
        fail(f"no vsbench run records with metrics under {results_dir}")
    if against is not None:
        from services.evaluator.published import comparisons_for_runs, load_published, render_comparisons

        published = load_published(None if against == "published" else Path(against))
        text = render_comparisons(comparisons_for_runs(runs, published, setting=published_setting), fmt)
    else:
        text = render_table(runs, fmt) if view == "leaderboard" else render_analysis_view(runs, view, fmt)
    if out:
        out.write_text(text)
        stderr_console().print(f"wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def report(
    results_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="a results directory"),
    out: Path = typer.Option(..., "--out", help="folder for the static site"),
) -> None:
    """Build the static report site (leaderboard, statistics, dataset pages, model cards, failures)."""
    from services.evaluator.report import build_site
    from services.evaluator.runner import dataset_image_resolver

    index = build_site(results_dir, out, image_resolver=dataset_image_resolver(results_dir))
    stderr_console().print(f"report written: {index}", highlight=False)
