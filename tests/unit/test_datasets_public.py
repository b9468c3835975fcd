"""Stanford Online Products and Products-10K loaders on fixtures in their official layouts."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from services.evaluator.datasets.base import DatasetError, GalleryType, Setup, Split
from services.evaluator.datasets.products10k import load_products10k
from services.evaluator.datasets.sop import load_sop


def jpeg(path: Path, color=(90, 90, 200)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


# ---- Stanford Online Products --------------------------------------------------------------

SOP_TEST = [
    # image_id class_id super_class_id path  (test class ids start at 11319)
    (1, 11319, 1, "bicycle_final/111085122871_0.JPG"),
    (2, 11319, 1, "bicycle_final/111085122871_1.JPG"),
    (3, 11320, 1, "bicycle_final/111265328556_0.JPG"),
    (4, 11321, 10, "stapler_final/121589474411_0.JPG"),
    (5, 11321, 10, "stapler_final/121589474411_4.JPG"),
]


@pytest.fixture()
def sop_tree(tmp_path) -> Path:
    top = tmp_path / "Stanford_Online_Products"
    top.mkdir()
    lines = ["image_id class_id super_class_id path"] + [" ".join(map(str, row)) for row in SOP_TEST]
    (top / "Ebay_test.txt").write_text("\n".join(lines) + "\n")
    (top / "Ebay_train.txt").write_text(
        "image_id class_id super_class_id path\n1 1 1 bicycle_final/1_0.JPG\n2 1 1 bicycle_final/1_1.JPG\n"
    )
    for n, (*_, path) in enumerate(SOP_TEST[:-1]):
        jpeg(top / path, (n * 40, 0, 0))
    return top


def test_sop_test_split_is_intra_closed_with_class_products(sop_tree):
    dataset = load_sop(sop_tree)

    assert (dataset.name, dataset.setup, dataset.gallery_type) == ("sop", Setup.INTRA, GalleryType.CLOSED)
    assert [r.image_id for r in dataset.records] == [row[3] for row in SOP_TEST]
    assert [r.product_id for r in dataset.records] == ["11319", "11319", "11320", "11321", "11321"]
    assert all(r.split is Split.GALLERY and r.location == r.image_id for r in dataset.records)
    assert dataset.counts() == {
        "query_images": 5,
        "gallery_images": 5,
        "query_products": 3,
        "gallery_products": 3,
        "distractors": 0,
    }
    first = dataset.records[0]
    assert dataset.read(first) == (sop_tree / first.location).read_bytes()
    assert [r.image_id for r in dataset.missing()] == ["stapler_final/121589474411_4.JPG"]
    assert dataset.source == {
        "format": "sop",
        "root": str(sop_tree),
        "index": "Ebay_test.txt",
        "split": "test",
    }


def test_sop_accepts_the_parent_folder_and_the_train_split(sop_tree):
    assert len(load_sop(sop_tree.parent).records) == 5
    train = load_sop(sop_tree, split="train")
    assert train.name == "sop-train" and [r.product_id for r in train.records] == ["1", "1"]
    with pytest.raises(DatasetError, match="SOP split must be one of test, train"):
        load_sop(sop_tree, split="val")


def test_sop_errors_are_located(sop_tree):
    index = sop_tree / "Ebay_test.txt"
    index.write_text("id class super path\n1 1 1 a.JPG\n")
    with pytest.raises(DatasetError, match="^Ebay_test.txt line 1: expected the header"):
        load_sop(sop_tree)

    index.write_text(
        "image_id class_id super_class_id path\n"
        "1 11319 1 bicycle_final/a.JPG\n"
        "2 11319 1\n"
        "3 x 1 bicycle_final/b.JPG\n"
        "4 11320 1 bicycle_final/a.JPG\n"
        "5 11320 1 ../secret.JPG\n"
    )
    with pytest.raises(DatasetError) as caught:
        load_sop(sop_tree)
    message = str(caught.value)
    assert message.splitlines()[0] == "Ebay_test.txt: 4 problems"
    assert "Ebay_test.txt line 3: expected 4 fields, found 3" in message
    assert "Ebay_test.txt line 4: class_id and super_class_id must be integers" in message
    assert "Ebay_test.txt lines 2 and 5: duplicate path 'bicycle_final/a.JPG'" in message
    assert "Ebay_test.txt line 6: location '../secret.JPG' escapes the dataset root" in message


def test_sop_missing_index(tmp_path):
    with pytest.raises(DatasetError, match="Ebay_test.txt: SOP index .* not found"):
        load_sop(tmp_path)


# ---- Products-10K ----------------------------------------------------------------------------


@pytest.fixture()
def p10k_tree(tmp_path) -> Path:
    rows = [
        ("0000001.jpg", 5, "Public"),
        ("0000002.jpg", 5, "Private"),
        ("0000003.jpg", 9, "Public"),
        ("0000004.jpg", 9, "Private"),
        ("0000005.jpg", 12, "Public"),
    ]
    (tmp_path / "test_kaggletest.csv").write_text(
        "Name,Class,Usage\n" + "".join(f"{n},{c},{u}\n" for n, c, u in rows)
    )
    (tmp_path / "train.csv").write_text("name,class,group\n1.jpg,5,0\n")
    for n, (name, *_) in enumerate(rows[:4]):
        jpeg(tmp_path / "test" / name, (0, n * 50, 0))
    return tmp_path


def test_products10k_test_split(p10k_tree):
    dataset = load_products10k(p10k_tree)

    assert (dataset.name, dataset.setup, dataset.gallery_type) == (
        "products10k",
        Setup.INTRA,
        GalleryType.CLOSED,
    )
    assert [(r.image_id, r.location, r.product_id) for r in dataset.records][:2] == [
        ("0000001.jpg", "test/0000001.jpg", "5"),
        ("0000002.jpg", "test/0000002.jpg", "5"),
    ]
    assert dataset.counts()["query_products"] == 3
    assert dataset.read(dataset.records[2]) == (p10k_tree / "test" / "0000003.jpg").read_bytes()
    assert [r.image_id for r in dataset.missing()] == ["0000005.jpg"]
    assert "subset" not in dataset.source


def test_products10k_header_casing_and_headerless_files_are_read_by_position(p10k_tree):
    index = p10k_tree / "test_kaggletest.csv"
    index.write_text("name,class,usage\n0000001.jpg,5,Public\n0000002.jpg,5,Public\n")
    assert len(load_products10k(p10k_tree).records) == 2
    index.write_text("0000001.jpg,5,Public\n0000002.jpg,5,Public\n")
    assert len(load_products10k(p10k_tree).records) == 2


def test_products10k_id_list_selects_a_recorded_subset(p10k_tree, tmp_path):
    id_list = tmp_path / "seed_subset.txt"
    id_list.write_text("name\n# the seed's subset\ntest/0000003.jpg\n0000001.jpg,5\n\n0000004.jpg\n")
    dataset = load_products10k(p10k_tree, ids=id_list)

    assert [r.image_id for r in dataset.records] == ["0000001.jpg", "0000003.jpg", "0000004.jpg"]
    assert dataset.source["subset"] == "seed_subset.txt"
    assert dataset.source["subset_size"] == "3"
    assert dataset.source["subset_sha256"] == hashlib.sha256(id_list.read_bytes()).hexdigest()
    assert "subset seed_subset.txt (3 images)" in dataset.description


def test_products10k_usage_filter(p10k_tree):
    dataset = load_products10k(p10k_tree, usage="private")
    assert [r.image_id for r in dataset.records] == ["0000002.jpg", "0000004.jpg"]
    assert dataset.source["usage"] == "private"
    with pytest.raises(DatasetError, match="usage must be one of public, private"):
        load_products10k(p10k_tree, usage="hidden")


def test_products10k_errors_are_located(p10k_tree, tmp_path):
    id_list = tmp_path / "ids.txt"
    id_list.write_text("0000001.jpg\n0000099.jpg\n")
    with pytest.raises(DatasetError) as caught:
        load_products10k(p10k_tree, ids=id_list)
    assert str(caught.value) == "ids.txt: 1 of 2 ids are not in test_kaggletest.csv (line 2: '0000099.jpg')"

    id_list.write_text("0000001.jpg\n0000003.jpg\ntest/0000001.jpg\n")
    with pytest.raises(DatasetError, match="^ids.txt lines 1 and 3: '0000001.jpg' listed twice$"):
        load_products10k(p10k_tree, ids=id_list)

    id_list.write_text("# nothing\n")
    with pytest.raises(DatasetError, match="ids.txt: the id list is empty"):
        load_products10k(p10k_tree, ids=id_list)

    (p10k_tree / "test_kaggletest.csv").write_text(
        "name,class,usage\na.jpg,1,Public\nb.jpg\na.jpg,2,Public\n"
    )
    with pytest.raises(DatasetError) as caught:
        load_products10k(p10k_tree)
    message = str(caught.value)
    assert "test_kaggletest.csv line 3: expected name,class[,usage], found 1 field" in message
    assert "test_kaggletest.csv lines 2 and 4: duplicate image 'a.jpg'" in message


def test_products10k_missing_index(tmp_path):
    with pytest.raises(DatasetError, match="test_kaggletest.csv: Products-10K test index not found"):
        load_products10k(tmp_path)
