"""The analyses as users get them: `vsbench score --open-set --scaling --compression` on generated
open-set data, the record checked against independent computations, then `vsbench table --view`."""

import json
import subprocess
import sys

import numpy as np
import pytest

from services.evaluator.analytics import open_set
from services.evaluator.record import RunRecord


def vsbench(*args):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True)


def save(path, vectors, ids, labels):
    np.savez(path, embeddings=np.asarray(vectors, dtype=np.float32), ids=np.array(ids), labels=np.array(labels))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analytics")
    rng = np.random.default_rng(7)
    dim, n_products = 48, 25
    centers = rng.standard_normal((n_products + 8, dim))
    g_labels = [f"p{i}" for i in range(n_products) for _ in range(2)]
    g_vectors = np.r_[centers[[int(l[1:]) for l in g_labels]] + 0.8 * rng.standard_normal((len(g_labels), dim)),
                      rng.standard_normal((120, dim))]
    g_labels += [""] * 120
    g_ids = [f"g{i}" for i in range(len(g_labels))]
    # 60 in-catalog queries and 20 out-of-catalog ones (products p25.. are not in the gallery)
    q_products = list(rng.integers(0, n_products, 60)) + list(rng.integers(n_products, n_products + 8, 20))
    q_vectors = centers[q_products] + 0.8 * rng.standard_normal((80, dim))
    q_labels = [f"p{p}" for p in q_products]
    save(tmp / "g.npz", g_vectors, g_ids, g_labels)
    save(tmp / "q.npz", q_vectors, [f"q{i}" for i in range(80)], q_labels)
    closed = [i for i, l in enumerate(g_labels) if l]
    save(tmp / "closed.npz", g_vectors[closed], [g_ids[i] for i in closed], [g_labels[i] for i in closed])
    done = vsbench("score", "--gallery", str(tmp / "g.npz"), "--queries", str(tmp / "q.npz"), "--map-k", "10",
                   "--engine", "numpy", "--scaling", "--compression", "--out", str(tmp / "runs" / "full.json"))
    assert done.returncode == 0, done.stderr
    done = vsbench("score", "--gallery", str(tmp / "closed.npz"), "--queries", str(tmp / "q.npz"), "--map-k", "10",
                   "--engine", "numpy", "--no-open-set", "--out", str(tmp / "closed.json"))
    assert done.returncode == 0, done.stderr
    return tmp


def test_record_holds_the_analyses_and_validates(scored):
    record = json.loads((scored / "runs" / "full.json").read_text())
    RunRecord.model_validate(record)
    assert set(record["analyses"]) >= {"open_set", "scaling", "compression"}
    closed = json.loads((scored / "closed.json").read_text())
    assert closed.get("analyses") is None  # --no-open-set and nothing else asked


def test_open_set_equals_an_independent_computation(scored):
    record = json.loads((scored / "runs" / "full.json").read_text())
    rows = [json.loads(line) for line in (scored / "runs" / "full.queries.jsonl").read_text().splitlines()[1:]]
    top1 = np.array([r["top_scores"][0] for r in rows])
    in_catalog = np.array([r["answerable"] for r in rows])
    correct = np.array([r["first_relevant_rank"] == 1 for r in rows])
    assert in_catalog.sum() == 60 and (~in_catalog).sum() == 20
    pairs = [(a, b) for a in top1[in_catalog] for b in top1[~in_catalog]]
    auroc = 100 * np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    got = record["analyses"]["open_set"]
    assert got["auroc"] == pytest.approx(auroc, abs=1e-3)
    for far in (0.01, 0.05, 0.1):
        best = max(
            (correct & in_catalog & (top1 > t)).sum() / 60
            for t in [-np.inf, *top1] if ((~in_catalog) & (top1 > t)).sum() / 20 <= far
        )
        assert got["dir_at_far"][open_set.far_key(far)] == pytest.approx(100 * best, abs=1e-3)


def test_scaling_end_points_equal_closed_and_full_scores(scored):
    record = json.loads((scored / "runs" / "full.json").read_text())
    closed = json.loads((scored / "closed.json").read_text())
    points = record["analyses"]["scaling"]["points"]
    assert points[0]["distractors"] == 0 and points[0]["metrics"] == closed["metrics"]
    assert points[-1]["distractors"] == 120 and points[-1]["metrics"] == record["metrics"]
    assert record["analyses"]["scaling"]["fit"]["extrapolation"]["distractors"] == 1200


def test_compression_full_float32_row_equals_the_run(scored):
    record = json.loads((scored / "runs" / "full.json").read_text())
    rows = record["analyses"]["compression"]["rows"]
    full = next(r for r in rows if r["quantization"] == "float32" and r["dims"] == 48)
    assert full["metrics"] == record["metrics"]
    assert {r["quantization"] for r in rows} >= {"float32", "float16", "int8", "binary", "qdrant-binary"}


@pytest.mark.parametrize("view,expect", [
    ("open-set", "DIR@FAR=1%"), ("scaling", "distractors"), ("compression", "bytes/vector"), ("pareto", "Pareto-optimal"),
])
def test_table_views(scored, view, expect):
    done = vsbench("table", str(scored / "runs"), "--view", view)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout and "| g | g |" in done.stdout
    csv_out = vsbench("table", str(scored / "runs"), "--view", view, "--format", "csv")
    assert csv_out.returncode == 0 and csv_out.stdout.startswith("dataset,model,")


def test_table_view_errors_are_one_line(scored):
    done = vsbench("table", str(scored / "runs"), "--view", "nonsense")
    assert done.returncode == 2 and done.stderr.startswith("error: --view takes")
    done = vsbench("table", str(scored / "runs"), "--view", "scaling", "--format", "latex")
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_asked_but_inapplicable_analyses_say_why(tmp_path):
    rng = np.random.default_rng(3)
    vectors = np.repeat(rng.standard_normal((10, 16)), 2, axis=0) + 0.1 * rng.standard_normal((20, 16))
    save(tmp_path / "g.npz", vectors, [f"i{i}" for i in range(20)], [f"p{i // 2}" for i in range(20)])
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--open-set", "--scaling",
                   "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    analyses = json.loads((tmp_path / "r.json").read_text())["analyses"]
    assert analyses["open_set"] is None and analyses["scaling"] is None
    assert analyses["skipped"] == {
        "open_set": "no out-of-catalog query (every query's product is in the gallery)",
        "scaling": "the gallery holds no distractors (a closed gallery)",
    }
