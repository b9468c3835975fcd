"""Generic manifest loader and writer: formats, dataset facts, and every located error."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from services.evaluator.datasets.base import (
    Dataset,
    DatasetError,
    GalleryType,
    ImageRecord,
    Setup,
    Split,
)
from services.evaluator.datasets.manifest import load_manifest, write_manifest


def jpeg(path: Path, color=(200, 30, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, **options) -> str:
    with pytest.raises(DatasetError) as caught:
        load_manifest(path, **options)
    return str(caught.value)


# ---- loading -----------------------------------------------------------------------------


def test_csv_intra_manifest_infers_facts_and_reads_bytes(tmp_path):
    data = jpeg(tmp_path / "shop" / "img" / "a.jpg")
    jpeg(tmp_path / "shop" / "img" / "b.jpg", (0, 0, 255))
    manifest = write(
        tmp_path / "shop" / "manifest.csv",
        "image_id,location,product_id,split\n"
        "a,img/a.jpg,p1,gallery\n"
        "\n"
        "b,img/b.jpg,p1,GALLERY\n"
        "c,img/c.jpg,p2,gallery\n",
    )
    dataset = load_manifest(manifest)

    assert dataset.name == "shop"  # a generic file name takes the folder's name
    assert dataset.setup is Setup.INTRA
    assert dataset.gallery_type is GalleryType.CLOSED
    assert [r.image_id for r in dataset.records] == ["a", "b", "c"]
    assert dataset.counts() == {
        "query_images": 3,
        "gallery_images": 3,
        "query_products": 2,
        "gallery_products": 2,
        "distractors": 0,
    }
    assert dataset.read(dataset.records[0]) == data
    assert dataset.source["format"] == "manifest"
    assert dataset.source["setup_from"] == "inferred"
    # A missing image is no load error: the pipeline lists it and goes on.
    assert [r.image_id for r in dataset.missing()] == ["c"]


def test_csv_inter_open_with_path_alias_and_extra_columns(tmp_path):
    manifest = write(
        tmp_path / "retail.csv",
        "split,path,image_id,product_id,note\n"
        "query,q/1.jpg,q1,p1,front\n"
        "gallery,g/1.jpg,g1,p1,\n"
        "gallery,g/2.jpg,g2,,a distractor\n",
    )
    dataset = load_manifest(manifest)

    assert dataset.name == "retail"
    assert dataset.setup is Setup.INTER
    assert dataset.gallery_type is GalleryType.OPEN
    assert dataset.queries() == [ImageRecord("q1", "q/1.jpg", "p1", Split.QUERY)]
    assert [r.image_id for r in dataset.gallery()] == ["g1", "g2"]
    assert dataset.counts()["distractors"] == 1
    assert dataset.root == tmp_path


def test_jsonl_accepts_integer_ids_and_null_product(tmp_path):
    manifest = write(
        tmp_path / "set.jsonl",
        '{"image_id": 1, "location": "a.jpg", "product_id": 17, "split": "query"}\n'
        "\n"
        '{"image_id": 2, "path": "b.jpg", "product_id": 17, "split": "gallery"}\n'
        '{"image_id": 3, "location": "c.jpg", "product_id": null, "split": "gallery"}\n',
    )
    dataset = load_manifest(manifest)

    assert [(r.image_id, r.product_id, r.split) for r in dataset.records] == [
        ("1", "17", Split.QUERY),
        ("2", "17", Split.GALLERY),
        ("3", "", Split.GALLERY),
    ]
    assert dataset.gallery_type is GalleryType.OPEN


def test_sidecar_gives_facts_and_arguments_win(tmp_path):
    jpeg(tmp_path / "images" / "a.jpg")
    folder = tmp_path / "meta"
    manifest = write(
        folder / "manifest.csv", "image_id,location,product_id,split\na,a.jpg,p,gallery\nb,b.jpg,q,gallery\n"
    )
    write(
        folder / "dataset.yaml",
        "name: furniture-v1\nsetup: intra\ngallery_type: open\ndescription: sofas\nroot: ../images\n"
        "source: {origin: crawl-2024}\n",
    )
    # The sidecar's root is outside the manifest's folder: only the one running the benchmark may
    # allow that (see tests/unit/test_hostile_datasets.py for the refusal).
    dataset = load_manifest(manifest, allow_outside_root=True)
    assert dataset.name == "furniture-v1"
    assert dataset.gallery_type is GalleryType.OPEN  # declared open, even without distractors
    assert dataset.description == "sofas"
    assert dataset.path_of(dataset.records[0]).resolve() == (tmp_path / "images" / "a.jpg").resolve()
    assert dataset.missing() == [dataset.records[1]]
    assert dataset.source["origin"] == "crawl-2024"
    assert dataset.source["setup_from"] == "dataset.yaml"

    overridden = load_manifest(manifest, name="other", gallery_type="closed", root=tmp_path)
    assert (overridden.name, overridden.gallery_type, overridden.root) == (
        "other",
        GalleryType.CLOSED,
        tmp_path,
    )
    assert overridden.source["setup_from"] == "dataset.yaml"


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    original = Dataset(
        name="p",
        setup=Setup.INTER,
        gallery_type=GalleryType.OPEN,
        records=[
            ImageRecord("q", "q.jpg", "1", Split.QUERY),
            ImageRecord("g", "g.jpg", "1", Split.GALLERY),
            ImageRecord("d", "d.jpg", "", Split.GALLERY),
        ],
        root=tmp_path,
    )
    path = write_manifest(original, tmp_path / "m.parquet", sidecar=False)
    loaded = load_manifest(path, name="p")
    assert loaded.records == original.records
    assert (loaded.setup, loaded.gallery_type) == (Setup.INTER, GalleryType.OPEN)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    message = error_of(path)
    assert "m.parquet" in message and "needs pyarrow" in message and "CSV or JSONL" in message


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".tsv"])
def test_write_manifest_round_trips_records_and_facts(tmp_path, suffix):
    images = tmp_path / "images"
    jpeg(images / "g, 1.jpg")  # a comma in a name must survive CSV quoting
    original = Dataset(
        name="round",
        setup=Setup.INTER,
        gallery_type=GalleryType.OPEN,
        records=[
            ImageRecord("q1", "q1.jpg", "p1", Split.QUERY),
            ImageRecord("g1", "g, 1.jpg", "p1", Split.GALLERY),
            ImageRecord("d1", "d1.jpg", "", Split.GALLERY),
        ],
        root=images,
        description="written by a test",
        source={"format": "folder"},
    )
    target = write_manifest(original, tmp_path / "out" / f"manifest{suffix}")

    sidecar = yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())
    assert sidecar["root"] == "../images"
    loaded = load_manifest(target, allow_outside_root=True)
    assert loaded.records == original.records
    assert (loaded.name, loaded.setup, loaded.gallery_type, loaded.description) == (
        "round",
        Setup.INTER,
        GalleryType.OPEN,
        "written by a test",
    )
    assert loaded.source["original_format"] == "folder" and loaded.source["format"] == "manifest"
    assert loaded.path_of(loaded.records[1]).resolve() == (images / "g, 1.jpg").resolve()


def test_write_manifest_refuses_invalid_dataset_and_keeps_the_old_file(tmp_path):
    target = write(tmp_path / "manifest.csv", "image_id,location,product_id,split\na,a.jpg,p,gallery\n")
    before = target.read_text()
    broken = Dataset(
        name="broken",
        setup=Setup.INTER,
        gallery_type=GalleryType.CLOSED,
        records=[ImageRecord("g", "g.jpg", "p", Split.GALLERY)],  # inter without queries
    )
    with pytest.raises(DatasetError, match="query split is empty"):
        write_manifest(broken, target)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_write_manifest_refuses_tar_backed_datasets(tmp_path):
    class ShardDataset(Dataset):
        def read(self, record):
            return b""

    dataset = ShardDataset(
        "s", Setup.INTRA, GalleryType.CLOSED, [ImageRecord("a", "a.jpg", "p", Split.GALLERY)]
    )
    with pytest.raises(DatasetError, match="cannot describe"):
        write_manifest(dataset, tmp_path / "m.csv")


# ---- located errors ----------------------------------------------------------------------

HEADER = "image_id,location,product_id,split\n"


def test_unknown_split_names_file_and_line(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + "a,a.jpg,p,gallery\nb,b.jpg,p,train\n")
    assert error_of(manifest) == "manifest.csv line 3: unknown split 'train' (expected query or gallery)"


def test_missing_column(tmp_path):
    manifest = write(tmp_path / "manifest.csv", "image_id,location,product_id\na,a.jpg,p\n")
    message = error_of(manifest)
    assert message.startswith("manifest.csv line 1: missing column 'split'")


def test_missing_jsonl_key_and_bad_json_are_located(tmp_path):
    manifest = write(
        tmp_path / "m.jsonl",
        '{"image_id": "a", "location": "a.jpg", "product_id": "p", "split": "gallery"}\n'
        '{"image_id": "b", "location": "b.jpg", "split": "gallery"}\n'
        "{not json\n"
        "[1, 2]\n",
    )
    message = error_of(manifest)
    assert "m.jsonl: 3 problems" in message
    assert "m.jsonl line 2: missing key 'product_id'" in message
    assert "m.jsonl line 3: not a JSON object" in message
    assert "m.jsonl line 4: expected a JSON object, found list" in message


def test_duplicate_id_names_both_lines(tmp_path):
    manifest = write(
        tmp_path / "manifest.csv", HEADER + "a,a.jpg,p,gallery\nb,b.jpg,p,gallery\na,c.jpg,q,gallery\n"
    )
    assert error_of(manifest) == "manifest.csv lines 2 and 4: duplicate image id 'a'"


@pytest.mark.parametrize(
    "location", ["/etc/passwd", "../outside.jpg", "img/../../x.jpg", "C:\\\\x\\\\..\\\\..\\\\y.jpg"]
)
def test_location_escaping_the_root(tmp_path, location):
    manifest = write(tmp_path / "manifest.csv", HEADER + f'a,a.jpg,p,gallery\nb,"{location}",p,gallery\n')
    message = error_of(manifest)
    assert message.startswith("manifest.csv line 3: location") and "escapes the dataset root" in message


def test_query_without_product_id(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + "g,g.jpg,p,gallery\nq,q.jpg,,query\n")
    assert error_of(manifest) == "manifest.csv line 3: query 'q' has no product id"


def test_query_rows_in_a_declared_intra_dataset(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + "g,g.jpg,p,gallery\nq,q.jpg,p,query\n")
    message = error_of(manifest, setup="intra")
    assert message.startswith("manifest.csv line 3: query 'q' in an intra dataset")


def test_distractor_in_a_declared_closed_gallery(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + "g,g.jpg,p,gallery\nd,d.jpg,,gallery\n")
    message = error_of(manifest, gallery_type="closed")
    assert message.startswith("manifest.csv line 3: distractor 'd' (no product id) in a closed gallery")


def test_empty_splits(tmp_path):
    only_gallery = write(tmp_path / "a" / "manifest.csv", HEADER + "g,g.jpg,p,gallery\n")
    assert error_of(only_gallery, setup="inter") == (
        "manifest.csv: the query split is empty (an inter dataset needs query rows)"
    )
    only_queries = write(tmp_path / "b" / "manifest.csv", HEADER + "q,q.jpg,p,query\n")
    assert error_of(only_queries) == "manifest.csv: the gallery split is empty"
    header_only = write(tmp_path / "c" / "manifest.csv", HEADER)
    assert error_of(header_only) == "manifest.csv: no records"
    only_distractors = write(tmp_path / "d" / "manifest.csv", HEADER + "d,d.jpg,,gallery\n")
    assert "no gallery image has a product id" in error_of(only_distractors)


def test_all_problems_are_reported_together(tmp_path):
    manifest = write(
        tmp_path / "manifest.csv",
        HEADER + "a,a.jpg,p,gallery\n,b.jpg,p,gallery\nc,c.jpg,p,train\nd,/d.jpg,p,gallery\ne,e.jpg,p\n",
    )
    message = error_of(manifest)
    lines = message.splitlines()
    assert lines[0] == "manifest.csv: 4 problems"
    assert "  manifest.csv line 3: empty image_id" in lines
    assert "  manifest.csv line 4: unknown split 'train' (expected query or gallery)" in lines
    assert any(line.startswith("  manifest.csv line 5: location '/d.jpg'") for line in lines)
    assert "  manifest.csv line 6: expected 4 fields, found 3" in lines


def test_quoted_field_spanning_lines_keeps_later_line_numbers_right(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + 'a,"odd\nname.jpg",p,gallery\nb,b.jpg,p,nope\n')
    assert error_of(manifest).startswith("manifest.csv line 4: unknown split 'nope'")


def test_manifest_file_itself_missing_or_unknown_kind(tmp_path):
    message = error_of(tmp_path / "nowhere.csv")
    assert "nowhere.csv" in message and "manifest file not found" in message
    odd = write(tmp_path / "m.xml", "<x/>")
    assert "unknown manifest kind '.xml'" in error_of(odd)


def test_bad_sidecar_is_located(tmp_path):
    manifest = write(tmp_path / "manifest.csv", HEADER + "a,a.jpg,p,gallery\n")
    sidecar = write(tmp_path / "dataset.yaml", "name: x\nsetpu: intra\n")
    assert error_of(manifest) == (
        "dataset.yaml: unknown key 'setpu' (known: name, setup, gallery_type, description, root, source)"
    )
    sidecar.write_text("setup: both\n")
    assert error_of(manifest) == "dataset.yaml: setup must be intra or inter, got 'both'"
    sidecar.unlink()
    write(tmp_path / "dataset.json", json.dumps({"gallery_type": "half"}))
    assert error_of(manifest) == "dataset.json: gallery_type must be closed or open, got 'half'"
