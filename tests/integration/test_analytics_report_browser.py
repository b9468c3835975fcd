"""The analysis pages in a real headless Chromium from the file system: records written by
`vsbench score --scaling --compression` for two models on generated open-set data, the site
built, then read as a user would (dataset page -> each analysis page -> Pareto view)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from services.evaluator.report import SiteOptions, build_site
from tests.integration.test_report_browser import ARTIFACTS, browser, page  # noqa: F401 (fixtures)

DATASET = "shelf-open"


def _save(path, vectors, ids, labels):
    np.savez(path, embeddings=np.asarray(vectors, dtype=np.float32), ids=np.array(ids), labels=np.array(labels))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analytics-site")
    rng = np.random.default_rng(11)
    n_products, dim = 20, 40
    centers = rng.standard_normal((n_products + 6, dim))
    g_labels = [f"p{i}" for i in range(n_products) for _ in range(2)] + [""] * 60
    q_products = list(rng.integers(0, n_products, 40)) + list(rng.integers(n_products, n_products + 6, 12))
    for model, noise in (("sharp-model", 0.5), ("blurry-model", 1.3)):
        g = np.r_[centers[[int(l[1:]) for l in g_labels if l]] + noise * rng.standard_normal((40, dim)),
                  rng.standard_normal((60, dim))]
        q = centers[q_products] + noise * rng.standard_normal((len(q_products), dim))
        _save(tmp / f"{model}.g.npz", g, [f"g{i}" for i in range(100)], g_labels)
        _save(tmp / f"{model}.q.npz", q, [f"q{i}" for i in range(len(q))], [f"p{p}" for p in q_products])
        done = subprocess.run(
            [sys.executable, "-m", "services.evaluator.cli", "score", "--gallery", str(tmp / f"{model}.g.npz"),
             "--queries", str(tmp / f"{model}.q.npz"), "--dataset", DATASET, "--model", model, "--engine", "numpy",
             "--scaling", "--compression", "--out", str(tmp / "results" / f"{model}.json")],
            capture_output=True, text=True,
        )
        assert done.returncode == 0, done.stderr
    index = build_site(tmp / "results", tmp / "site", options=SiteOptions(n_boot=50, n_resamples=200))
    return index.parent


def test_analysis_pages_from_the_dataset_page(site, page):  # noqa: F811
    page.goto((site / "datasets" / f"{DATASET}.html").as_uri())
    links = page.eval_on_selector_all("#analyses a", "as => as.map(a => a.textContent)")
    assert links == ["Open-set rejection", "Gallery scaling", "Compression", "Pareto view"]

    page.click("#analyses >> text=Open-set rejection")
    assert page.title().startswith(f"Open-set rejection on {DATASET}")
    rows = page.eval_on_selector_all("#open-set-table tbody tr", "rs => rs.map(r => r.cells[0].innerText)")
    assert sorted(rows) == ["blurry-model", "sharp-model"]
    # out-of-catalog count shown as recorded: 12 queries of absent products
    assert page.inner_text("#open-set-table tbody tr:first-child td:nth-child(3)") == "12"
    charts = page.query_selector_all("svg.chart")
    assert len(charts) == 2 and all(c.query_selector("path") for c in charts)
    page.screenshot(path=str(ARTIFACTS / "analysis-open-set.png"), full_page=True)

    page.go_back()
    page.click("#analyses >> text=Gallery scaling")
    assert page.query_selector_all("table.scaling-table")  # one table per model
    assert page.query_selector_all("svg.chart polygon.band")  # the spread over random subsets
    extrapolated = page.query_selector_all("svg.chart circle.extrapolated")
    assert extrapolated and "extrapolated (not measured)" in extrapolated[0].text_content()
    assert "Extrapolated, not measured" in page.inner_text("main")
    page.screenshot(path=str(ARTIFACTS / "analysis-scaling.png"), full_page=True)

    page.go_back()
    page.click("#analyses >> text=Compression")
    quantizations = page.eval_on_selector_all(
        "table.compression-table tbody tr", "rs => rs.map(r => r.cells[1].innerText)")
    assert {"float32", "float16", "int8", "binary", "qdrant-scalar", "qdrant-binary", "qdrant-product"} <= set(quantizations)
    assert len(page.query_selector_all("svg.chart")) == 2  # R@1 vs bytes, one per model


def test_pareto_page_marks_optimal_models(site, page):  # noqa: F811
    page.goto((site / "index.html").as_uri())
    page.click("header nav >> text=Pareto")
    assert page.title().startswith("Pareto view")
    marks = page.eval_on_selector_all(
        f"#pareto-{DATASET} table.pareto tbody tr",
        "rs => rs.map(r => [r.cells[0].innerText, r.cells[5].innerText])",
    )
    by_model = dict(marks)
    # the sharp model is more accurate at the same size; throughput decides whether the other stays
    assert by_model["sharp-model"] == "★ yes"
    assert set(by_model) == {"sharp-model", "blurry-model"}
    assert page.query_selector_all(f"#pareto-{DATASET} svg.chart g.point.optimal")
    page.screenshot(path=str(ARTIFACTS / "analysis-pareto.png"), full_page=True)
