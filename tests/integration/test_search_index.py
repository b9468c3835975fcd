"""`vsbench index`: a catalog's gallery into a served collection, on Qdrant Edge and on the
qdrant-client code path of a Qdrant server (local mode as the stand-in), through a real embedder
on loopback. Incremental by image id; another model's fingerprint refused unless reembed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.datasets.base import Split
from services.search.build import ThresholdError, build_index, threshold_from_record
from services.search.index import CatalogIndexError, IndexParams, open_index
from tests.search_support import benchmark_run, embedder_on_loopback, quickstart_open

pytestmark = pytest.mark.slow  # a real embedder on loopback, the quickstart catalog

BACKENDS = {
    "edge": lambda tmp: open_index("catalog", store=tmp / "edge"),
    "server-client": lambda tmp: open_index("catalog", qdrant_path=tmp / "qdrant"),
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return quickstart_open(tmp_path_factory.mktemp("quickstart"))


@pytest.fixture(scope="module")
def embedder():
    with embedder_on_loopback("histogram") as server:
        yield server


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_index_is_built_then_updated_by_image_id(tmp_path, catalog, embedder, backend):
    dataset, _ = catalog
    gallery = dataset.gallery()
    index = BACKENDS[backend](tmp_path)
    try:
        with GrpcEmbeddingClient(embedder.address) as client:
            first = build_index(dataset, client, index, params=IndexParams(m=8, ef_construct=32))
            assert (first.added, first.removed, first.points, first.failed) == (len(gallery), 0, len(gallery), [])
            stored = index.payloads()
            some = gallery[0]
            assert stored[some.image_id] == {"image_id": some.image_id, "product_id": some.product_id,
                                             "location": some.location, "dataset": dataset.name}
            meta = index.meta()
            assert meta.fingerprint == client.info().fingerprint and meta.dim == client.info().dim
            assert meta.params == IndexParams(m=8, ef_construct=32)

            again = build_index(dataset, client, index)  # the stored parameters are kept
            assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, len(gallery))

            # Drop one catalog image, move another to a new product, add a query photo as a catalog image.
            dropped, moved = gallery[1], gallery[2]
            new = dataclasses.replace(dataset.queries()[0], image_id="added/one", split=Split.GALLERY)
            records = [r for r in dataset.records if r.image_id != dropped.image_id]
            records = [dataclasses.replace(r, product_id="moved") if r.image_id == moved.image_id else r
                       for r in records] + [new]
            changed = dataclasses.replace(dataset, records=records)
            third = build_index(changed, client, index)
            assert (third.added, third.updated, third.removed) == (1, 1, 1)
            assert third.points == len(gallery)
            stored = index.payloads()
            assert dropped.image_id not in stored and stored["added/one"]["product_id"] == new.product_id
            assert stored[moved.image_id]["product_id"] == "moved"
    finally:
        index.close()


def test_another_model_is_refused_unless_reembed(tmp_path, catalog, embedder):
    dataset, _ = catalog
    index = open_index("catalog", store=tmp_path / "edge")
    try:
        with GrpcEmbeddingClient(embedder.address) as client:
            build_index(dataset, client, index)
            before = index.meta().fingerprint
        with embedder_on_loopback("histogram", bins=4) as other, GrpcEmbeddingClient(other.address) as client:
            served = client.info().fingerprint
            assert served != before
            with pytest.raises(CatalogIndexError) as refused:
                build_index(dataset, client, index)
            assert before[:19] in str(refused.value) and served[:19] in str(refused.value)
            assert index.meta().fingerprint == before  # nothing was touched
            rebuilt = build_index(dataset, client, index, reembed=True)
            assert rebuilt.rebuilt and rebuilt.points == len(dataset.gallery())
            assert index.meta().fingerprint == served and index.meta().dim == client.info().dim
    finally:
        index.close()


def test_changing_index_parameters_needs_a_fresh_collection(tmp_path, catalog, embedder):
    dataset, _ = catalog
    index = open_index("catalog", store=tmp_path / "edge")
    try:
        with GrpcEmbeddingClient(embedder.address) as client:
            build_index(dataset, client, index)
            with pytest.raises(CatalogIndexError, match="index parameters"):
                build_index(dataset, client, index, params=IndexParams(quantization="scalar"))
    finally:
        index.close()


def test_threshold_comes_from_a_run_of_the_same_model(tmp_path, catalog, embedder):
    dataset, _ = catalog
    run = benchmark_run(dataset, embedder.address, tmp_path / "bench-store", tmp_path / "results")
    choice = threshold_from_record(run.path)
    recommended = run.record.analyses.open_set.recommendation.threshold
    assert choice.threshold == recommended and choice.fingerprint == run.record.model.fingerprint
    index = open_index("catalog", store=tmp_path / "edge")
    try:
        with GrpcEmbeddingClient(embedder.address) as client:
            report = build_index(dataset, client, index, threshold=choice)
            assert report.threshold == recommended
            assert index.meta().threshold == recommended and run.record.run_id in index.meta().threshold_source
            kept = build_index(dataset, client, index)  # re-indexing without --threshold-from keeps it
            assert kept.threshold == recommended
        with embedder_on_loopback("histogram", bins=4) as other, GrpcEmbeddingClient(other.address) as client:
            other_index = open_index("other", store=tmp_path / "edge")
            try:
                with pytest.raises(ThresholdError, match="was measured with model fingerprint"):
                    build_index(dataset, client, other_index, threshold=choice)
                assert other_index.meta() is None
            finally:
                other_index.close()
    finally:
        index.close()


def test_threshold_record_without_open_set_is_refused(tmp_path):
    broken = tmp_path / "nope.json"
    broken.write_text(json.dumps({"schema": "x"}))
    with pytest.raises(ThresholdError, match="not a vsbench run record"):
        threshold_from_record(broken)
    with pytest.raises(ThresholdError, match="cannot read"):
        threshold_from_record(tmp_path / "missing.json")


def test_unreadable_catalog_images_are_reported_and_the_rest_indexed(tmp_path, catalog, embedder):
    dataset, _ = catalog
    gallery = dataset.gallery()
    broken = dataclasses.replace(gallery[0], image_id="broken/missing", location="images/none.jpg")
    garbage_file = tmp_path / "garbage.jpg"
    garbage_file.write_bytes(b"not an image at all")
    garbage = dataclasses.replace(gallery[0], image_id="broken/garbage", location=garbage_file.as_uri())
    with_bad = dataclasses.replace(dataset, records=dataset.records + [broken, garbage], allow_outside_root=True)
    index = open_index("catalog", store=tmp_path / "edge")
    try:
        with GrpcEmbeddingClient(embedder.address) as client:
            report = build_index(with_bad, client, index)
        reasons = dict(report.failed)
        assert set(reasons) == {"broken/missing", "broken/garbage"}
        assert "unreadable" in reasons["broken/missing"] and "INVALID_IMAGE" in reasons["broken/garbage"]
        assert report.points == len(gallery) and report.added == len(gallery)
    finally:
        index.close()


def test_hnsw_parameters_reach_the_engine(tmp_path):
    """With the graph built (thresholds of 1 KB) a starved graph search misses neighbours that the
    exact scan finds, and the default parameters find them: the index is approximate, as configured."""
    import numpy as np

    from services.search.index import CollectionMeta

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:40] + 0.3 * rng.standard_normal((40, 32)).astype(np.float32)
    recalls = {}
    for name, params in (("starved", IndexParams(m=2, ef_construct=4, indexing_threshold_kb=1, full_scan_threshold_kb=1)),
                         ("default", IndexParams(indexing_threshold_kb=1, full_scan_threshold_kb=1))):
        index = open_index(name, store=tmp_path / "edge")
        try:
            index.create(CollectionMeta(fingerprint="sha256:synthetic", model={}, dim=32, params=params))
            index.upsert([str(i) for i in range(len(vectors))], vectors, [{"product_id": str(i)} for i in range(len(vectors))])
            index.optimize()
            found = [len({h.image_id for h in index.search(q, 10, ef=4 if name == "starved" else 128)}
                         & {h.image_id for h in index.search(q, 10, exact=True)}) for q in queries]
            recalls[name] = sum(found) / (10 * len(queries))
        finally:
            index.close()
    assert recalls["starved"] < 1.0 <= recalls["default"] + 0.02


def test_cli_keeps_or_overrides_the_stored_index_parameters(tmp_path, catalog, embedder):
    import subprocess
    import sys

    _, manifest = catalog

    def index(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "services.evaluator.cli", "index", "--collection", "catalog", "--catalog",
             str(manifest), "--embedder", embedder.address, "--store", str(tmp_path / "edge"), "--json", *flags],
            capture_output=True, text=True, timeout=300)

    first = index("--m", "8", "--ef-construct", "32")
    assert first.returncode == 0, first.stderr
    again = index("--m", "8")  # the flags given agree with what is stored: nothing changes
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unchanged"] == json.loads(first.stdout)["points"]
    other = index("--quantization", "scalar")
    assert other.returncode == 2 and other.stderr.startswith("error: ") and "--reembed" in other.stderr
    rebuilt = index("--quantization", "scalar", "--reembed")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["rebuilt"] is True
    stored = open_index("catalog", store=tmp_path / "edge")
    try:
        assert stored.meta().params == IndexParams(m=8, ef_construct=32, quantization="scalar")
    finally:
        stored.close()
    bad = index("--quantization", "product")
    assert bad.returncode == 2 and "quantization 'product'" in bad.stderr
