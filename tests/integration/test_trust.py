"""Results you can trust, probed as a user would run vsbench:

- the same model name served with new weights never mixes old and new vectors: refused with both
  fingerprints named, or re-embedded with --reembed;
- through the api_proxy, each dataset's record bills only its own images, and a rerun into a
  fresh store is all cache hits and no bill.
"""

from __future__ import annotations

import json
import socket

import pytest

from services.evaluator.stores._common import FingerprintMismatch
from tests.fakes.images import write_product_folder
from tests.fakes.vendors import CohereVendor, FakeVendorServer
from tests.integration.test_proxy_server import DIM, GRPC_TOKEN, VENDOR_KEY, start_proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_folder_dataset(root, products: int, seed: int) -> None:
    write_product_folder(root, products=products, seed=seed, per_split=(("gallery", 2), ("query", 1)), size=40,
                         noise=20, folder="p{:02d}")


def write_config(path, *, store, results, datasets, models, **extra) -> None:
    import yaml

    path.write_text(yaml.safe_dump({
        "results_dir": str(results),
        "store": {"kind": "qdrant-edge", "path": str(store)},
        "k": [1, 5],
        "map_k": [5],
        "datasets": [{"name": name, "format": "folder", "path": str(root)} for name, root in datasets],
        "models": models,
        **extra,
    }))


@pytest.mark.slow
def test_same_name_with_new_weights_is_refused_or_reembedded_never_mixed(tmp_path):
    from services.evaluator.config import RunSpec
    from services.evaluator.runner import run_spec
    from services.evaluator.servers import embedder_process

    make_folder_dataset(tmp_path / "parts", products=6, seed=1)
    port = free_port()
    config = tmp_path / "run.yaml"
    models = [{"name": "prod-model", "server": f"127.0.0.1:{port}"}]
    write_config(config, store=tmp_path / "store", results=tmp_path / "results",
                 datasets=[("parts", tmp_path / "parts")], models=models)

    with embedder_process("efficientnet-lite0", "--port", str(port)):
        (first,) = run_spec(RunSpec.from_yaml(config), show_progress=False)
    lite0_fp = first.result.record.model.fingerprint
    assert lite0_fp.startswith("sha256:") and first.result.ok

    with embedder_process("efficientnet-lite2", "--port", str(port)):
        with pytest.raises(FingerprintMismatch) as refused:
            run_spec(RunSpec.from_yaml(config), show_progress=False)
        message = str(refused.value)
        assert lite0_fp[:19] in message and "--reembed" in message and "another name" in message
        assert refused.value.served != lite0_fp

        spec = RunSpec.from_yaml(config)
        spec.reembed = True
        (second,) = run_spec(spec, show_progress=False)
    record = second.result.record
    assert record.model.fingerprint == refused.value.served
    assert record.timings["images_embedded"] == 18 and record.timings["images_already_stored"] == 0
    first_top = {o.query_id: o.top_scores for o in first.result.queries()}
    second_top = {o.query_id: o.top_scores for o in second.result.queries()}
    assert first_top != second_top  # new weights, new vectors: nothing carried over


