"""The dataset-format registry: one name per loader, clear errors for unknown names and options."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.evaluator.datasets.base import DatasetError, Setup
from services.evaluator.datasets.registry import (
    DATASET_FORMATS,
    DATASET_LOADERS,
    dataset_options,
    load_dataset,
)


def test_formats_listed():
    assert DATASET_FORMATS == ("manifest", "folder", "sop", "products10k", "ilias", "quickstart")
    assert set(DATASET_LOADERS) == set(DATASET_FORMATS)
    assert dataset_options("ilias") == {"distractors": "mini", "max_distractors": None, "name": None}
    assert "ids" in dataset_options("products10k")


def test_load_dataset_dispatches_with_options(tmp_path):
    image = tmp_path / "gallery" / "p1" / "a.jpg"
    image.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    image.write_bytes(buffer.getvalue())

    dataset = load_dataset("folder", tmp_path, name="tiny")
    assert (dataset.name, dataset.setup, len(dataset.records)) == ("tiny", Setup.INTRA, 1)

    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,location,product_id,split\na,gallery/p1/a.jpg,p1,gallery\n")
    assert load_dataset("manifest", manifest, setup="intra").records[0].product_id == "p1"


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset("coco", tmp_path)
    assert (
        str(caught.value)
        == "unknown dataset format 'coco' (known: manifest, folder, sop, products10k, ilias, quickstart)"
    )


def test_unknown_option_lists_the_accepted_ones(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset("sop", tmp_path, spilt="test")
    assert str(caught.value) == "dataset format 'sop' has no option 'spilt' (options: split, name)"
