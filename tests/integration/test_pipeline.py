"""The pipeline end to end with real parts: an embedder server process, Qdrant Edge, exact search,
result files. Includes the crash test: the embedder is killed mid-run and the run resumes without
re-embedding what is stored and without losing a vector."""

import json
import socket
import threading
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from services.common.types import Embedding
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.datasets.registry import load_dataset
from services.evaluator.pipeline import Evaluation, EvaluationOptions, collection_name
from services.evaluator.results import load_results, read_query_outcomes
from services.evaluator.servers import embedder_process
from services.evaluator.stores.registry import open_store
from tests.fakes.images import write_product_folder

PRODUCTS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """Products are colour families; gallery and query images are noisy variants of them.
    One query file is corrupt and one gallery product has a distractor look-alike."""
    root = tmp_path_factory.mktemp("ds")
    rng = write_product_folder(root, products=PRODUCTS, seed=3, per_split=(("gallery", 3), ("query", 2)), noise=12,
                               folder="p{:02d}")
    (root / "distractors").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "distractors" / f"d{i}.png")
    (root / "query" / "p00" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return load_dataset("folder", root, name="colours")


def options():
    return EvaluationOptions(show_progress=False)


def test_run_writes_consistent_results(tmp_path, folder_dataset):
    store = open_store("qdrant-edge", path=tmp_path / "qdrant")
    try:
        with embedder_process("histogram") as server, GrpcEmbeddingClient(server.address) as client:
            run = Evaluation(store, tmp_path / "results", options()).run(folder_dataset, client).result
            again = Evaluation(store, tmp_path / "results", options()).run(folder_dataset, client).result
    finally:
        store.close()
    data = run.data
    assert data["queries"]["total"] == PRODUCTS * 2 + 1
    assert data["queries"]["failed_to_embed"] == 1
    assert [e["image_id"] for e in data["errors"]] == ["query/p00/corrupt.jpg"]
    assert data["errors"][0]["code"] == "INVALID_IMAGE"
    assert data["gallery"]["indexed"] == PRODUCTS * 3 + 6 and data["gallery"]["distractors"] == 6
    assert data["metrics"]["recall@1"] > 80.0  # colour families are easy for a colour histogram
    # per-query file agrees with the summary
    outcomes = list(read_query_outcomes(run.per_query_path()))
    assert len(outcomes) == data["queries"]["scored"]
    r1 = 100 * np.mean([o.first_relevant_rank == 1 for o in outcomes])
    assert r1 == pytest.approx(data["metrics"]["recall@1"], abs=1e-3)
    ap = 100 * np.mean([o.ap["20"] for o in outcomes])
    assert ap == pytest.approx(data["metrics"]["map@20"], abs=1e-3)
    assert all(o.n_relevant == 3 for o in outcomes)
    # the rerun reused every stored vector, wrote a new file and left the first untouched
    assert again.data["timings"]["images_embedded"] == 0
    assert again.data["timings"]["images_already_stored"] == PRODUCTS * 5 + 6
    assert again.path != run.path and json.loads(run.path.read_text())["run_id"] == run.data["run_id"]
    assert again.metrics == run.metrics
    assert len(load_results(tmp_path / "results")) == 1  # newest per (dataset, model)


def test_qdrant_search_matches_matmul(tmp_path, folder_dataset):
    store = open_store("qdrant-edge", path=tmp_path / "qdrant")
    try:
        with embedder_process("histogram") as server, GrpcEmbeddingClient(server.address) as client:
            matmul = Evaluation(store, tmp_path / "r1", options()).run(folder_dataset, client).result
            qdrant = Evaluation(store, tmp_path / "r2", EvaluationOptions(search="qdrant", show_progress=False)).run(
                folder_dataset, client).result
    finally:
        store.close()
    assert qdrant.metrics == matmul.metrics
    a = {o.query_id: o.top_ids for o in matmul.queries()}
    b = {o.query_id: o.top_ids for o in qdrant.queries()}
    assert a == b


class KillingClient:
    """Wraps the real client; SIGKILLs the embedder after `kill_after` vectors arrived, and
    optionally starts a fresh embedder on the same port shortly after."""

    def __init__(self, inner, server, kill_after, restart_port=None):
        self.inner, self.server, self.kill_after, self.restart_port = inner, server, kill_after, restart_port
        self.delivered = Counter()
        self.restarted = None

    def info(self):
        return self.inner.info()

    def embed(self, items, usage=None, role=None):
        for embedding in self.inner.embed(items, usage, role):
            self.delivered[embedding.id] += 1
            if sum(self.delivered.values()) == self.kill_after:
                self.server.kill()
                if self.restart_port:
                    def restart():
                        self.restarted = embedder_process("histogram", "--port", str(self.restart_port),
                                                          "--max-batch", "4").start()
                    threading.Timer(0.3, restart).start()
            yield embedding

    def close(self):
        self.inner.close()


def test_embedder_killed_mid_run_then_restarted_resumes_in_the_same_run(tmp_path, folder_dataset):
    port = free_port()
    store = open_store("qdrant-edge", path=tmp_path / "qdrant")
    server = embedder_process("histogram", "--port", str(port), "--max-batch", "4").start()
    client = KillingClient(GrpcEmbeddingClient(f"127.0.0.1:{port}", batch_size=4, max_in_flight=2,
                                               backoff_s=0.3, max_retries=8), server, kill_after=20,
                           restart_port=port)
    try:
        report = Evaluation(store, tmp_path / "results", options()).run(
            folder_dataset, client, "histogram", score=False).report
        total = len(folder_dataset.records)
        assert client.inner.retries >= 1 and client.restarted is not None
        assert set(client.delivered) == {r.image_id for r in folder_dataset.records}
        assert max(client.delivered.values()) == 1  # every image embedded (and delivered) exactly once
        assert report.embedded == total - 1 and len(report.errors) == 1
        assert store.count(collection_name("colours", "histogram")) == total - 1
    finally:
        client.close()
        server.stop()
        if client.restarted:
            client.restarted.stop()
        store.close()


def test_embedder_killed_for_good_then_rerun_skips_what_is_stored(tmp_path, folder_dataset):
    port = free_port()
    store = open_store("qdrant-edge", path=tmp_path / "qdrant")
    evaluation = Evaluation(store, tmp_path / "results", options())
    collection = collection_name("colours", "histogram")
    server = embedder_process("histogram", "--port", str(port), "--max-batch", "4").start()
    first = KillingClient(GrpcEmbeddingClient(f"127.0.0.1:{port}", batch_size=4, max_in_flight=1,
                                              backoff_s=0.05, max_retries=2), server, kill_after=30)
    try:
        # The service failing for good ends the pass with a failure, not an exception: what
        # arrived is stored and a failed record says why.
        outcome = evaluation.run(folder_dataset, first, "histogram")
        assert "UNAVAILABLE" in outcome.report.failure and outcome.failed
        assert outcome.result.record.status == "failed" and "UNAVAILABLE" in outcome.result.record.failure
        assert outcome.result.record.metrics == {} and outcome.result.per_query_path() is None
        stored_after_crash = store.count(collection)
        # nothing that arrived was lost (answers already on the wire when it died arrive too)
        failed = sum(1 for image_id in first.delivered if image_id.endswith("corrupt.jpg"))
        assert stored_after_crash == sum(first.delivered.values()) - failed >= 30 - failed
    finally:
        first.close()
    with embedder_process("histogram", "--port", str(port)) as again:
        second = KillingClient(GrpcEmbeddingClient(again.address), again, kill_after=-1)
        report = evaluation.run(folder_dataset, second, "histogram", score=False).report
        second.close()
    store.close()
    total = len(folder_dataset.records)
    assert report.already_stored == stored_after_crash
    # nothing embedded twice across the runs (the corrupt query is retried: it was never stored)
    assert not (set(first.delivered) & set(second.delivered)) - {"query/p00/corrupt.jpg"}
    assert len(set(first.delivered) | set(second.delivered)) == total
    assert report.embedded + report.already_stored == total - 1  # the corrupt query is an error


class RepeatingClient:
    """A faulty server's behaviour: every answer arrives twice, plus one id nobody asked for."""

    def __init__(self, inner):
        self.inner = inner

    def info(self):
        return self.inner.info()

    def embed(self, items, usage=None, role=None):
        for embedding in self.inner.embed(items, usage, role):
            yield embedding
            yield embedding
        yield Embedding("not-sent", vector=np.ones(self.info().dim, np.float32))

    def close(self):
        self.inner.close()


def test_repeated_or_unknown_answers_are_ignored_not_double_counted(tmp_path, folder_dataset):
    store = open_store("qdrant-edge", path=tmp_path / "qdrant")
    try:
        with embedder_process("histogram") as server:
            client = RepeatingClient(GrpcEmbeddingClient(server.address))
            report = Evaluation(store, tmp_path / "results", options()).run(
                folder_dataset, client, "histogram", score=False).report
            client.close()
        total = len(folder_dataset.records)
        assert report.embedded == total - 1 and len(report.errors) == 1
        assert store.count(collection_name("colours", "histogram")) == total - 1
    finally:
        store.close()
