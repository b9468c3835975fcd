"""`python -m services.embedder` as a user runs it: fingerprints over a real gRPC Info, models
defined by --kind/--options or with --options overrides, and one-line errors for what the user can
fix (exit 1) while anything else keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.common import wire
from services.common.proto.vsbench.v1 import embedding_pb2 as pb
from services.common.types import ImageItem
from services.embedder.backends.registry import build_backend, load_backend
from tests.integration.test_embedder_server import REPO, EmbedderProcess, photo

TINY_DEFINITION_PREPROCESSING = {"crop_size": 16, "resize": "squash", "mean": [0.5] * 3, "std": [0.5] * 3}


def tiny_onnx(path: Path) -> None:
    """(N, 3, 16, 16) -> Conv(3->6, 4x4 stride 4) -> GlobalAveragePool -> Flatten -> (N, 6)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(3).normal(size=(6, 3, 4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["pixels", "w"], ["conv"], strides=[4, 4]),
            helper.make_node("GlobalAveragePool", ["conv"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["features"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run_embedder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.embedder", "--port", "0", "--no-warmup", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def info_of(process: EmbedderProcess):
    return wire.info_from_pb(process.stub.Info(pb.InfoRequest(), timeout=10))


# --- fingerprints over the wire ------------------------------------------------------------------


def test_fingerprint_arrives_over_grpc_info_and_follows_options():
    four_bins = EmbedderProcess("--model", "histogram", "--options", '{"bins": 4}')
    try:
        info = info_of(four_bins)
        response = four_bins.stub.Embed(wire.request_to_pb([ImageItem("p", photo(1))]), timeout=30)
        vector = wire.response_from_pb(response)[0].vector
    finally:
        assert four_bins.stop() == 0
    assert info.name == "histogram" and info.dim == 64 and vector.shape == (64,)
    assert info.fingerprint == load_backend("histogram", bins=4).info().fingerprint
    assert info.fingerprint != load_backend("histogram").info().fingerprint
    assert info.fingerprint.startswith("sha256:") and len(info.fingerprint) == len("sha256:") + 64


def test_lite0_and_lite2_servers_answer_different_fingerprints():
    fingerprints = {}
    for model in ("efficientnet-lite0", "efficientnet-lite2"):
        process = EmbedderProcess("--model", model, "--no-warmup", "--threads", "1")
        try:
            info = info_of(process)
        finally:
            assert process.stop() == 0
        assert info.dim == 1280
        fingerprints[model] = info.fingerprint
    assert fingerprints["efficientnet-lite0"] != fingerprints["efficientnet-lite2"]
    assert fingerprints["efficientnet-lite0"] == load_backend("efficientnet-lite0").info().fingerprint


def test_a_model_defined_by_kind_and_options_is_served(tmp_path):
    tiny_onnx(tmp_path / "tiny.onnx")
    options = {"weights": str(tmp_path / "tiny.onnx"), "preprocessing": TINY_DEFINITION_PREPROCESSING}
    process = EmbedderProcess("--kind", "onnx", "--model", "tiny-conv", "--options", json.dumps(options))
    try:
        info = info_of(process)
        items = [ImageItem(str(i), photo(10 + i, (64, 48))) for i in range(3)]
        results = wire.response_from_pb(process.stub.Embed(wire.request_to_pb(items), timeout=30))
    finally:
        assert process.stop() == 0
    local = build_backend("onnx", options, name="tiny-conv")
    assert (info.name, info.dim, info.backend) == ("tiny-conv", 6, "onnxruntime")
    assert info.fingerprint == local.info().fingerprint
    assert [r.id for r in results] == ["0", "1", "2"] and all(
        r.ok and r.vector.shape == (6,) for r in results
    )


# --- one line for the user's mistakes, a traceback for bugs -----------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "READY" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_model_is_one_line():
    assert_one_line_error(
        run_embedder("--model", "nope"), "cannot load model", "unknown model 'nope'", "histogram"
    )


def test_misspelt_option_is_one_line_listing_the_valid_options():
    assert_one_line_error(
        run_embedder("--model", "efficientnet-lite0", "--options", '{"cpu_micro_batchh": 2}'),
        "unknown option 'cpu_micro_batchh'",
        "Valid options for kind 'efficientnet-lite': "
        "cpu_micro_batch, fuse_batchnorm, preprocessing, variant, weights",
    )


def test_bad_definitions_are_one_line(tmp_path):
    assert_one_line_error(run_embedder("--kind", "tensorflow"), "unknown backend kind 'tensorflow'", "onnx")
    assert_one_line_error(
        run_embedder("--kind", "onnx", "--options", json.dumps({"weights": str(tmp_path / "none.onnx")})),
        "option 'preprocessing' is required",
    )
    assert_one_line_error(
        run_embedder(
            "--kind",
            "onnx",
            "--options",
            json.dumps({"weights": str(tmp_path / "none.onnx"), "preprocessing": {"crop_size": 8}}),
        ),
        "weights file not found",
    )


def test_options_must_be_a_json_object():
    proc = run_embedder("--model", "histogram", "--options", "[4]")
    assert proc.returncode == 2 and "--options: must be a JSON object" in proc.stderr


def test_other_errors_keep_their_traceback(monkeypatch):
    from services.embedder import __main__ as embedder_main

    def broken(settings):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(embedder_main, "build_embedder", broken)
    with pytest.raises(KeyError, match="a bug"):
        embedder_main.main(["--model", "histogram", "--port", "0"])
