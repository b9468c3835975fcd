"""The report site in a real headless Chromium, opened from the file system.

Results are written with results.write_run for 2 datasets x 3 models, with per-query files and
small real JPEGs on disk; the site is built, then driven like a reader would: sort the
leaderboard, filter it, open a failure gallery and a model-vs-model page. Screenshots go to
test-artifacts/ (git-ignored).

Needs Debian's `chromium` at /usr/bin/chromium (or VSBENCH_CHROMIUM) and the `playwright` Python
package; never `playwright install`.
"""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from services.evaluator import metrics
from services.evaluator.datasets.base import Dataset, GalleryType, ImageRecord, Setup, Split
from services.evaluator.report import SiteError, SiteOptions, build_site, dataset_resolver
from services.evaluator.report.thumbs import PLACEHOLDER, ThumbnailStore
from services.evaluator.record import SCHEMA_ID, RunRecord
from services.evaluator.results import QueryOutcome, load_results, write_run
from services.evaluator.tables import render_table

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("VSBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SHELF, SOP = "Shelf-Parts v1", "Mini-SOP"
ALPHA, BETA, GAMMA = "alpha/vit-b16", "beta-base", "gamma-parts"
# Queries each model gets right at rank 1: the leaderboard order is designed from these.
HITS = {
    (SHELF, ALPHA): 4,
    (SHELF, BETA): 6,
    (SHELF, GAMMA): 9,  # of 10 queries
    (SOP, ALPHA): 12,
    (SOP, BETA): 10,
    (SOP, GAMMA): 3,  # of 15 queries
}
MISS_RANKS = (2, 7, 3, 12, 4, 9)  # first correct rank of the misses, cycled (some beyond top 5)
MISSING_IMAGE = "gallery/p5_2.jpg"  # deleted after writing: its thumbnail must be the placeholder


@dataclass
class Fixture:
    results: Path
    roots: dict[str, Path]
    metrics: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    first_rank: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)


def _image(path: Path, product: int, view: int) -> None:
    from PIL import Image, ImageDraw

    hue = [(200, 60, 50), (40, 120, 200), (60, 160, 80), (220, 170, 40), (140, 70, 170), (30, 30, 30)][
        product % 6
    ]
    image = Image.new("RGB", (240, 192), hue)  # larger than a thumbnail, so it must be scaled down
    draw = ImageDraw.Draw(image)
    x = 24 + 54 * view
    draw.ellipse((x, 48, x + 78, 126), fill=(245, 245, 245))
    draw.rectangle((12, 150, 228, 174), fill=tuple(255 - c for c in hue))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=85)


def _dataset_records(name: str) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """(setup, queries [(image id, product)], gallery [(image id, product)])."""
    if name == SHELF:
        gallery = [(f"gallery/p{p}_{j}.jpg", f"p{p}") for p in range(6) for j in range(3)]
        queries = [(f"query/p{p}_{j}.jpg", f"p{p}") for p in range(6) for j in range(2 if p < 4 else 1)]
        return "inter", queries, gallery
    gallery = [(f"images/s{p}_{j}.jpg", f"s{p}") for p in range(5) for j in range(3)]
    return "intra", list(gallery), gallery


