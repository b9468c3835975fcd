"""The search service as deployed: `vsbench index` builds a collection from the quickstart catalog
through a real embedder process, `python -m services.search` serves it, and clients (the gRPC
client and `vsbench search`) query it with the quickstart's real query photos.

Done when (issue 14): the service answers with the benchmark's R@1 within ANN loss, rejects the
out-of-catalog photos at the benchmark's measured rate, and survives an embedder restart under
load with no failed request; bad input is INVALID_ARGUMENT, a dead embedder UNAVAILABLE, a
collection of another model refused at start.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from services.evaluator.servers import ServerProcess, embedder_process
from services.search.client import SearchCallError, SearchClient
from tests.search_support import benchmark_run, quickstart_open

pytestmark = pytest.mark.slow  # real embedder and search processes, the quickstart catalog

COLLECTION = "quickstart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          timeout=600)


def index_with_cli(store, embedder: str, manifest, *extra: str) -> dict:
    done = cli("index", "--collection", COLLECTION, "--embedder", embedder, "--catalog", str(manifest),
               "--store", str(store), "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def search_process(store, embedder: str, *extra: str) -> ServerProcess:
    return ServerProcess(["services.search", "--store", str(store), "--collection", COLLECTION, "--embedder", embedder,
                          "--host", "127.0.0.1", *extra], name="search")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Embedder process, exact benchmark run, collection indexed by the CLI, search service process."""
    root = tmp_path_factory.mktemp("search")
    dataset, manifest = quickstart_open(root / "dataset")
    with embedder_process("histogram") as embedder:
        run = benchmark_run(dataset, embedder.address, root / "bench-store", root / "results")
        # Thresholds of 1 KB: the HNSW graph is built and searched even for this small catalog, so the
        # approximate search is what answers.
        report = index_with_cli(root / "store", embedder.address, manifest, "--threshold-from", str(run.path),
                                "--indexing-threshold-kb", "1", "--full-scan-threshold-kb", "1",
                                "--m", "8", "--ef-construct", "32")
        with search_process(root / "store", embedder.address) as service:
            yield {"dataset": dataset, "manifest": manifest, "run": run, "report": report, "service": service,
                   "embedder": embedder, "root": root}


def per_query(run) -> dict[str, dict]:
    lines = run.path.with_name(run.path.stem + ".queries.jsonl").read_text().splitlines()[1:]
    return {row["query_id"]: row for row in map(json.loads, lines)}


def test_answers_with_the_benchmarks_recall_and_rejection_rate(deployed):
    dataset, run = deployed["dataset"], deployed["run"]
    exact = per_query(run)
    open_set = run.record.analyses.open_set
    threshold = open_set.recommendation.threshold
    assert deployed["report"]["threshold"] == pytest.approx(threshold)
    gallery_products = {r.product_id for r in dataset.gallery() if r.product_id}
    answers = {}
    with SearchClient(deployed["service"].address) as client:
        info = client.describe()
        assert info.fingerprint == run.record.model.fingerprint and info.points == len(dataset.gallery())
        for query in dataset.queries():
            answers[query.image_id] = (query, client.search_image(dataset.read(query), k=5))
    in_catalog = [q for q, _ in answers.values() if q.product_id in gallery_products]
    out_catalog = [q for q, _ in answers.values() if q.product_id not in gallery_products]
    assert (len(in_catalog), len(out_catalog)) == (open_set.in_catalog, open_set.out_of_catalog)

    # ANN loss: queries whose served top-1 image is not the exact search's top-1 (scores differ).
    ann_loss = 0
    for query_id, (query, answer) in answers.items():
        top = answer.hits[0]
        assert top.keys() >= {"product_id", "image_id", "score"}
        assert len({h["product_id"] or h["image_id"] for h in answer.hits}) == len(answer.hits)  # one per product
        assert answer.hits == sorted(answer.hits, key=lambda h: -h["score"])
        if top["image_id"] != exact[query_id]["top_ids"][0]:
            assert top["score"] <= exact[query_id]["top_scores"][0] + 1e-5  # ANN can only miss, never beat exact
            ann_loss += 1
    assert ann_loss <= 0.02 * len(answers), f"{ann_loss} of {len(answers)} top-1 answers differ from exact search"

    served_r1 = 100.0 * sum(answers[q.image_id][1].hits[0]["product_id"] == q.product_id for q in in_catalog) / len(in_catalog)
    assert abs(served_r1 - run.metrics["recall@1"]) <= 100.0 * ann_loss / len(in_catalog) + 1e-3

    # Rejection: the benchmark's measured false-accept rate at the recommended threshold.
    roc = {p.threshold: p for p in open_set.roc}
    assert threshold in roc, "the ROC curve of this small set holds every threshold"
    accepted_out = sum(answers[q.image_id][1].accepted for q in out_catalog)
    expected_accepted_out = roc[threshold].far / 100.0 * len(out_catalog)
    assert abs(accepted_out - expected_accepted_out) <= ann_loss + 1e-6
    assert accepted_out < len(out_catalog)  # the threshold rejects out-of-catalog photos
    coverage = 100.0 * sum(a.accepted for _, a in answers.values()) / len(answers)
    assert abs(coverage - open_set.recommendation.coverage) <= 100.0 * ann_loss / len(answers) + 1e-3
    for _, answer in answers.values():
        assert answer.threshold == pytest.approx(threshold)
        assert answer.accepted == (answer.hits[0]["score"] > answer.threshold)


