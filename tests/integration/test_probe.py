"""`vsbench probe` against real gRPC servers on loopback: clean ones (histogram, efficientnet-lite0)
probe clean; a server that adds noise and one whose vectors depend on the rest of the batch are
caught, each by its own figure, and the command exits 1 for them. No timing thresholds."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from services.common.grpc_server import BackgroundServer
from services.common.types import Embedding
from services.embedder.backends.registry import load_backend
from services.embedder.batching import BatchingEmbedder, embed_sync
from services.evaluator.cli import app
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.probe import SCHEMA_FILE, SCHEMA_ID, ProbeResult, load_images, read_probe, run_probe

FAST = {"throughput_batches": (1, 4), "throughput_images": 4}


class DefectiveModel:
    """A real model (decode + preprocess + forward of a registry backend) served through the
    common servicer, with one defect applied to the vectors of each request."""

    def __init__(self, backend, defect) -> None:
        self._backend = backend
        self._defect = defect
        self.requests = 0

    def info(self):
        return replace(self._backend.info(), max_batch=256)

    async def embed(self, items):
        results = await asyncio.to_thread(embed_sync, self._backend, items)
        self.requests += 1
        vectors = self._defect(np.stack([r.vector for r in results]), self.requests)
        return [Embedding(r.id, vector=v.astype(np.float32)) for r, v in zip(results, vectors)]


def add_noise(vectors: np.ndarray, request: int) -> np.ndarray:
    """Gaussian noise of 5% of the typical element size, fresh for every request."""
    scale = 0.05 * np.linalg.norm(vectors, axis=1, keepdims=True) / np.sqrt(vectors.shape[1])
    return vectors + np.random.default_rng(request).normal(size=vectors.shape) * scale


def centre_on_batch(vectors: np.ndarray, request: int) -> np.ndarray:
    """Half the batch mean subtracted from each vector: what a BatchNorm left in train mode does."""
    return vectors - 0.5 * vectors.mean(axis=0, keepdims=True)


@pytest.fixture(scope="module")
def histogram():
    backend = load_backend("histogram")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def photos():
    return load_images(None, limit=12)


def probe_server(model, photos) -> ProbeResult:
    items, source = photos
    with BackgroundServer(model) as server:
        return run_probe(
            lambda size: GrpcEmbeddingClient(server.address, batch_size=size, max_in_flight=1),
            items,
            target=f"grpc://{server.address}",
            source=source,
            **FAST,
        )


def test_histogram_server_probes_clean(histogram, photos):
    result = probe_server(BatchingEmbedder(histogram, max_batch=32), photos)
    assert result.ok and result.problems == []
    assert result.dim == 512 and result.model == "histogram"
    assert result.normalized_measured and abs(result.norms.min - 1) < 1e-4 and abs(result.norms.max - 1) < 1e-4
    assert result.determinism_max_abs_diff == 0.0
    assert result.batch_invariance_min_cos >= 0.9999
    assert result.parity.status == "no reference"
    assert result.fingerprint.startswith("sha256:") and result.fingerprint == result.info["fingerprint"]
    assert "histogram" in result.preprocessing
    assert [(t.batch_size, t.request_size) for t in result.throughput] == [(1, 1), (4, 4)]
    assert all(t.images >= 4 and t.images_per_s > 0 for t in result.throughput)
    assert result.images.count == 12 and len(result.images.ids) == 12


def test_efficientnet_server_probes_clean_with_reference_parity(photos):
    backend = load_backend("efficientnet-lite0", threads=2)
    try:
        result = probe_server(BatchingEmbedder(backend, max_batch=32), photos)
    finally:
        backend.close()
    assert result.ok, result.problems
    assert result.dim == 1280 and not result.normalized_measured and result.norms.min > 1
    assert result.determinism_max_abs_diff <= 1e-5
    assert result.batch_invariance_min_cos >= 0.9999
    # the package's own module (BatchNorm unfused) agrees with the served, BN-folded one
    assert result.parity.status == "ok" and result.parity.min_cos >= 0.9999 and result.parity.images == 12


def test_noisy_server_is_caught_by_determinism(histogram, photos):
    result = probe_server(DefectiveModel(histogram, add_noise), photos)
    assert not result.ok
    assert result.determinism_max_abs_diff > 1e-3
    assert any(p.startswith("not deterministic") for p in result.problems)
    assert not result.normalized_measured  # noise also broke the promised unit norm
    assert any("says normalized" in p for p in result.problems)


def test_batch_dependent_server_is_caught_by_batch_invariance(histogram, photos):
    result = probe_server(DefectiveModel(histogram, centre_on_batch), photos)
    assert not result.ok
    assert result.determinism_max_abs_diff == 0.0  # the same batch twice is the same
    assert result.batch_invariance_min_cos < 0.99
    assert any(p.startswith("batch-dependent") for p in result.problems)


# --- the command --------------------------------------------------------------------------------

ARGS = ["--limit", "6", "--batches", "1,2", "--throughput-images", "2"]


def test_command_exits_1_and_still_writes_the_figures_for_a_noisy_server(histogram, tmp_path):
    out = tmp_path / "probes" / "noisy.json"
    with BackgroundServer(DefectiveModel(histogram, add_noise)) as server:
        done = CliRunner().invoke(app, ["probe", "--server", server.address, "--out", str(out), *ARGS])
    assert done.exit_code == 1, done.output
    assert "problem: not deterministic" in done.output
    written = read_probe(out)
    assert not written.ok and written.determinism_max_abs_diff > 0 and written.target.startswith("grpc://127.0.0.1:")


def test_command_in_process_by_model_name_exits_0(tmp_path):
    out = tmp_path / "histogram.json"
    done = CliRunner().invoke(app, ["probe", "--model", "histogram", "--out", str(out), *ARGS])
    assert done.exit_code == 0, done.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    assert data["schema"] == SCHEMA_ID and data["ok"] is True and data["target"] == "in-process:histogram"
    assert data["images"]["source"].endswith(str(Path("quickstart") / "photos"))
    again = CliRunner().invoke(app, ["probe", "--model", "histogram", "--out", str(out), *ARGS])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "histogram", "--server", "127.0.0.1:1"], "exactly one of"),
        (["--model", "histogram", "--options", "{}"], "--options goes with --kind"),
        (["--kind", "histogram", "--options", '{"bins": 1}'], "option 'bins'"),
        (["--model", "histogram", "--images", "/nonexistent-folder"], "is not a folder"),
    ],
)
def test_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    done = CliRunner().invoke(app, ["probe", "--out", str(tmp_path / "p.json"), *args])
    assert done.exit_code == 2 and message in done.output
    assert not (tmp_path / "p.json").exists()
