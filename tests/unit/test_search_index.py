"""Pure parts of the search index: product grouping, the accept rule, metadata round trips, and
what counts as Qdrant being unreachable."""

from __future__ import annotations

import socket

import pytest

from services.search.index import (
    CatalogIndexError,
    CollectionMeta,
    IndexedHit,
    IndexParams,
    decide,
    group_by_product,
    open_index,
)


def hit(image: str, product: str, score: float) -> IndexedHit:
    return IndexedHit(image_id=image, product_id=product, location=f"{image}.jpg", score=score)


def test_grouping_keeps_each_products_best_image_in_score_order():
    hits = [hit("a1", "A", 0.9), hit("a2", "A", 0.8), hit("b1", "B", 0.7), hit("d1", "", 0.6),
            hit("d2", "", 0.5), hit("c1", "C", 0.4)]
    assert [h.image_id for h in group_by_product(hits, 10)] == ["a1", "b1", "d1", "d2", "c1"]
    assert [h.image_id for h in group_by_product(hits, 2)] == ["a1", "b1"]
    assert group_by_product([], 3) == []


def test_accept_only_above_the_threshold():
    assert decide(0.51, 0.5) is True
    assert decide(0.5, 0.5) is False  # the open-set analysis accepts s > t
    assert decide(0.1, None) is True  # no threshold: every answer accepted
    assert decide(None, 0.5) is False  # nothing found (an empty filter result)


def test_metadata_round_trips_and_refuses_foreign_metadata():
    meta = CollectionMeta(fingerprint="sha256:ab", model={"name": "m"}, dim=3,
                          params=IndexParams(m=8, ef_construct=64, quantization="binary"), threshold=0.25,
                          threshold_source="run /r.json", dataset={"name": "d"})
    assert CollectionMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(CatalogIndexError, match="not a vsbench search collection"):
        CollectionMeta.from_dict({"dim": 3})


@pytest.mark.parametrize("params", [dict(quantization="product"), dict(m=-1), dict(ef_construct=2),
                                    dict(indexing_threshold_kb=-5), dict(full_scan_threshold_kb=0)])
def test_bad_index_parameters_are_refused(params):
    with pytest.raises(CatalogIndexError):
        IndexParams(**params)


def test_exactly_one_backend():
    with pytest.raises(CatalogIndexError, match="exactly one"):
        open_index("c")
    with pytest.raises(CatalogIndexError, match="exactly one"):
        open_index("c", store="/tmp/x", qdrant_url="http://localhost:6333")


def test_a_dead_qdrant_server_is_unavailable_after_the_retry_budget():
    from services.search.index import IndexUnavailable
    from services.search.server_index import ServerCatalogIndex

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = ServerCatalogIndex("catalog", url=f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01)
    try:
        with pytest.raises(IndexUnavailable, match="after 2 retries"):
            index.meta()
    finally:
        index.close()


# -- a Qdrant cluster's distribution parameters (tests/fakes/qdrant_rest.py: local mode drops them,
# so they are read off the create_collection request qdrant-client sends) -----------------------
def _meta() -> CollectionMeta:
    return CollectionMeta(fingerprint="sha256:ab", model={"name": "m"}, dim=4, params=IndexParams())


def test_a_server_collection_is_created_with_the_distribution_asked():
    from tests.fakes.qdrant_rest import RecordingQdrant

    with RecordingQdrant() as qdrant:
        index = open_index("catalog", qdrant_url=qdrant.url,
                           distribution={"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 1})
        index.create(_meta())
        index.close()
        again = open_index("catalog", qdrant_url=qdrant.url, distribution={"shard_number": 6})
        assert again.meta() == _meta()  # the same distribution: served as it is
        again.close()
        other = open_index("catalog", qdrant_url=qdrant.url, distribution={"replication_factor": 3})
        with pytest.raises(CatalogIndexError, match="has replication_factor 2, asked for 3"):
            other.meta()
        other.close()
        plain = open_index("plain", qdrant_url=qdrant.url)
        plain.create(_meta())
        plain.close()
    body = qdrant.created["catalog"]
    assert (body["shard_number"], body["replication_factor"], body["write_consistency_factor"]) == (6, 2, 1)
    assert body["hnsw_config"]["m"] == 16, "the index parameters travel in the same request"
    assert not {"shard_number", "replication_factor", "write_consistency_factor"} & set(qdrant.created["plain"])
    assert qdrant.unexpected == []


def test_distribution_is_refused_without_a_cluster(tmp_path):
    with pytest.raises(CatalogIndexError, match="--shard-number, --replication-factor: Qdrant Edge is one process"):
        open_index("c", store=tmp_path / "edge", distribution={"shard_number": 4, "replication_factor": 2})
    with pytest.raises(CatalogIndexError, match="shard_number: qdrant-client's local mode has no shards"):
        open_index("c", qdrant_location=":memory:", distribution={"shard_number": 4})
    with pytest.raises(CatalogIndexError, match="write_consistency_factor 3 exceeds replication_factor 2"):
        open_index("c", qdrant_url="http://127.0.0.1:9", distribution={"replication_factor": 2, "write_consistency_factor": 3})
    assert not (tmp_path / "edge").exists()


def test_index_flags_reach_the_index(tmp_path):
    """`vsbench index --shard-number` on Qdrant Edge: refused in one line, naming the flag, before
    any embedder is called (none listens at the address given)."""
    import subprocess
    import sys

    manifest = tmp_path / "catalog.csv"
    manifest.write_text("image_id,location,product_id,split\na,a.jpg,p,gallery\n")
    done = subprocess.run(
        [sys.executable, "-m", "services.evaluator.cli", "index", "--collection", "c", "--catalog", str(manifest),
         "--embedder", "127.0.0.1:9", "--store", str(tmp_path / "edge"), "--shard-number", "4"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --shard-number: Qdrant Edge is one process"), done.stderr
    zero = subprocess.run(
        [sys.executable, "-m", "services.evaluator.cli", "index", "--collection", "c", "--catalog", str(manifest),
         "--embedder", "127.0.0.1:9", "--qdrant-url", "http://127.0.0.1:9", "--replication-factor", "0"],
        capture_output=True, text=True, timeout=120)
    assert zero.returncode == 2 and "--replication-factor" in zero.stderr