@pytest.mark.slow
def test_proxy_usage_is_per_run_and_per_dataset(tmp_path, monkeypatch):
    from services.evaluator.config import RunSpec
    from services.evaluator.runner import run_spec

    make_folder_dataset(tmp_path / "a", products=3, seed=2)  # 9 images
    make_folder_dataset(tmp_path / "b", products=5, seed=3)  # 15 images
    monkeypatch.setenv("VSBENCH_TEST_PROXY_TOKEN", GRPC_TOKEN)
    with FakeVendorServer(CohereVendor(DIM, key=VENDOR_KEY)) as fake:
        process, address, _ = start_proxy(tmp_path, fake)
        try:
            models = [{"name": "cohere/embed-v4.0", "server": address, "auth_token_env": "VSBENCH_TEST_PROXY_TOKEN",
                       "group": "commercial"}]
            datasets = [("a", tmp_path / "a"), ("b", tmp_path / "b")]
            config = tmp_path / "run.yaml"
            write_config(config, store=tmp_path / "store1", results=tmp_path / "r1", datasets=datasets, models=models)
            first = run_spec(RunSpec.from_yaml(config), show_progress=False)
            # A fresh store: every image is asked for again, and the proxy's cache answers.
            write_config(config, store=tmp_path / "store2", results=tmp_path / "r2", datasets=datasets, models=models)
            second = run_spec(RunSpec.from_yaml(config), show_progress=False)
        finally:
            process.terminate()
            process.wait(timeout=30)
    usage = {o.result.record.dataset.name: o.result.record.usage for o in first}
    assert (usage["a"].billed_images, usage["b"].billed_images) == (9, 15)
    assert usage["a"].cached_images == usage["b"].cached_images == 0
    assert usage["a"].requests >= 1 and usage["a"].rate_limited == 0
    assert usage["a"].cost_usd is not None and usage["b"].cost_usd == pytest.approx(usage["a"].cost_usd * 15 / 9)
    again = {o.result.record.dataset.name: o.result.record.usage for o in second}
    assert (again["a"].billed_images, again["a"].cached_images) == (0, 9)
    assert (again["b"].billed_images, again["b"].cached_images) == (0, 15)
    assert again["a"].cost_usd == 0.0 and again["a"].requests == 0
    for outcome in first + second:
        text = outcome.result.path.read_text()
        assert VENDOR_KEY not in text and GRPC_TOKEN not in text
        assert json.loads(text)["model"]["fingerprint"].startswith("sha256:")


@pytest.mark.slow
def test_gallery_and_queries_reach_the_vendor_with_their_roles(tmp_path, monkeypatch):
    """One proxy serves both roles: gallery images go as Cohere search_document, queries as
    search_query (the fake vendor answers each role with other vectors), and the record says so.
    A config can switch the roles off (the proxy's default for every request)."""
    from services.evaluator.config import RunSpec
    from services.evaluator.runner import run_spec

    make_folder_dataset(tmp_path / "a", products=3, seed=4)  # 6 gallery + 3 query images
    monkeypatch.setenv("VSBENCH_TEST_PROXY_TOKEN", GRPC_TOKEN)
    with FakeVendorServer(CohereVendor(DIM, key=VENDOR_KEY)) as fake:
        process, address, _ = start_proxy(tmp_path, fake)
        try:
            model = {"name": "cohere/embed-v4.0", "server": address, "auth_token_env": "VSBENCH_TEST_PROXY_TOKEN"}
            config = tmp_path / "run.yaml"
            write_config(config, store=tmp_path / "s1", results=tmp_path / "r1", datasets=[("a", tmp_path / "a")],
                         models=[model])
            (with_roles,) = run_spec(RunSpec.from_yaml(config), show_progress=False)
            by_role = {}
            for received in fake.received:
                by_role[received.role] = by_role.get(received.role, 0) + received.images
            model["input_roles"] = {"gallery": "unspecified", "queries": "unspecified"}
            write_config(config, store=tmp_path / "s2", results=tmp_path / "r2", datasets=[("a", tmp_path / "a")],
                         models=[model])
            (without,) = run_spec(RunSpec.from_yaml(config), show_progress=False)
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert by_role == {"search_document": 6, "search_query": 3}
    record = with_roles.result.record
    assert record.model.input_roles == {"gallery": "document", "queries": "query"}
    assert json.loads(record.model.details["request_roles"]) == {
        "document": "search_document", "query": "search_query"}
    assert without.result.record.model.input_roles == {"gallery": "unspecified", "queries": "unspecified"}
    # Unspecified = the proxy's default (document) for every image: the gallery comes from the
    # cache the first run filled; the queries were cached as search_query, so as documents they
    # are new to the vendor and billed (the role is part of the cache key).
    assert without.result.record.usage.billed_images == 3
    assert without.result.record.usage.cached_images == 6
