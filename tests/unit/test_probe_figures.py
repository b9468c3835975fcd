"""The probe's pure figures against hand-computed cases, and its file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.types import ImageItem
from services.evaluator.probe import (
    SCHEMA_FILE,
    SCHEMA_ID,
    ProbeError,
    max_abs_diff,
    min_row_cosine,
    norm_stats,
    probe_path,
    read_probe,
    repeat_to,
    schema_text,
)


def test_norm_stats_hand_computed():
    stats = norm_stats(np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], dtype=np.float32))
    assert (stats.min, stats.mean, stats.max) == (1.0, pytest.approx(16 / 3), 10.0)


def test_max_abs_diff_hand_computed_and_shape_checked():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[1.0, 2.5], [2.75, 4.0]], dtype=np.float32)
    assert max_abs_diff(a, b) == 0.5
    assert max_abs_diff(a, a) == 0.0
    with pytest.raises(ProbeError, match="shapes"):
        max_abs_diff(a, b[:1])


def test_min_row_cosine_hand_computed():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    # rows: cos 1, cos 45 degrees = 1/sqrt(2), cos 1
    assert min_row_cosine(a, b) == pytest.approx(1 / np.sqrt(2))
    assert min_row_cosine(a, -a) == pytest.approx(-1.0)
    # a zero vector matches only a zero vector
    assert min_row_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0
    assert min_row_cosine(np.zeros((1, 2)), np.ones((1, 2))) == 0.0


def test_repeat_to_cycles_with_unique_ids():
    items = [ImageItem("a", b"1"), ImageItem("b", b"2")]
    out = repeat_to(items, 5)
    assert [i.id for i in out] == ["a", "b", "a#1", "b#1", "a#2"]
    assert [i.data for i in out] == [b"1", b"2", b"1", b"2", b"1"]
    with pytest.raises(ProbeError, match="no images"):
        repeat_to([], 3)


def test_probe_path_is_dataset_free_and_file_safe(tmp_path):
    assert probe_path(tmp_path, "timm/resnet 18") == tmp_path / "probes" / "timm_resnet_18.json"


def test_read_probe_refuses_other_schemas(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": "vsbench.run-record/v2"}))
    with pytest.raises(ProbeError, match=f"expected '{SCHEMA_ID}'"):
        read_probe(path)
    path.write_text("{not json")
    with pytest.raises(ProbeError, match="not a readable probe file"):
        read_probe(path)


def test_committed_json_schema_matches_the_model():
    assert SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "run `python -m services.evaluator.probe` to rewrite docs/schema/probe.schema.json"
    )
