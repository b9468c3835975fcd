"""Folder layout loader: gallery/<product>/, query/<product>/, distractors/."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from services.evaluator.datasets.base import DatasetError, GalleryType, Setup, Split
from services.evaluator.datasets.folder import load_folder


def jpeg(path: Path, color=(10, 120, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_gallery_only_is_intra_and_closed(tmp_path):
    data = jpeg(tmp_path / "gallery" / "mug-1" / "a.jpg")
    jpeg(tmp_path / "gallery" / "mug-1" / "b.JPG")
    jpeg(tmp_path / "gallery" / "mug-2" / "side" / "c.png")
    (tmp_path / "gallery" / "mug-2" / "notes.txt").write_text("not an image")
    (tmp_path / "gallery" / "mug-2" / ".hidden.jpg").write_bytes(b"skipped")
    (tmp_path / "README.md").write_text("ignored")

    dataset = load_folder(tmp_path, name="mugs")

    assert (dataset.name, dataset.setup, dataset.gallery_type) == ("mugs", Setup.INTRA, GalleryType.CLOSED)
    assert [(r.image_id, r.product_id) for r in dataset.records] == [
        ("gallery/mug-1/a.jpg", "mug-1"),
        ("gallery/mug-1/b.JPG", "mug-1"),
        ("gallery/mug-2/side/c.png", "mug-2"),
    ]
    assert all(r.location == r.image_id for r in dataset.records)
    assert len(dataset.queries()) == 3
    assert dataset.read(dataset.records[0]) == data
    assert dataset.missing() == []
    assert dataset.source == {"format": "folder", "root": str(tmp_path)}


def test_query_folder_makes_it_inter_and_distractors_open(tmp_path):
    jpeg(tmp_path / "gallery" / "p1" / "g1.jpg")
    jpeg(tmp_path / "gallery" / "p2" / "g2.jpg")
    jpeg(tmp_path / "query" / "p1" / "q1.jpg")
    jpeg(tmp_path / "distractors" / "x.jpg")
    jpeg(tmp_path / "distractors" / "more" / "y.jpg")

    dataset = load_folder(tmp_path)

    assert dataset.name == tmp_path.name
    assert (dataset.setup, dataset.gallery_type) == (Setup.INTER, GalleryType.OPEN)
    assert [r.image_id for r in dataset.queries()] == ["query/p1/q1.jpg"]
    assert dataset.queries()[0].split is Split.QUERY
    assert [r.image_id for r in dataset.gallery()] == [
        "gallery/p1/g1.jpg",
        "gallery/p2/g2.jpg",
        "distractors/more/y.jpg",
        "distractors/x.jpg",
    ]
    assert dataset.counts() == {
        "query_images": 1,
        "gallery_images": 4,
        "query_products": 1,
        "gallery_products": 2,
        "distractors": 2,
    }


def test_empty_distractor_folder_keeps_the_gallery_closed(tmp_path):
    jpeg(tmp_path / "gallery" / "p1" / "g1.jpg")
    (tmp_path / "distractors").mkdir()
    assert load_folder(tmp_path).gallery_type is GalleryType.CLOSED


def test_image_outside_a_product_folder_is_located(tmp_path):
    jpeg(tmp_path / "gallery" / "p1" / "g1.jpg")
    jpeg(tmp_path / "gallery" / "loose.jpg")
    with pytest.raises(DatasetError) as caught:
        load_folder(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'gallery' / 'loose.jpg'}: images in gallery/ must lie in gallery/<product id>/ "
        "(distractors go in distractors/)"
    )


def test_missing_folders_and_empty_splits(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_folder(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no gallery/ folder"):
        load_folder(tmp_path)
    (tmp_path / "gallery").mkdir()
    with pytest.raises(DatasetError, match="gallery split is empty"):
        load_folder(tmp_path)
    jpeg(tmp_path / "gallery" / "p" / "g.jpg")
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetError, match="query split is empty"):
        load_folder(tmp_path)
