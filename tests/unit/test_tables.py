"""Table 3 from hand-made results: exact Markdown, CSV and LaTeX, averages over common datasets."""

from __future__ import annotations

import pytest

from services.evaluator.record import SCHEMA_ID, RunRecord
from services.evaluator.results import RunResult
from services.evaluator.tables import build_leaderboard, latex_escape, metric_label, render_table

A, B, C = "dinov2_large", "cohere/embed-v4.0", "AEM v1 (auto)"


def run(
    dataset: str,
    model: str,
    values: tuple,
    *,
    dgroup: str | None = None,
    mgroup: str | None = None,
    created: str = "2025-01-01T00:00:00+00:00",
    run_id: str = "r1",
) -> RunResult:
    names = ("recall@1", "recall@5", "map@20", "map@1000")
    dataset_info = {"name": dataset, "setup": "inter", "gallery_type": "closed"}
    model_info = {"name": model, "dim": 8}
    if dgroup:
        dataset_info["group"] = dgroup
    if mgroup:
        model_info["group"] = mgroup
    return RunResult(
        record=RunRecord.model_validate({
            "schema": SCHEMA_ID,
            "run_id": run_id,
            "created": created,
            "dataset": dataset_info,
            "model": model_info,
            "metrics": dict(zip(names, values)),
        })
    )


@pytest.fixture()
def runs() -> list[RunResult]:
    # Clips is private; ILIAS (only model A, with mAP@1000) and SOP public. C is domain-specific.
    return [
        run("Clips", A, (10.0, 20.0, 5.0), dgroup="private"),
        run("Clips", B, (30.0, 50.0, 15.0), dgroup="private"),
        run("Clips", C, (40.0, 55.0, 20.5), dgroup="private", mgroup="domain-specific"),
        run("SOP", A, (60.0, 80.0, 40.0)),
        run("SOP", B, (50.0, 70.0, 30.0)),
        run("SOP", C, (20.0, 40.0, 10.5), mgroup="domain-specific"),
        run("ILIAS", A, (50.0, 60.0, 20.0, 21.0), dgroup="public"),
    ]


def test_leaderboard_matrix(runs):
    board = build_leaderboard(runs)
    assert [c.name for c in board.datasets] == ["Clips", "ILIAS", "SOP"]  # private first, then by name
    assert [c.metrics for c in board.datasets][1] == ["recall@1", "recall@5", "map@20", "map@1000"]
    assert board.average_over == ["Clips", "SOP"]  # ILIAS: only A has it
    assert [(r.name, r.group) for r in board.models] == [
        (B, "general"),
        (A, "general"),
        (C, "domain-specific"),
    ]
    by_name = {r.name: r for r in board.models}
    assert by_name[A].average == {"recall@1": 35.0, "recall@5": 50.0, "map@20": 22.5}
    assert by_name[C].average == {"recall@1": 30.0, "recall@5": 47.5, "map@20": 15.5}
    assert board.best[("Average", "map@20")] == 22.5  # a tie: A and B both marked
    assert board.is_best("Average", "map@20", by_name[A].average["map@20"])
    assert board.is_best("Average", "map@20", by_name[B].average["map@20"])


def test_markdown_exact(runs):
    expected = (
        "| Model | Clips (private): R@1 / R@5 / mAP@20 | ILIAS (public): R@1 / R@5 / mAP@20 / mAP@1000 "
        "| SOP (public): R@1 / R@5 / mAP@20 | Average: R@1 / R@5 / mAP@20 |\n"
        "|---|---|---|---|---|\n"
        "| *General* |  |  |  |  |\n"
        "| cohere/embed-v4.0 | 30.0 / 50.0 / 15.0 | – / – / – / – | 50.0 / 70.0 / 30.0 "
        "| **40.0** / **60.0** / **22.5** |\n"
        "| dinov2\\_large | 10.0 / 20.0 / 5.0 | **50.0** / **60.0** / **20.0** / **21.0** "
        "| **60.0** / **80.0** / **40.0** | 35.0 / 50.0 / **22.5** |\n"
        "| *Domain-specific* |  |  |  |  |\n"
        "| AEM v1 (auto) | **40.0** / **55.0** / **20.5** | – / – / – / – | 20.0 / 40.0 / 10.5 "
        "| 30.0 / 47.5 / 15.5 |\n"
        "\n"
        "Average (R@1 / R@5 / mAP@20): mean over the 2 dataset(s) every listed model has: Clips, SOP. "
        "Values in %. **Bold**: best in its column. –: no result.\n"
    )
    assert render_table(runs, "markdown") == expected