def _summary(
    name: str, model: str, root: Path, setup: str, n_queries: int, gallery: list, values: dict
) -> dict:
    products = {p for _, p in gallery}
    summary = {
        "created": "2025-06-01T12:00:00+00:00",
        "dataset": {
            "name": name,
            "setup": setup,
            "gallery_type": "closed",
            "group": "private" if name == SHELF else "public",
            "description": "Spare parts photographed on a workbench."
            if name == SHELF
            else "A tiny intra set.",
            "counts": {
                "query_images": n_queries,
                "gallery_images": len(gallery),
                "query_products": len(products),
                "gallery_products": len(products),
                "distractors": 0,
            },
            "source": {"format": "manifest", "path": str(root / "manifest.csv"), "root": str(root)},
        },
        "model": {
            "name": model,
            "dim": {ALPHA: 768, BETA: 512, GAMMA: 1024}[model],
            "dtype": "float32",
            "normalized": model != BETA,
            "revision": f"rev-{model[:4]}",
            "max_batch": 32,
            "backend": "api" if model == ALPHA else "torch",
            "preprocessing": "resize 256, center crop 224x224, mean (0.485, 0.456, 0.406)",
            "details": {
                "provider": {ALPHA: "Alpha Inc.", BETA: "Beta Lab", GAMMA: "Gamma Works"}[model],
                "architecture": "ViT-B/16" if model != GAMMA else "ConvNeXt-T",
            },
            "group": "domain-specific" if model == GAMMA else "general",
        },
        "protocol": {
            "setup": setup,
            "gallery_type": "closed",
            "recall_k": [1, 5],
            "map_k": [20, 1000] if name == SHELF else [20],
            "recall_definition": "hit rate: 1 if any relevant item is in the top K (SOP evaluate_recall)",
            "map_definition": "AP@K = (1/min(K, n_rel)) * sum_{i<=K} P(i) rel(i), mean over queries "
            "(GLDv2/ILIAS)",
            "tie_rule": "score descending, then gallery position ascending",
            "normalization": "L2-normalised float32 before indexing",
            "similarity": "dot product",
            "search": "exact (numpy)",
            "self_match": "removed by image identity (intra only)",
            "distractors": "never relevant to any query",
            "unanswerable": "excluded from means, counted",
        },
        "metrics": values,
        "queries": {
            "total": n_queries,
            "scored": n_queries,
            "unanswerable": 0,
            "failed_to_embed": 0,
            "missing_files": 0,
        },
        "gallery": {"total": len(gallery), "indexed": len(gallery), "failed_to_embed": 0, "missing_files": 0},
        "errors": [],
        "timings": {
            "embed_s": 2.0,
            "images_embedded": 40,
            "images_per_s": {ALPHA: 8.0, BETA: 55.0, GAMMA: 120.0}[model],
            "search_s": 0.01,
            "total_s": 2.5,
        },
        "versions": {"vsbench": "0.1.0", "numpy": np.__version__},
    }
    if model == ALPHA:  # an API model with a usage record; the others have none
        summary["usage"] = {
            "requests": 4,
            "billed_images": 40,
            "cached_images": 0,
            "retries": 1,
            "rate_limited": 1,
            "cost_usd": 0.004,
        }
    return summary


def make_results(base: Path) -> Fixture:
    fixture = Fixture(results=base / "results", roots={})
    for name in (SHELF, SOP):
        root = base / "data" / name.replace(" ", "_")
        fixture.roots[name] = root
        setup, queries, gallery = _dataset_records(name)
        for image_id, _product in {*queries, *gallery}:
            stem = Path(image_id).stem  # p3_1
            _image(root / image_id, int(stem[1:].split("_")[0]), int(stem.split("_")[1]))
        gallery_products = [p for _, p in gallery]
        for model_index, model in enumerate((ALPHA, BETA, GAMMA)):
            rng = np.random.default_rng(zlib.crc32(f"{name}/{model}".encode()))
            hit_queries = {queries[i][0] for i in rng.permutation(len(queries))[: HITS[(name, model)]]}
            outcomes, ranks, relevance_rows, n_rel = [], {}, [], []
            for q_index, (query_id, product) in enumerate(queries):
                candidates = [
                    g for g in range(len(gallery)) if gallery[g][0] != query_id
                ]  # self-match removed
                relevant = [g for g in candidates if gallery_products[g] == product]
                others = [g for g in candidates if gallery_products[g] != product]
                rng.shuffle(others)
                rank = 1 if query_id in hit_queries else MISS_RANKS[q_index % len(MISS_RANKS)]
                order = list(others)
                order.insert(rank - 1, relevant[0])
                for extra in relevant[1:]:
                    order.insert(int(rng.integers(rank, len(order) + 1)), extra)
                relevance = [gallery_products[g] == product for g in order]
                ranks[query_id] = relevance.index(True) + 1
                relevance_rows.append(relevance)
                n_rel.append(len(relevant))
                outcomes.append((query_id, product, len(relevant), order, relevance))
            rel = np.array(relevance_rows, dtype=bool)
            n_rel_arr = np.array(n_rel)
            ks = [20, 1000] if name == SHELF else [20]
            aps = {k: metrics.average_precision_at_k(rel, n_rel_arr, k) for k in ks}
            values = {
                "recall@1": float(metrics.recall_at_k(rel, 1).mean() * 100),
                "recall@5": float(metrics.recall_at_k(rel, 5).mean() * 100),
                **{f"map@{k}": float(aps[k].mean() * 100) for k in ks},
            }
            query_outcomes = [
                QueryOutcome(
                    query_id=qid,
                    product_id=product,
                    n_relevant=nr,
                    answerable=True,
                    first_relevant_rank=ranks[qid],
                    ap={str(k): float(aps[k][i]) for k in ks},
                    top_ids=[gallery[g][0] for g in order],
                    top_scores=[round(0.92 - 0.03 * r, 4) for r in range(len(order))],
                    top_relevant=relevance,
                )
                for i, (qid, product, nr, order, relevance) in enumerate(outcomes)
            ]
            summary = _summary(name, model, root, setup, len(queries), gallery, values)
            record = RunRecord.model_validate(
                {"schema": SCHEMA_ID, "run_id": f"20250601T120000Z-00000{model_index}", **summary}
            )
            write_run(fixture.results, record, query_outcomes)
            fixture.metrics[(name, model)] = values
            fixture.first_rank[(name, model)] = ranks
    (fixture.roots[SHELF] / MISSING_IMAGE).unlink()
    return fixture