def test_vector_queries_and_product_filter(deployed):
    dataset = deployed["dataset"]
    gallery = dataset.gallery()
    some = next(r for r in gallery if r.product_id)
    with SearchClient(deployed["service"].address) as client:
        by_image = client.search_image(dataset.read(some), k=3)
        assert by_image.hits[0]["image_id"] == some.image_id and by_image.hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert by_image.embed_seconds > 0 and by_image.search_seconds > 0
        other = next(r.product_id for r in gallery if r.product_id and r.product_id != some.product_id)
        only = client.search_image(dataset.read(some), k=5, product_ids=[other])
        assert only.hits and {h["product_id"] for h in only.hits} == {other}
        dim = client.describe().dim
        vector = np.zeros(dim, dtype=np.float32)
        vector[0] = 3.0
        answer = client.search_vector(vector, k=2)
        assert len(answer.hits) == 2 and answer.embed_seconds == 0
        with pytest.raises(SearchCallError) as wrong_dim:
            client.search_vector(np.ones(dim + 1), k=2)
        assert wrong_dim.value.code is grpc.StatusCode.INVALID_ARGUMENT and f"{dim}-d" in wrong_dim.value.details
        with pytest.raises(SearchCallError) as zero:
            client.search_vector(np.zeros(dim), k=2)
        assert zero.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_bad_images_are_invalid_argument_with_the_reason(deployed):
    with SearchClient(deployed["service"].address) as client:
        with pytest.raises(SearchCallError) as garbage:
            client.search_image(b"definitely not an image")
        assert garbage.value.code is grpc.StatusCode.INVALID_ARGUMENT and "INVALID_IMAGE" in garbage.value.details
        with pytest.raises(SearchCallError) as empty:
            client.search_image(b"")
        assert empty.value.code is grpc.StatusCode.INVALID_ARGUMENT and "empty" in empty.value.details
        with pytest.raises(SearchCallError) as big_k:
            client.search_image(b"x", k=10_000)
        assert big_k.value.code is grpc.StatusCode.INVALID_ARGUMENT and "k must be" in big_k.value.details


def test_oversized_image_is_refused_before_embedding(deployed, tmp_path):
    dataset = deployed["dataset"]
    image = dataset.read(dataset.queries()[0])
    # A second service cannot open the same Edge shard: serve a fresh copy of the collection.
    index_with_cli(tmp_path / "store", deployed["embedder"].address, deployed["manifest"])
    with search_process(tmp_path / "store", deployed["embedder"].address, "--max-image-bytes", "1000") as service, \
            SearchClient(service.address) as client:
        with pytest.raises(SearchCallError) as big:
            client.search_image(image)
        assert big.value.code is grpc.StatusCode.INVALID_ARGUMENT and "over the limit of 1000" in big.value.details


