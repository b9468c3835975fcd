"""ILIAS loader (core images + webdataset distractor shards) and the official HDF5 features."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from services.evaluator.datasets.base import DatasetError, GalleryType, Setup, Split
from services.evaluator.datasets.ilias import (
    find_ilias_feature_files,
    iter_ilias_distractor_features,
    load_ilias,
    load_ilias_features,
)
from services.evaluator.datasets.tar_shards import split_member_name


def jpeg_bytes(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def jpeg(path: Path, color=(1, 2, 3)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(color)
    path.write_bytes(data)
    return data


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


OBJECTS = {
    # object folder: (queries, positives)
    "bold_bimp_000": (["Q000_00.jpg", "Q000_01.jpg"], ["P000_00.jpg", "P000_01.jpg", "P000_02.jpg"]),
    "zippy_zootlenibble_999": (["Q999_00.jpg"], ["P999_00.jpg"]),
}
SHARD = "yfcc100m_000000.tar"
DISTRACTOR_PIXELS = {"1000012": (250, 0, 0), "1000034": (0, 250, 0)}


@pytest.fixture()
def ilias_tree(tmp_path) -> Path:
    top = tmp_path / "ilias"
    core = top / "ilias_core"
    query_ids, positive_ids = [], []
    for number, (obj, (queries, positives)) in enumerate(OBJECTS.items()):
        for q in queries:
            jpeg(core / obj / "query" / q, (number, 10, 10))
            (core / obj / "query" / q.replace(".jpg", "_bbox.txt")).write_text("10 12 40 30\n5 5 8 8\n")
            query_ids.append(f"{obj}/query/{q},https://example.org/{q}")
        (core / obj / "query" / f"T{obj[-3:]}.txt").write_text("a small red thing")
        for p in positives:
            jpeg(core / obj / "pos" / p, (number, 20, 20))
            (core / obj / "pos" / p.replace(".jpg", "_bbox.txt")).write_text("1 2 3 4\n")
            positive_ids.append(f"{obj}/pos/{p},0.12,17")
    ids = top / "image_ids"
    ids.mkdir(parents=True)
    # Written in reverse: the loader sorts ids as the official tools do.
    (ids / "image_query_ids.txt").write_text("\n".join(reversed(query_ids)) + "\n")
    (ids / "positive_ids.txt").write_text("\n".join(reversed(positive_ids)) + "\n")
    (ids / "text_query_ids.txt").write_text("bold_bimp_000/query/T000.txt\n")
    with gzip.open(ids / "distractor_ids.txt.gz", "wt") as handle:
        handle.write(f"{SHARD}/1000012\n{SHARD}/1000034\n{SHARD}/1000056\nyfcc100m_000001.tar/2000001\n")
    (ids / "mini_ilias_yfcc100m_ids.txt").write_text("1000012\n2000001\n")

    (top / "yfcc100m").mkdir()
    with tarfile.open(top / "yfcc100m" / SHARD, "w") as archive:
        for key, color in DISTRACTOR_PIXELS.items():
            add_member(archive, f"{key}.json", json.dumps({"key": key}).encode())
            add_member(archive, f"{key}.jpg", jpeg_bytes(color))
        add_member(archive, "1000078.json", b"{}")  # a sample without an image is no distractor
    return top


def test_mini_ilias_images_and_distractors_from_shards(ilias_tree):
    dataset = load_ilias(ilias_tree)

    assert (dataset.name, dataset.setup, dataset.gallery_type) == ("ilias", Setup.INTER, GalleryType.OPEN)
    assert [r.image_id for r in dataset.queries()] == [
        "bold_bimp_000/query/Q000_00.jpg",
        "bold_bimp_000/query/Q000_01.jpg",
        "zippy_zootlenibble_999/query/Q999_00.jpg",
    ]
    assert [r.image_id for r in dataset.gallery()] == [
        "bold_bimp_000/pos/P000_00.jpg",
        "bold_bimp_000/pos/P000_01.jpg",
        "bold_bimp_000/pos/P000_02.jpg",
        "zippy_zootlenibble_999/pos/P999_00.jpg",
        f"{SHARD}/1000012",
        "yfcc100m_000001.tar/2000001",
    ]
    query = dataset.queries()[0]
    assert (query.location, query.product_id, query.split) == (
        "ilias_core/bold_bimp_000/query/Q000_00.jpg",
        "bold_bimp_000",
        Split.QUERY,
    )
    assert dataset.counts() == {
        "query_images": 3,
        "gallery_images": 6,
        "query_products": 2,
        "gallery_products": 2,
        "distractors": 2,
    }
    assert dataset.source["distractors"] == "mini"
    assert dataset.source["distractor_count"] == "2"

    by_id = {r.image_id: r for r in dataset.records}
    assert dataset.read(by_id[query.image_id]) == (ilias_tree / query.location).read_bytes()
    pixels = Image.open(io.BytesIO(dataset.read(by_id[f"{SHARD}/1000012"]))).convert("RGB").getpixel((4, 4))
    assert pixels[0] > 200 and pixels[1] < 50  # the red sample, decoded from inside the tar

    # The second shard was never downloaded: listed as missing, the load itself succeeds.
    missing = dataset.missing()
    assert [r.image_id for r in missing] == ["yfcc100m_000001.tar/2000001"]
    with pytest.raises(FileNotFoundError):
        dataset.read(missing[0])

    present = dataset.without({r.image_id for r in missing})
    assert type(present) is type(dataset) and present.missing() == []
    assert present.read(present.records[-1]) == dataset.read(by_id[f"{SHARD}/1000012"])

    # Readers run on worker threads: concurrent reads from one shard give the same bytes.
    with ThreadPoolExecutor(max_workers=4) as pool:
        blobs = list(pool.map(present.read, present.records * 3))
    assert blobs == [present.read(r) for r in present.records * 3]

    (ilias_tree / "ilias_core" / "zippy_zootlenibble_999" / "pos" / "P999_00.jpg").unlink()
    assert [r.image_id for r in present.missing()] == ["zippy_zootlenibble_999/pos/P999_00.jpg"]


def test_all_distractors_with_a_cap_and_none(ilias_tree):
    capped = load_ilias(ilias_tree, distractors="all", max_distractors=3)
    assert [r.image_id for r in capped.records if r.is_distractor] == [
        f"{SHARD}/1000012",
        f"{SHARD}/1000034",
        f"{SHARD}/1000056",
    ]
    assert [r.image_id for r in capped.missing()] == [f"{SHARD}/1000056"]  # listed, not in the shard
    assert capped.source["max_distractors"] == "3"

    closed = load_ilias(ilias_tree, distractors="none")
    assert closed.gallery_type is GalleryType.CLOSED
    assert closed.counts()["distractors"] == 0


def test_distractors_from_the_shards_present(ilias_tree):
    dataset = load_ilias(ilias_tree, distractors="shards")
    assert [r.image_id for r in dataset.records if r.is_distractor] == [
        f"{SHARD}/1000012",
        f"{SHARD}/1000034",
    ]
    assert dataset.missing() == []
    assert load_ilias(ilias_tree, distractors="shards", max_distractors=1).counts()["distractors"] == 1


def test_webdataset_key_convention():
    assert split_member_name("1000012.jpg") == ("1000012", "jpg")
    assert split_member_name("part/1000012.seg.JPG") == ("part/1000012", "seg.jpg")
    assert split_member_name("README") == ("README", "")


def test_ilias_errors(ilias_tree):
    with pytest.raises(DatasetError, match="distractors must be one of none, mini, all, shards"):
        load_ilias(ilias_tree, distractors="most")

    listed = ilias_tree / "image_ids" / "distractor_ids.txt.gz"
    original = listed.read_bytes()
    for bad, message in [
        (
            f"{SHARD}/1\nno-key-here\n",
            "distractor_ids.txt.gz line 2: distractor id 'no-key-here' is not <shard>/<key>",
        ),
        ("..\\etc.tar/1\n", "distractor_ids.txt.gz line 1: location 'yfcc100m/..\\\\etc.tar' escapes"),
    ]:
        listed.write_bytes(gzip.compress(bad.encode()))
        with pytest.raises(DatasetError) as caught:
            load_ilias(ilias_tree, distractors="all")
        assert str(caught.value).startswith(message)
    listed.write_bytes(original)

    (ilias_tree / "image_ids" / "mini_ilias_yfcc100m_ids.txt").unlink()
    with pytest.raises(DatasetError, match="mini_ilias_yfcc100m_ids.txt: mini-ILIAS id list"):
        load_ilias(ilias_tree)

    (ilias_tree / "image_ids" / "distractor_ids.txt.gz").unlink()
    with pytest.raises(DatasetError, match="distractor id list not found"):
        load_ilias(ilias_tree, distractors="all")

    positives = ilias_tree / "image_ids" / "positive_ids.txt"
    positives.write_text(
        "bold_bimp_000/pos/P000_00.jpg,0.1,3\nP000_01.jpg,0.2,4\nbold_bimp_000/pos/P000_00.jpg,0.1,3\n"
    )
    with pytest.raises(DatasetError) as caught:
        load_ilias(ilias_tree, distractors="none")
    message = str(caught.value)
    assert "positive_ids.txt line 2: id 'P000_01.jpg' does not start with its object folder" in message
    assert "positive_ids.txt lines 1 and 3: duplicate id 'bold_bimp_000/pos/P000_00.jpg'" in message

    (ilias_tree / "image_ids" / "image_query_ids.txt").unlink()
    with pytest.raises(DatasetError, match="image_query_ids.txt: ILIAS id list .* not found"):
        load_ilias(ilias_tree, distractors="none")


# ---- official HDF5 features ----------------------------------------------------------------


def write_features(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    # As feature_extraction/extract.py stores them: ascii string index, fp16 features.
    with h5py.File(path, "w") as handle:
        handle.create_dataset("index", data=ids, dtype=h5py.string_dtype(encoding="ascii"))
        handle.create_dataset("features", data=vectors.astype(np.float16))


@pytest.fixture()
def feature_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    write_features(
        tmp_path / "features_image_queries.hdf5",
        ["bold_bimp_000/query/Q000_00.jpg", "zippy_zootlenibble_999/query/Q999_00.jpg"],
        rng.normal(size=(2, 4)),
    )
    write_features(
        tmp_path / "features_positives.hdf5",
        [
            "bold_bimp_000/pos/P000_00.jpg",
            "bold_bimp_000/pos/P000_01.jpg",
            "zippy_zootlenibble_999/pos/P999_00.jpg",
        ],
        rng.normal(size=(3, 4)),
    )
    write_features(
        tmp_path / "features_distractors_00000.hdf5",
        [f"{SHARD}/10{i}" for i in range(3)],
        rng.normal(size=(3, 4)),
    )
    write_features(
        tmp_path / "features_distractors_00001.hdf5",
        ["yfcc100m_000010.tar/20", "yfcc100m_000010.tar/21"],
        rng.normal(size=(2, 4)),
    )
    return tmp_path


def test_load_official_features(feature_dir):
    features = load_ilias_features(feature_dir)

    assert features.query_ids.tolist() == [
        "bold_bimp_000/query/Q000_00.jpg",
        "zippy_zootlenibble_999/query/Q999_00.jpg",
    ]
    assert features.query_labels.tolist() == ["bold_bimp_000", "zippy_zootlenibble_999"]
    assert features.query_vectors.shape == (2, 4) and features.query_vectors.dtype == np.float16
    assert features.gallery_ids.tolist() == [
        "bold_bimp_000/pos/P000_00.jpg",
        "bold_bimp_000/pos/P000_01.jpg",
        "zippy_zootlenibble_999/pos/P999_00.jpg",
        f"{SHARD}/100",
        f"{SHARD}/101",
        f"{SHARD}/102",
        "yfcc100m_000010.tar/20",
        "yfcc100m_000010.tar/21",
    ]
    assert (
        features.gallery_labels.tolist()
        == ["bold_bimp_000", "bold_bimp_000", "zippy_zootlenibble_999"] + [""] * 5
    )
    assert features.gallery_vectors.shape == (8, 4)
    with h5py.File(feature_dir / "features_distractors_00001.hdf5") as handle:
        np.testing.assert_array_equal(features.gallery_vectors[6:], handle["features"][:])
    assert features.source["distractor_files"] == "2"
    assert features.source["distractor_count"] == "5"


def test_feature_subsets_and_dtype(feature_dir, tmp_path):
    mini = tmp_path / "mini.txt"
    mini.write_text("101\nyfcc100m_000010.tar/21\n")
    subset = load_ilias_features(feature_dir, selected_ids=mini, dtype=np.float32)
    assert subset.gallery_ids.tolist()[3:] == [f"{SHARD}/101", "yfcc100m_000010.tar/21"]
    assert subset.gallery_vectors.dtype == np.float32 and subset.query_vectors.dtype == np.float32
    assert subset.source["selected_ids"] == "mini.txt"

    assert len(load_ilias_features(feature_dir, max_distractors=4).gallery_ids) == 3 + 4
    assert len(load_ilias_features(feature_dir, distractor_files=1).gallery_ids) == 3 + 3
    no_distractors = load_ilias_features(feature_dir, include_distractors=False)
    assert no_distractors.gallery_labels.tolist() == [
        "bold_bimp_000",
        "bold_bimp_000",
        "zippy_zootlenibble_999",
    ]


def test_distractor_features_stream_in_bounded_blocks(feature_dir):
    blocks = list(iter_ilias_distractor_features(feature_dir, block_rows=2))
    assert [len(b.ids) for b in blocks] == [2, 1, 2]
    assert all(b.vectors.shape == (len(b.ids), 4) and set(b.labels.tolist()) == {""} for b in blocks)
    capped = list(iter_ilias_distractor_features(feature_dir, block_rows=2, max_distractors=3))
    assert [b.ids.tolist() for b in capped] == [[f"{SHARD}/100", f"{SHARD}/101"], [f"{SHARD}/102"]]


def test_feature_file_errors(feature_dir):
    (feature_dir / "features_distractors_00001.hdf5").rename(feature_dir / "features_distractors_00002.hdf5")
    with pytest.raises(DatasetError, match="features_distractors_00001.hdf5 is missing"):
        find_ilias_feature_files(feature_dir)
    (feature_dir / "features_distractors_00002.hdf5").unlink()

    write_features(feature_dir / "features_distractors_00001.hdf5", [f"{SHARD}/9"], np.zeros((1, 8)))
    with pytest.raises(
        DatasetError, match="features_distractors_00001.hdf5: vectors have 8 dimensions, queries 4"
    ):
        load_ilias_features(feature_dir)

    with h5py.File(feature_dir / "features_distractors_00001.hdf5", "w") as handle:
        handle.create_dataset("index", data=["a/b", "a/c"], dtype=h5py.string_dtype(encoding="ascii"))
        handle.create_dataset("features", data=np.zeros((3, 4), dtype=np.float16))
    with pytest.raises(DatasetError, match="'index' has 2 ids but 'features' 3 rows"):
        load_ilias_features(feature_dir)

    with h5py.File(feature_dir / "features_positives.hdf5", "w") as handle:
        handle.create_dataset("features", data=np.zeros((1, 4), dtype=np.float16))
    with pytest.raises(DatasetError, match="features_positives.hdf5: no 'index' dataset"):
        load_ilias_features(feature_dir)

    write_features(feature_dir / "features_positives.hdf5", ["P000_00.jpg"], np.zeros((1, 4)))
    with pytest.raises(DatasetError, match="features_positives.hdf5 row 1: id 'P000_00.jpg' does not start"):
        load_ilias_features(feature_dir)

    (feature_dir / "features_image_queries.hdf5").unlink()
    with pytest.raises(DatasetError, match="image query feature file not found"):
        load_ilias_features(feature_dir)