# ---- site checks without a browser -----------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    fixture = make_results(base)
    site = base / "site"
    index = build_site(fixture.results, site, options=SiteOptions(n_boot=400, n_resamples=2000))
    return fixture, site, index


def test_site_layout_and_offline_assets(built):
    fixture, site, index = built
    assert index == site / "index.html"
    for relative in (
        "stats.html",
        "protocol.html",
        "assets/report.css",
        "assets/report.js",
        "thumbs/missing.jpg",
    ):
        assert (site / relative).is_file(), relative
    pages = list(site.rglob("*.html"))
    # 5 top pages (incl. pareto.html, published.html) + 2 datasets + 3 models + 6 failure galleries
    # + 2x3 comparisons + 2 hard-query pages; these records hold no analyses, so no analysis/ pages
    assert len(pages) == 5 + 2 + 3 + 6 + 6 + 2
    assert not (site / "analysis").exists()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text and "//cdn" not in text
    thumbs = [p for p in (site / "thumbs").rglob("*.jpg") if p.name != "missing.jpg"]
    assert thumbs and all(p.stat().st_size < 8000 for p in thumbs)
    from PIL import Image

    with Image.open(thumbs[0]) as image:
        assert image.size == (96, 77)  # 240 x 192 scaled to fit 96 px


