"""`vsbench score-ilias`, run as users run it: the official protocol by default, vsbench's on request."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.unit.test_ilias_official import generated_ilias, reference_evaluation


def vsbench(*args):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True)


def test_score_ilias_defaults_to_the_official_protocol(tmp_path):
    features = tmp_path / "ilias"
    features.mkdir()
    listed = generated_ilias(features, np.float16, seed=2)
    out = tmp_path / "r.json"
    done = vsbench("score-ilias", str(features), "--k", "1", "--map-k", "5", "--text-queries",
                   "--total-distractors", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["protocol"]["mode"] == "ilias"
    reference = reference_evaluation(features, listed, "features_image_queries.hdf5", 1, (5,), 5)
    assert result["metrics"]["map@5"] == pytest.approx(reference[5]["map"], abs=1e-6)
    assert set(result["text_queries"]["metrics"]) == {"recall@1", "map@5"}
    assert set(result["breakdowns"]) == {"image", "text"}
    assert result["gallery"]["distractors"] == 10
    # The official breakdowns are printed, and every query (image and text) has a per-query line.
    assert "image queries map@5 oracle" in done.stderr and "clutter: 0-18" in done.stderr
    assert "text queries: recall@1" in done.stderr
    lines = (tmp_path / "r.queries.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 10 + 5

    assert result["schema"] == "vsbench.run-record/v2" and result["model"]["dim"] > 0

    again = tmp_path / "r-vsbench.json"
    done = vsbench("score-ilias", str(features), "--protocol", "vsbench", "--map-k", "5", "--out", str(again))
    assert done.returncode == 0, done.stderr
    assert json.loads(again.read_text())["protocol"]["mode"] == "vsbench"


def test_score_ilias_refuses_unknown_protocol_and_mixed_options(tmp_path):
    generated_ilias(tmp_path, np.float32, seed=1)
    out = tmp_path / "r.json"
    done = vsbench("score-ilias", str(tmp_path), "--protocol", "faiss", "--out", str(out))
    assert done.returncode == 2 and "--protocol takes ilias or vsbench" in done.stderr
    done = vsbench("score-ilias", str(tmp_path), "--protocol", "vsbench", "--text-queries", "--out", str(out))
    assert done.returncode == 2 and "need --protocol ilias" in done.stderr
    (tmp_path / "image_ids" / "positive_ids.txt").unlink()
    done = vsbench("score-ilias", str(tmp_path), "--out", str(out))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "positive_ids.txt" in done.stderr
    assert not out.exists()
