"""The quickstart dataset: built from the shipped real photos, deterministic, reusable, licensed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.evaluator.datasets.base import DatasetError, GalleryType, Setup, Split
from services.evaluator.datasets.manifest import load_manifest
from services.evaluator.quickstart import build as build_module
from services.evaluator.quickstart.build import (
    OPEN_SET_HELD_OUT, PROVENANCE_NAME, STAMP_NAME, build_quickstart_dataset,
)
from services.evaluator.quickstart.catalog import CATALOG_CSV, COLUMNS, PHOTOS_DIR, Role, read_catalog
from services.evaluator.quickstart.curate import curate
from services.evaluator.quickstart.synth import perspective_coefficients, rectangle

ROWS = read_catalog()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def provenance(out: Path) -> list[dict[str, str]]:
    with (out / PROVENANCE_NAME).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    build_quickstart_dataset(out, seed=0, queries_per_product=2, size="small")
    return out


@pytest.fixture(scope="module")
def full_build(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("full")
    return out, build_quickstart_dataset(out, seed=3, queries_per_product=3, size="full")


# ---- the shipped photos and their licences -------------------------------------------------


def test_every_shipped_photo_is_catalogued_with_source_and_licence():
    shipped = {p.name for p in PHOTOS_DIR.iterdir() if p.name != "NOTICE"}
    catalogued = {r.file for r in ROWS}
    assert shipped == catalogued
    for row in ROWS:
        assert row.source and row.original_path and row.licence and row.copyright, row.file


def test_notice_lists_every_photo_with_its_source_path_and_licence():
    notice = (PHOTOS_DIR / "NOTICE").read_text(encoding="utf-8")
    for row in ROWS:
        line = next(l for l in notice.splitlines() if l.startswith(f"- {row.file}:"))
        assert row.original_path in line and row.licence in line and row.source in line


def test_shipped_photos_are_small_jpegs():
    total = 0
    for row in ROWS:
        path = PHOTOS_DIR / row.file
        with Image.open(path) as image:
            assert image.format == "JPEG" and max(image.size) <= 640, row.file
        total += path.stat().st_size
    assert total < 6_000_000


def test_catalog_holds_real_pairs_distractors_and_backgrounds():
    roles = {role: [r for r in ROWS if r.role is role] for role in Role}
    assert len(roles[Role.QUERY]) >= 15
    assert len(roles[Role.DISTRACTOR]) >= 25
    assert {r.product_id for r in roles[Role.QUERY]} <= {r.product_id for r in roles[Role.CATALOG]}
    small = [r for r in ROWS if r.in_small]
    assert any(r.role is Role.QUERY for r in small) and any(r.role is Role.BACKGROUND for r in small)


# ---- manifests ----------------------------------------------------------------------------


@pytest.mark.slow  # builds the full set (a few seconds on 2 cores)
def test_full_build_shape(full_build):
    out, manifests = full_build
    assert set(manifests) == {"closed", "open"}
    closed, opened = load_manifest(manifests["closed"]), load_manifest(manifests["open"])
    products = {r.product_id for r in ROWS if r.role is Role.CATALOG}
    real = [r for r in ROWS if r.role is Role.QUERY]
    distractors = [r for r in ROWS if r.role is Role.DISTRACTOR]
    assert (closed.setup, closed.gallery_type) == (Setup.INTER, GalleryType.CLOSED)
    assert (opened.setup, opened.gallery_type) == (Setup.INTER, GalleryType.OPEN)
    assert closed.name == "quickstart-closed" and opened.name == "quickstart-open"
    assert closed.counts() == {
        "query_images": len(real) + 3 * len(products),
        "gallery_images": 2 * len(products),  # the catalog photo and a detail shot
        "query_products": len(products),
        "gallery_products": len(products),
        "distractors": 0,
    }
    assert opened.counts()["distractors"] == len(distractors)
    assert opened.counts()["gallery_products"] == len(products) - len(OPEN_SET_HELD_OUT)
    assert set(OPEN_SET_HELD_OUT) <= products
    assert opened.queries() == closed.queries()
    assert not closed.missing() and not opened.missing()
    for dataset in (closed, opened):
        assert all(dataset.path_of(r).resolve().is_relative_to(out.resolve()) for r in dataset.records)
    with Image.open(opened.path_of(opened.queries()[0])) as image:
        assert max(image.size) <= 640


@pytest.mark.parametrize("variant", ["closed", "open"])
def test_every_query_product_has_gallery_images_and_distractors_only_when_open(small_build, variant):
    dataset = load_manifest(small_build / variant / f"quickstart-{variant}.csv")
    gallery_products = {r.product_id for r in dataset.gallery()}
    query_products = {q.product_id for q in dataset.queries()}
    if variant == "closed":
        assert query_products <= gallery_products
    else:
        # the held-out products query as real out-of-catalog photos; every other product is in
        held_out = query_products - gallery_products
        assert held_out and held_out <= set(OPEN_SET_HELD_OUT)
        assert query_products - held_out <= gallery_products
        real = {r["product_id"] for r in provenance(small_build) if r["kind"] == "real_query"}
        assert held_out <= real  # each out-of-catalog product has a real photo among its queries
    assert all(not q.is_distractor for q in dataset.queries())
    has_distractors = any(r.is_distractor for r in dataset.gallery())
    assert has_distractors is (variant == "open")
    with (small_build / variant / f"quickstart-{variant}.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == ["image_id", "location", "product_id", "split"]


def test_real_pairs_are_queries(small_build):
    rows = provenance(small_build)
    real_queries = [r for r in rows if r["kind"] == "real_query"]
    expected = {(r.file, r.product_id) for r in ROWS if r.role is Role.QUERY and r.in_small}
    assert {(r["sources"], r["product_id"]) for r in real_queries} == expected
    assert all(r["split"] == Split.QUERY.value for r in real_queries)
    catalog_sources = {r["sources"] for r in rows if r["kind"] == "catalog"}
    assert not catalog_sources & {s for s, _ in expected}  # a real query photo never sits in the gallery


def test_every_built_image_records_its_sources_and_licences(small_build):
    by_file = {r.file: r for r in ROWS}
    rows = provenance(small_build)
    assert {r["kind"] for r in rows} == {"catalog", "detail", "real_query", "synthetic_query", "distractor"}
    for row in rows:
        sources = row["sources"].split(";")
        assert sources and all(s in by_file for s in sources), row
        for source in sources:
            assert by_file[source].licence in row["licences"]
    synthetic = [r for r in rows if r["kind"] == "synthetic_query"]
    # A synthetic query names the catalog photo it shows first, then any clutter it was pasted on.
    for row in synthetic:
        first = by_file[row["sources"].split(";")[0]]
        assert (first.role, first.product_id) == (Role.CATALOG, row["product_id"])
        params = json.loads(row["params"])
        assert params["framing"]["framing"] in ("filled", "pasted") and 30 <= params["jpeg_quality"] <= 80
    assert any(len(r["sources"].split(";")) > 1 for r in synthetic)


# ---- determinism and reuse ------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small_build, tmp_path):
    again = tmp_path / "again"
    build_quickstart_dataset(again, seed=0, queries_per_product=2, size="small")
    assert tree_digest(again) == tree_digest(small_build)


def test_another_seed_changes_the_synthetic_images_only(small_build, tmp_path):
    other = tmp_path / "other"
    build_quickstart_dataset(other, seed=1, queries_per_product=2, size="small")
    first, second = tree_digest(small_build), tree_digest(other)
    assert first.keys() == second.keys()
    changed = {name for name in first if first[name] != second[name]}
    assert all("_synthetic-" in n or "_detail" in n for n in changed if n.startswith("images/"))
    assert any("_synthetic-" in n for n in changed)
    assert first["images/gallery/pasta-box_catalog-1.jpg"] == second["images/gallery/pasta-box_catalog-1.jpg"]


def test_second_build_reuses_the_first(tmp_path, monkeypatch):
    out = tmp_path / "qs"
    first = build_quickstart_dataset(out, seed=5, queries_per_product=1, size="small")
    before = tree_digest(out)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the existing build should have been reused")

    monkeypatch.setattr(build_module, "_make_images", must_not_run)
    assert build_quickstart_dataset(out, seed=5, queries_per_product=1, size="small") == first
    assert tree_digest(out) == before


def test_a_different_build_replaces_the_old_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "qs"
    build_quickstart_dataset(out, seed=0, queries_per_product=3, size="small")
    (out / "notes.txt").write_text("mine")
    build_quickstart_dataset(out, seed=0, queries_per_product=1, size="small")
    names = set(tree_digest(out))
    assert not any("_synthetic-2" in n or "_synthetic-3" in n for n in names)
    assert any("_synthetic-1" in n for n in names)
    assert (out / "notes.txt").read_text() == "mine"
    stamp = json.loads((out / STAMP_NAME).read_text())
    assert stamp["queries_per_product"] == 1
    assert set(stamp["files"]) == names - {"notes.txt", STAMP_NAME}


def test_an_interrupted_build_is_redone(tmp_path):
    out = tmp_path / "qs"
    build_quickstart_dataset(out, seed=0, queries_per_product=1, size="small")
    expected = tree_digest(out)
    (out / STAMP_NAME).unlink()
    victim = next((out / "images" / "queries").iterdir())
    victim.write_bytes(b"truncated")
    build_quickstart_dataset(out, seed=0, queries_per_product=1, size="small")
    assert tree_digest(out) == expected


def test_a_deleted_image_makes_the_build_run_again(tmp_path):
    out = tmp_path / "qs"
    build_quickstart_dataset(out, seed=0, queries_per_product=1, size="small")
    expected = tree_digest(out)
    (out / "images" / "gallery" / "pasta-box_detail.jpg").unlink()
    build_quickstart_dataset(out, seed=0, queries_per_product=1, size="small")
    assert tree_digest(out) == expected


# ---- bad input ----------------------------------------------------------------------------


def test_unknown_size_and_negative_query_count_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="size 'huge'"):
        build_quickstart_dataset(tmp_path, size="huge")
    with pytest.raises(DatasetError, match="queries_per_product"):
        build_quickstart_dataset(tmp_path, queries_per_product=-1)
    assert not any(tmp_path.iterdir())


def test_a_bad_catalog_names_each_bad_line(tmp_path):
    lines = CATALOG_CSV.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    broken = [rows[0].replace(",catalog,", ",poster,"), rows[1].replace("pasta-box,query", ",query")] + rows[
        2:
    ]
    bad = tmp_path / "catalog.csv"
    bad.write_text("\n".join([header, *broken]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        read_catalog(bad)
    assert "line 2: unknown role 'poster'" in str(caught.value)
    assert "line 3: role query needs product_id" in str(caught.value)


def test_a_missing_photo_is_named(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(DatasetError, match="shipped photos missing: .*opencv_box.jpg"):
        build_quickstart_dataset(tmp_path / "out", size="small", photos_dir=photos)


# ---- synthesis and curation ----------------------------------------------------------------


def test_perspective_coefficients_map_output_corners_to_input_corners():
    output = rectangle(200, 100)
    inputs = np.array([[10.0, 5.0], [180.0, 20.0], [190.0, 95.0], [0.0, 80.0]])
    a, b, c, d, e, f, g, h = perspective_coefficients(output, inputs)
    for (x, y), (u, v) in zip(output, inputs):
        w = g * x + h * y + 1
        assert (a * x + b * y + c) / w == pytest.approx(u)
        assert (d * x + e * y + f) / w == pytest.approx(v)


def test_curate_remakes_photos_and_notice_from_the_originals(tmp_path):
    header = ",".join(COLUMNS)
    table = tmp_path / "catalog.csv"
    table.write_text(
        "\n".join(
            [
                header,
                "a_logo.jpg,thing,catalog,pkg-a 1.0 (PyPI),data/logo.png,BSD-3-Clause,someone,yes",
                "a_scene.jpg,thing,query,pkg-a 1.0 (PyPI),data/scene.png,BSD-3-Clause,someone,yes",
                "b_wall.jpg,,background,pkg-b 2 (Debian),usr/share/wall.png,CC0-1.0,nobody,yes",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    (root_a / "data").mkdir(parents=True)
    (root_b / "usr" / "share").mkdir(parents=True)
    Image.new("RGBA", (1000, 500), (255, 0, 0, 0)).save(root_a / "data" / "logo.png")  # transparent
    Image.new("L", (300, 200), 90).save(root_a / "data" / "scene.png")
    Image.new("RGB", (64, 64), (0, 128, 0)).save(root_b / "usr" / "share" / "wall.png")
    out = tmp_path / "photos"
    written = curate({"pkg-a": root_a, "pkg-b": root_b}, photos_dir=out, catalog_csv=table)
    assert sorted(p.name for p in written) == ["a_logo.jpg", "a_scene.jpg", "b_wall.jpg"]
    with Image.open(out / "a_logo.jpg") as logo:
        assert logo.size == (640, 320) and logo.mode == "RGB"
        assert min(logo.getpixel((10, 10))) > 240  # transparency flattened on white
    notice = (out / "NOTICE").read_text(encoding="utf-8")
    assert "- b_wall.jpg: pkg-b 2 (Debian), usr/share/wall.png; CC0-1.0; (c) nobody" in notice
    with pytest.raises(SystemExit, match="no --root given for: pkg-b"):
        curate({"pkg-a": root_a}, photos_dir=out, catalog_csv=table)


def test_synthetic_queries_are_jpegs_within_the_size(small_build):
    for path in (small_build / "images" / "queries").glob("*_synthetic-*.jpg"):
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "JPEG" and max(image.size) <= 320 and image.mode == "RGB"


def test_quickstart_is_a_dataset_format(tmp_path):
    from services.evaluator.datasets.base import DatasetError, GalleryType
    from services.evaluator.datasets.registry import load_dataset

    open_set = load_dataset("quickstart", tmp_path / "qs", variant="open", size="small")
    closed = load_dataset("quickstart", tmp_path / "qs", variant="closed", size="small", name="qs-closed")
    assert open_set.gallery_type is GalleryType.OPEN and closed.gallery_type is GalleryType.CLOSED
    assert closed.name == "qs-closed" and not closed.missing() and not open_set.missing()
    assert {r.image_id for r in closed.queries()} == {r.image_id for r in open_set.queries()}
    with pytest.raises(DatasetError, match="expected one of closed, open"):
        load_dataset("quickstart", tmp_path / "qs", variant="ajar")