def test_rebuild_replaces_and_refuses_foreign_folder(built, tmp_path):
    fixture, site, _ = built
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SiteError, match="not empty"):
        build_site(fixture.results, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(SiteError, match="no vsbench run records"):
        build_site(tmp_path / "empty", tmp_path / "out")


def test_site_tolerates_missing_per_query_file_and_usage(tmp_path, built):
    fixture, _, _ = built
    results = tmp_path / "results"
    shutil.copytree(fixture.results, results)
    victim = next(p for p in results.rglob("*.queries.jsonl") if "beta" in str(p))
    victim.unlink()
    resolved: list[tuple[str, str]] = []

    def resolver(dataset: str, image_id: str) -> Path | None:
        resolved.append((dataset, image_id))
        return None  # every thumbnail becomes the placeholder

    build_site(
        results, tmp_path / "site", image_resolver=resolver, options=SiteOptions(n_boot=200, n_resamples=500)
    )
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "per-query file is missing" in index
    assert resolved and all(ds in (SHELF, SOP) for ds, _ in resolved)
    failure_pages = list((tmp_path / "site" / "failures").rglob("*.html"))
    assert len(failure_pages) == 5  # beta's gallery on one dataset cannot be built

    def broken(dataset: str, image_id: str) -> Path | None:
        raise RuntimeError("resolver bug")

    build_site(
        results, tmp_path / "site2", image_resolver=broken, options=SiteOptions(n_boot=100, n_resamples=100)
    )
    page = next((tmp_path / "site2" / "failures").rglob("*.html")).read_text(encoding="utf-8")
    assert "thumbs/missing.jpg" in page and "image not available" in page


class InMemoryDataset(Dataset):
    """A dataset whose images are not plain files (as with tar shards): bytes come from read()."""

    blobs: dict[str, bytes] = {}

    def read(self, record: ImageRecord) -> bytes:
        return self.blobs[record.image_id]


def test_dataset_resolver_for_the_cli(built, tmp_path):
    fixture, _, _ = built
    root = fixture.roots[SOP]
    records = [
        ImageRecord(p.relative_to(root).as_posix(), p.relative_to(root).as_posix(), "s", Split.GALLERY)
        for p in sorted(root.rglob("*.jpg"))
    ]
    on_disk = Dataset(
        name=SOP, setup=Setup.INTRA, gallery_type=GalleryType.CLOSED, records=records, root=root
    )
    blob = (root / records[0].location).read_bytes()
    shelf = InMemoryDataset(
        name=SHELF,
        setup=Setup.INTER,
        gallery_type=GalleryType.CLOSED,
        records=[ImageRecord("query/p0_0.jpg", "shard-0/17", "p0", Split.QUERY)],
        root=tmp_path,
    )
    InMemoryDataset.blobs = {"query/p0_0.jpg": blob}
    resolve = dataset_resolver([on_disk, shelf])
    assert resolve(SOP, records[3].image_id) == root / records[3].location
    assert resolve(SHELF, "query/p0_0.jpg") == blob
    assert resolve(SHELF, "query/unknown.jpg") is None and resolve("Other", "x") is None

    store = ThumbnailStore(tmp_path / "thumbs-only", resolve)
    from_bytes, from_file = store.url(SHELF, "query/p0_0.jpg"), store.url(SOP, records[3].image_id)
    assert store.url(SHELF, "query/unknown.jpg") == PLACEHOLDER
    store.close()
    from PIL import Image

    for relative in (from_bytes, from_file):
        with Image.open(tmp_path / "thumbs-only" / relative) as image:
            assert image.format == "JPEG" and max(image.size) == 96

    # Through the whole build: Mini-SOP thumbnails are real, Shelf-Parts ones (unknown ids) placeholders.
    build_site(fixture.results, tmp_path / "site", image_resolver=resolve, options=SiteOptions(n_boot=100))
    shelf_page = (tmp_path / "site" / "failures" / "Shelf-Parts_v1" / "beta-base.html").read_text(
        encoding="utf-8"
    )
    sop_page = (tmp_path / "site" / "failures" / "Mini-SOP" / "beta-base.html").read_text(encoding="utf-8")
    assert "image not available: query/" in shelf_page
    assert "image not available" not in sop_page and "thumbs/Mini-SOP/" in sop_page


def test_site_from_minimal_records(tmp_path):
    """Only names and metrics: no per-query file, protocol, usage, timings, groups or counts."""
    results = tmp_path / "results"
    write_run(
        results,
        RunRecord.model_validate({
            "schema": SCHEMA_ID,
            "run_id": "20250601T120000Z-000000",
            "created": "2025-06-01T12:00:00+00:00",
            "dataset": {"name": "Solo", "setup": "intra", "gallery_type": "closed"},
            "model": {"name": "m1", "dim": 8},
            "metrics": {"recall@1": 12.5, "recall@5": None, "map@20": 3.0},
        }),
    )
    index = build_site(results, tmp_path / "site", options=SiteOptions(n_boot=100))
    text = index.read_text(encoding="utf-8")
    assert "12.5" in text and "no per-query file" in text
    stats_page = (tmp_path / "site" / "stats.html").read_text(encoding="utf-8")
    assert "Paired tests need per-query files" in stats_page
    assert (tmp_path / "site" / "models" / "m1.html").is_file()
    assert not (tmp_path / "site" / "failures").exists()


def test_table_renders_from_the_same_results(built):
    fixture, _, _ = built
    markdown = render_table(load_results(fixture.results), "markdown")
    assert f"mean over the 2 dataset(s) every listed model has: {SHELF}, {SOP}" in markdown
    assert markdown.index(BETA) < markdown.index(ALPHA) < markdown.index(GAMMA)


# ---- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` (or set VSBENCH_CHROMIUM)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the `playwright` Python package is missing: pip install -e '.[dev]' (never `playwright install`)"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    requests: list[str] = []

    def guard(route):
        url = route.request.url
        requests.append(url)
        if url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.requests = requests  # type: ignore[attr-defined]
    tab.errors = errors  # type: ignore[attr-defined]
    yield tab
    context.close()
    assert not errors, f"JavaScript errors: {errors}"
    leaving = [u for u in requests if not u.startswith("file://")]
    assert not leaving, f"requests left the file system: {leaving}"


def shown_models(page) -> list[str]:
    return page.eval_on_selector_all(
        "#leaderboard tr.model-row",
        "rows => rows.filter(r => r.offsetParent !== null).map(r => r.dataset.model)",
    )


def cell_text(page, model: str, key: str) -> str:
    return page.eval_on_selector_all(
        "#leaderboard tr.model-row",
        "(rows, arg) => rows.find(r => r.dataset.model === arg[0])"
        ".querySelector(`td[data-key='${arg[1]}']`).innerText",
        [model, key],
    ).strip()


def test_leaderboard_sorts_filters_and_recomputes(built, page):
    fixture, site, index = built
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(index.as_uri())
    assert page.title().startswith("Leaderboard")
    # Table 3 layout: model groups, best average R@1 first within "general".
    assert shown_models(page) == [BETA, ALPHA, GAMMA]
    assert page.inner_text("#leaderboard tbody[data-mgroup='general'] tr.group-row") == "General"
    best = page.eval_on_selector_all(
        "#leaderboard td.best", "cells => cells.map(c => c.dataset.key + '=' + c.closest('tr').dataset.model)"
    )
    assert f"{SHELF}|recall@1={GAMMA}" in best and f"{SOP}|recall@1={ALPHA}" in best
    assert cell_text(page, GAMMA, f"{SHELF}|recall@1") == "90.0"
    assert cell_text(page, ALPHA, f"{SHELF}|map@1000") == f"{fixture.metrics[(SHELF, ALPHA)]['map@1000']:.1f}"
    tooltip = page.get_attribute(
        f"#leaderboard tr[data-model='{ALPHA}'] td[data-key='{SOP}|recall@1']", "title"
    )
    assert (
        "95% CI" in tooltip
        and "K=1" in tooltip
        and "ties: score descending" in tooltip
        and "resize 256" in tooltip
    )
    page.screenshot(path=str(ARTIFACTS / "report-leaderboard.png"), full_page=True)

    # Sort by Mini-SOP R@1: highest first within each group, then lowest first on a second click.
    header = page.locator(f"#leaderboard th[data-sort='{SOP}|recall@1']")
    header.click()
    assert shown_models(page) == [ALPHA, BETA, GAMMA]
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert shown_models(page) == [BETA, ALPHA, GAMMA]
    # One flat ranking instead of groups, by Shelf-Parts R@1.
    page.uncheck("#group-models")
    page.locator(f"#leaderboard th[data-sort='{SHELF}|recall@1']").click()
    assert shown_models(page) == [GAMMA, BETA, ALPHA]
    page.check("#group-models")
    assert shown_models(page) == [BETA, ALPHA, GAMMA]

    # Hide the private datasets: the average is now over Mini-SOP alone, and says so.
    page.uncheck("input[data-filter='dgroup'][value='private']")
    assert page.inner_text("#average-text").endswith(f"every listed model has: {SOP}.")
    assert cell_text(page, ALPHA, "avg|recall@1") == "80.0"
    assert not page.is_visible(f"#leaderboard th.dataset-head[data-dataset='{SHELF}']")
    page.check("input[data-filter='dgroup'][value='private']")
    # Hide a metric: its columns go, and the dataset header spans one column less.
    shelf_head = f"#leaderboard th.dataset-head[data-dataset='{SHELF}']"
    assert page.eval_on_selector(shelf_head, "th => th.colSpan") == 4
    page.uncheck("input[data-filter='metric'][value='map@1000']")
    assert page.eval_on_selector(shelf_head, "th => th.colSpan") == 3
    assert not page.is_visible(f"#leaderboard th[data-sort='{SHELF}|map@1000']")
    page.screenshot(path=str(ARTIFACTS / "report-leaderboard-filtered.png"), full_page=True)
    page.check("input[data-filter='metric'][value='map@1000']")
    # Filter by name.
    page.fill("#model-filter", "gamma")
    assert shown_models(page) == [GAMMA]
    page.fill("#model-filter", "")
    page.check("#show-ci")
    assert page.is_visible(f"#leaderboard tr[data-model='{ALPHA}'] td[data-key='{SOP}|recall@1'] .ci")
    page.screenshot(path=str(ARTIFACTS / "report-leaderboard-ci.png"), full_page=True)

    # A number leads to how it was computed.
    page.click(f"#leaderboard tr[data-model='{BETA}'] td[data-key='{SOP}|recall@1'] a")
    assert page.url.endswith("datasets/Mini-SOP.html#r-beta-base")
    assert page.is_visible("svg.chart")
    page.screenshot(path=str(ARTIFACTS / "report-dataset.png"), full_page=True)


def _loaded(page, selector: str) -> list[dict]:
    page.eval_on_selector_all(
        selector, "imgs => imgs.forEach(i => { i.loading = 'eager'; i.scrollIntoView(); })"
    )
    page.wait_for_function(
        "sel => Array.from(document.querySelectorAll(sel)).every(i => i.complete)",
        arg=selector,
        timeout=10_000,
    )
    return page.eval_on_selector_all(
        selector, "imgs => imgs.map(i => ({w: i.naturalWidth, cls: i.className, alt: i.alt, src: i.src}))"
    )


def test_failure_gallery_shows_misses_with_thumbnails(built, page):
    fixture, site, _ = built
    page.goto((site / "datasets" / "Shelf-Parts_v1.html").as_uri())
    page.click(f"tr#r-{ALPHA.replace('/', '__')} >> text=gallery")
    assert "misses on Shelf-Parts v1" in page.title()
    truth = fixture.first_rank[(SHELF, ALPHA)]
    misses = {q: r for q, r in truth.items() if r != 1}
    cards = page.eval_on_selector_all(
        "ol.gallery li.card",
        """cards => cards.map(c => ({
            query: c.querySelector('figure.query code').innerText,
            rank: c.querySelector('.rank').innerText,
            marks: Array.from(c.querySelectorAll('ol.top li')).map(li => li.classList.contains('ok')),
            margin: c.querySelector('.facts').innerText}))""",
    )
    assert {c["query"] for c in cards} == set(misses)
    for card in cards:
        rank = misses[card["query"]]
        assert card["rank"] == f"first correct at rank {rank}"
        assert len(card["marks"]) == 5
        # ✓ marks: nothing correct before the first correct rank, and that one marked.
        assert not any(card["marks"][: rank - 1])
        assert card["marks"][rank - 1] if rank <= 5 else not any(card["marks"])
        assert f"margin {0.03 * (rank - 1):.3f}" in card["margin"]
    # Most confident mistake (largest margin = worst rank here) comes first.
    assert cards[0]["rank"] == f"first correct at rank {max(misses.values())}"
    images = _loaded(page, "ol.gallery img")
    assert images and all(i["w"] > 0 for i in images)
    real = [i for i in images if "placeholder" not in i["cls"]]
    assert len(real) > len(images) // 2
    placeholders = [i for i in images if "placeholder" in i["cls"]]
    assert all(MISSING_IMAGE in i["alt"] for i in placeholders)
    page.screenshot(path=str(ARTIFACTS / "report-failures.png"), full_page=True)

    # Only misses beyond the top 5.
    page.check("#only-beyond5")
    shown = page.eval_on_selector_all("ol.gallery li.card", "cs => cs.filter(c => !c.hidden).length")
    assert shown == sum(r > 5 for r in misses.values())


def test_model_vs_model_page(built, page):
    fixture, site, _ = built
    page.goto((site / "failures" / "Mini-SOP" / "beta-base.html").as_uri())
    page.click(f"a:has-text('{BETA} vs {ALPHA}')")
    right = {q for q, r in fixture.first_rank[(SOP, ALPHA)].items() if r == 1}
    wrong_beta = {q for q, r in fixture.first_rank[(SOP, BETA)].items() if r != 1}
    expected = right & wrong_beta
    heading = page.inner_text("#win-0 h2")
    assert heading == f"{ALPHA} right, {BETA} wrong ({len(expected)})"
    shown = set(
        page.eval_on_selector_all(
            "#win-0 li.card figure.query code:first-of-type", "cs => cs.map(c => c.innerText)"
        )
    )
    assert shown == expected
    images = _loaded(page, "#win-0 img")
    assert all(i["w"] > 0 for i in images)
    page.screenshot(path=str(ARTIFACTS / "report-compare.png"), full_page=True)

    page.goto((site / "stats.html").as_uri())
    # One 3 x 3 matrix per dataset and metric: Shelf-Parts has 4 metrics (with mAP@1000), Mini-SOP 3.
    assert page.locator("table.matrix td.pair").count() == (4 + 3) * 9
    page.screenshot(path=str(ARTIFACTS / "report-stats.png"), full_page=True)