def test_cli_search_prints_hits_and_decision(deployed):
    dataset = deployed["dataset"]
    queries = dataset.queries()[:2]
    paths = [str(dataset.path_of(q)) for q in queries]
    done = cli("search", "--service", deployed["service"].address, *paths, "--k", "3", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert [p["image"] for p in printed] == paths
    for entry in printed:
        assert entry["decision"] in ("accept", "reject") and len(entry["hits"]) == 3
        assert set(entry["hits"][0]) >= {"product_id", "image_id", "score"}
    missing = cli("search", "--service", deployed["service"].address, "/nonexistent.jpg", "--json")
    assert missing.returncode == 1 and "unreadable" in json.loads(missing.stdout)[0]["error"]


def test_collection_of_another_model_refuses_to_start(deployed):
    with embedder_process("histogram", "--options", '{"bins": 4}') as other:
        service = search_process(deployed["root"] / "store-other", other.address)
        index_with_cli(deployed["root"] / "store-other", deployed["embedder"].address, deployed["manifest"])
        with pytest.raises(Exception) as refused:
            service.start()
        text = str(refused.value)
        indexed = deployed["run"].record.model.fingerprint
        assert "exited with code 1" in text and indexed[:19] in text
        from services.evaluator.clients.grpc import GrpcEmbeddingClient

        with GrpcEmbeddingClient(other.address) as client:
            assert client.info().fingerprint[:19] in text


def test_survives_an_embedder_restart_under_load(tmp_path, deployed):
    dataset, manifest = deployed["dataset"], deployed["manifest"]
    port = free_port()
    images = [dataset.read(q) for q in dataset.queries()[:12]]
    embedder = embedder_process("histogram", "--port", str(port))
    embedder.start()
    try:
        index_with_cli(tmp_path / "store", embedder.address, manifest)
        with search_process(tmp_path / "store", embedder.address, "--embed-retries", "20") as service:
            failures: list[str] = []
            done = [0, 0]  # answered before / after the restart
            restarted = threading.Event()
            stop = threading.Event()

            def client_loop(offset: int) -> None:
                with SearchClient(service.address) as client:
                    i = offset
                    while not stop.is_set():
                        try:
                            client.search_image(images[i % len(images)], k=3)
                            done[restarted.is_set()] += 1
                        except SearchCallError as exc:
                            failures.append(str(exc))
                        i += 1

            threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            try:
                _wait_for(lambda: done[0] >= 20)
                embedder.kill()  # SIGKILL mid-load: in-flight embeddings are lost with it
                time.sleep(1.0)
                embedder = embedder_process("histogram", "--port", str(port))
                embedder.start()
                restarted.set()
                _wait_for(lambda: done[1] >= 20)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=120)
            assert failures == []
    finally:
        embedder.stop()


def test_dead_embedder_is_unavailable_then_recovers(tmp_path, deployed):
    dataset, manifest = deployed["dataset"], deployed["manifest"]
    port = free_port()
    image = dataset.read(dataset.queries()[0])
    embedder = embedder_process("histogram", "--port", str(port))
    embedder.start()
    try:
        index_with_cli(tmp_path / "store", embedder.address, manifest)
        with search_process(tmp_path / "store", embedder.address, "--embed-retries", "1") as service, \
                SearchClient(service.address) as client:
            assert client.search_image(image).hits
            embedder.kill()
            with pytest.raises(SearchCallError) as down:
                client.search_image(image)
            assert down.value.code is grpc.StatusCode.UNAVAILABLE and "EmbedStream" in down.value.details
            embedder = embedder_process("histogram", "--port", str(port))
            embedder.start()
            _wait_for(lambda: _answers(client, image))
    finally:
        embedder.stop()


def _answers(client: SearchClient, image: bytes) -> bool:
    try:
        return bool(client.search_image(image).hits)
    except SearchCallError:
        return False


def _wait_for(condition, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_embedder_restarted_with_another_model_is_refused_until_the_right_one_is_back(tmp_path, deployed):
    dataset, manifest = deployed["dataset"], deployed["manifest"]
    port = free_port()
    image = dataset.read(dataset.queries()[0])
    embedder = embedder_process("histogram", "--port", str(port))
    embedder.start()
    try:
        index_with_cli(tmp_path / "store", embedder.address, manifest)
        with search_process(tmp_path / "store", embedder.address, "--model-check-s", "0.2") as service, \
                SearchClient(service.address) as client:
            indexed = client.describe().fingerprint
            assert client.search_image(image).hits
            embedder.stop()
            embedder = embedder_process("histogram", "--port", str(port), "--options", '{"bins": 4}')
            embedder.start()

            def refused() -> bool:
                try:
                    client.search_image(image)
                except SearchCallError as exc:
                    return exc.code is grpc.StatusCode.FAILED_PRECONDITION
                return False

            _wait_for(refused)
            with pytest.raises(SearchCallError) as changed:
                client.search_image(image)
            assert indexed[:19] in changed.value.details and "bins" not in changed.value.details
            assert _health(service.address) == "NOT_SERVING"
            embedder.stop()
            embedder = embedder_process("histogram", "--port", str(port))
            embedder.start()
            _wait_for(lambda: _answers(client, image))
            assert _health(service.address) == "SERVING"
    finally:
        embedder.stop()


def _health(address: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def test_bearer_auth_guards_search_but_not_health(tmp_path, deployed):
    dataset = deployed["dataset"]
    image = dataset.read(dataset.queries()[0])
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-search-token\n")
    index_with_cli(tmp_path / "store", deployed["embedder"].address, deployed["manifest"])
    with search_process(tmp_path / "store", deployed["embedder"].address, "--auth-token-file", str(token_file)) as service:
        with SearchClient(service.address) as anonymous:
            with pytest.raises(SearchCallError) as denied:
                anonymous.search_image(image)
            assert denied.value.code is grpc.StatusCode.UNAUTHENTICATED
        with SearchClient(service.address, auth_token="s3cret-search-token") as client:
            assert client.search_image(image).hits
        assert _health(service.address) == "SERVING"
        assert "s3cret-search-token" not in service.output_tail
