"""Compression rows: float32 truncation rows equal a re-scoring of truncated vectors written here
independently; quantizers and rescoring on hand-computed cases; Qdrant's quantization measured in
the real engine."""

import numpy as np
import pytest

from services.evaluator import metrics as m
from services.evaluator.analytics import compression
from services.evaluator.record import CompressionRow

RK, MK = (1, 5), (10,)


def _data(seed=0, dim=96, n_products=15):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_products, dim))
    labels = np.repeat(np.arange(n_products), 2)
    gallery = centers[labels] + 1.2 * rng.standard_normal((len(labels), dim))
    gallery = np.r_[gallery, rng.standard_normal((40, dim))]
    codes = np.r_[labels, -np.ones(40, np.int64)]
    qlab = rng.integers(0, n_products, 30)
    queries = centers[qlab] + 1.2 * rng.standard_normal((30, dim))
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(queries), unit(gallery), qlab, codes


def _independent_metrics(q, g, qc, gc):
    """Score, rank (score desc, position asc) and average, written out without the search module."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    s = s.astype(np.float32)  # the same float32 scores the search compares
    out = {}
    rel_rows, n_rel = [], []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-float(s[i, j]), j))[:10]
        rel_rows.append([gc[j] == qc[i] for j in order])
        n_rel.append(int((gc == qc[i]).sum()))
    rel = np.array(rel_rows)
    for k in RK:
        out[f"recall@{k}"] = round(100 * float(rel[:, :k].any(axis=1).mean()), 4)
    out["map@10"] = round(100 * float(np.mean(m.average_precision_at_k(rel, np.array(n_rel), 10))), 4)
    return out


def test_truncation_rows_equal_rescoring_truncated_vectors():
    q, g, qc, gc = _data()
    rows = compression.compression_sweep(q, g, qc, gc, recall_k=RK, map_k=MK, quantizations=(), engine="numpy")
    assert [r["dims"] for r in rows] == [32, 64, 96]
    for row in rows:
        CompressionRow.model_validate(row)
        d = row["dims"]
        qt = q[:, :d] / np.linalg.norm(q[:, :d], axis=1, keepdims=True)
        gt = g[:, :d] / np.linalg.norm(g[:, :d], axis=1, keepdims=True)
        expected = _independent_metrics(qt.astype(np.float32), gt.astype(np.float32), qc, gc)
        for name, value in expected.items():
            assert row["metrics"][name] == pytest.approx(value, abs=1e-3), (d, name)
        assert row["bytes_per_vector"] == 4 * d and row["quantization"] == "float32" and not row["rescore"]


def test_quantizers_hand_computed():
    g = np.array([[0.0, -1.0], [1.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    offset, step = compression.int8_calibration(g)
    assert offset.tolist() == [0.0, -1.0] and step.tolist() == pytest.approx([1 / 255, 2 / 255])
    back = compression.int8_roundtrip(g, offset, step)
    assert np.abs(back - g).max() <= step.max() / 2 + 1e-7
    assert compression.binary_codes(np.array([[0.2, -0.1, 0.0]])).tolist() == [[1, -1, 1]]
    assert compression.truncation_dims(768) == [32, 64, 128, 256, 512, 768]
    assert compression.truncation_dims(32) == [32]
    assert [compression.bytes_per_vector(64, x) for x in ("float32", "float16", "int8", "binary")] == [256, 128, 64, 8]


def test_rescore_reorders_candidates_by_full_precision():
    from services.evaluator.search import TopK

    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[0.6, 0.8], [0.8, 0.6], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    coarse = TopK(np.array([[0, 1, 3, -1]]), np.array([[1, 1, 1, -np.inf]], dtype=np.float32))
    out = compression.rescore(coarse, queries, gallery, 3)
    assert out.indices.tolist() == [[1, 0, 3]]  # 0.8, 0.6, 0.0; item 2 was not a candidate
    assert out.scores[0].tolist() == pytest.approx([0.8, 0.6, 0.0])


def test_quantized_rows_and_rescore_recovers_accuracy():
    q, g, qc, gc = _data(1, dim=64)
    rows = compression.compression_sweep(q, g, qc, gc, recall_k=RK, map_k=MK, dims=[64], engine="numpy")
    by = {(r["quantization"], r["rescore"]): r for r in rows}
    full = by[("float32", False)]["metrics"]
    # the gallery (70) is below the rescore depth: rescoring re-ranks everything, exactly float32
    for quantization in ("float16", "int8", "binary"):
        assert by[(quantization, True)]["metrics"] == full
    assert by[("binary", False)]["bytes_per_vector"] == 8
    # float16 alone changes scores by < 1e-3: same ranking on this data
    assert by[("float16", False)]["metrics"]["recall@1"] == pytest.approx(full["recall@1"], abs=5)


def test_qdrant_quantization_rows_are_measured_in_the_engine():
    pytest.importorskip("qdrant_edge")
    from services.evaluator.analytics import qdrant_quantized

    q, g, qc, gc = _data(2, dim=64)
    rows = qdrant_quantized.qdrant_rows(q, g, qc, gc, recall_k=RK, map_k=MK)
    for row in rows:
        CompressionRow.model_validate(row)
    by = {(r["quantization"], r["rescore"]): r for r in rows}
    assert set(by) == {(n, r) for n in ("qdrant-scalar", "qdrant-binary", "qdrant-product") for r in (False, True)}
    full = compression.compression_sweep(q, g, qc, gc, recall_k=RK, map_k=MK, dims=[64], quantizations=(),
                                         engine="numpy")[0]["metrics"]
    # rescoring the top 100 of a 70-image gallery re-ranks all of it with the original vectors
    for name in ("qdrant-scalar", "qdrant-binary", "qdrant-product"):
        assert by[(name, True)]["metrics"] == pytest.approx(full, abs=1e-3)
    # binary codes without rescoring are not the float32 ranking (the engine really used the codes)
    assert by[("qdrant-binary", False)]["metrics"] != full
    assert by[("qdrant-binary", False)]["bytes_per_vector"] == 8 and by[("qdrant-product", False)]["bytes_per_vector"] == 16
