"""Shared by the search tests: the quickstart catalog, embedders on loopback, a benchmark run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from services.common.grpc_server import BackgroundServer
from services.common.settings import ServerSettings


@contextmanager
def embedder_on_loopback(model: str = "histogram", **options):
    """A real embedder gRPC server in this process (its own event loop thread)."""
    from services.embedder.__main__ import build_embedder
    from services.embedder.settings import EmbedderSettings

    embedder = build_embedder(EmbedderSettings(model=model, options=options, warmup=False))
    with BackgroundServer(embedder, ServerSettings(port=0)) as server:
        yield server


def quickstart_open(root: Path):
    from services.evaluator.datasets.registry import load_dataset
    from services.evaluator.quickstart.build import build_quickstart_dataset

    manifests = build_quickstart_dataset(root)
    return load_dataset("manifest", manifests["open"]), manifests["open"]


def benchmark_run(dataset, address: str, store_dir: Path, results_dir: Path, model: str = "histogram"):
    """An exact vsbench run (matmul search) of the model on the dataset, with the open-set analysis."""
    from services.evaluator.clients.grpc import GrpcEmbeddingClient
    from services.evaluator.pipeline import Evaluation, EvaluationOptions
    from services.evaluator.stores.registry import open_store

    store = open_store("qdrant-edge", path=store_dir)
    try:
        with GrpcEmbeddingClient(address) as client:
            result = Evaluation(store, results_dir, EvaluationOptions(show_progress=False)).run(
                dataset, client, model).result
    finally:
        store.close()
    assert result.ok, result.record.failure
    return result