def test_csv_exact(runs):
    expected = (
        "model,model_group,Clips R@1,Clips R@5,Clips mAP@20,ILIAS R@1,ILIAS R@5,ILIAS mAP@20,ILIAS mAP@1000,"
        "SOP R@1,SOP R@5,SOP mAP@20,Average R@1,Average R@5,Average mAP@20,average_over\n"
        "cohere/embed-v4.0,general,30.0,50.0,15.0,,,,,50.0,70.0,30.0,40.0,60.0,22.5,Clips; SOP\n"
        "dinov2_large,general,10.0,20.0,5.0,50.0,60.0,20.0,21.0,60.0,80.0,40.0,35.0,50.0,22.5,Clips; SOP\n"
        "AEM v1 (auto),domain-specific,40.0,55.0,20.5,,,,,20.0,40.0,10.5,30.0,47.5,15.5,Clips; SOP\n"
    )
    assert render_table(runs, "csv") == expected


def test_latex_exact(runs):
    expected = (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                r"\small",
                r"\begin{tabular}{l ccc cccc ccc ccc}",
                r"\toprule",
                r"& \multicolumn{3}{c}{Private} & \multicolumn{7}{c}{Public} & \multicolumn{3}{c}{} \\",
                r"\cmidrule(lr){2-4} \cmidrule(lr){5-11}",
                r"Model & \multicolumn{3}{c}{Clips} & \multicolumn{4}{c}{ILIAS} & \multicolumn{3}{c}{SOP} & "
                r"\multicolumn{3}{c}{Average} \\",
                r"& R@1 & R@5 & mAP@20 & R@1 & R@5 & mAP@20 & mAP@1000 & "
                r"R@1 & R@5 & mAP@20 & R@1 & R@5 & mAP@20 \\",
                r"\midrule",
                r"\multicolumn{14}{l}{\textit{General}} \\",
                r"cohere/embed-v4.0 & 30.0 & 50.0 & 15.0 & -- & -- & -- & -- & 50.0 & 70.0 & 30.0 & "
                r"\textbf{40.0} & \textbf{60.0} & \textbf{22.5} \\",
                r"dinov2\_large & 10.0 & 20.0 & 5.0 & \textbf{50.0} & \textbf{60.0} & \textbf{20.0} & "
                r"\textbf{21.0} & \textbf{60.0} & \textbf{80.0} & \textbf{40.0} & "
                r"35.0 & 50.0 & \textbf{22.5} \\",
                r"\midrule",
                r"\multicolumn{14}{l}{\textit{Domain-specific}} \\",
                r"AEM v1 (auto) & \textbf{40.0} & \textbf{55.0} & \textbf{20.5} & -- & -- & -- & -- & "
                r"20.0 & 40.0 & 10.5 & 30.0 & 47.5 & 15.5 \\",
                r"\bottomrule",
                r"\end{tabular}",
                r"\caption{Image-to-image instance retrieval results in \%. Best per column in bold. "
                r"Average (R@1 / R@5 / mAP@20): mean over the 2 dataset(s) every listed model has: "
                r"Clips, SOP.}",
                r"\end{table}",
            ]
        )
        + "\n"
    )
    assert render_table(runs, "latex") == expected


def test_average_only_over_datasets_every_model_has():
    runs = [run("D1", "m1", (10.0, 20.0, 30.0)), run("D2", "m2", (50.0, 60.0, 70.0))]
    board = build_leaderboard(runs)
    assert board.average_over == []
    assert all(v is None for r in board.models for v in r.average.values())
    markdown = render_table(runs, "markdown")
    assert "none, no dataset is shared by every listed model" in markdown
    assert "| m1 | **10.0** / **20.0** / **30.0** | – / – / – | – / – / – |" in markdown  # alone on D1: best


def test_newest_run_wins_and_missing_metric_is_a_dash():
    old = run("D1", "m1", (10.0, 20.0, 30.0), created="2025-01-01T00:00:00+00:00", run_id="a")
    new = run("D1", "m1", (11.0, None, 31.0), created="2025-02-01T00:00:00+00:00", run_id="b")
    board = build_leaderboard([new, old])
    assert board.models[0].cells["D1"] == {"recall@1": 11.0, "recall@5": None, "map@20": 31.0}
    assert board.average_over == []  # R@5 is missing, so D1 cannot be averaged
    assert "11.0,,31.0" in render_table([old, new], "csv")


def test_defaults_groups_and_rejects_unknown_format(runs):
    board = build_leaderboard([run("D1", "m1", (1.0, 2.0, 3.0))])
    assert board.datasets[0].group == "public" and board.models[0].group == "general"
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        render_table(runs, "html")
    assert render_table([], "markdown").startswith("| Model | Average: R@1 / R@5 / mAP@20 |")


def test_escaping_helpers():
    assert (
        latex_escape("a_b & 50% #1 {x} ~ ^ \\")
        == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert metric_label("recall@10") == "R@10" and metric_label("map@1000") == "mAP@1000"
    assert metric_label("ndcg") == "ndcg"
