"""One contract for every VectorStore: Qdrant Edge (the real engine in-process) and the qdrant-client
code path used for a Qdrant server, run against qdrant-client's local mode as the stand-in (no
Qdrant server binary can be installed here)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from services.evaluator.search import exact_topk
from services.evaluator.stores._common import FingerprintMismatch, StoreError
from services.evaluator.stores.base import point_id
from services.evaluator.stores.embedding_dir import EmbeddingDirStore
from services.evaluator.stores.registry import STORES, open_store

COLL = "sop__toy-model"
STORE_KINDS = {
    "edge": lambda tmp: open_store("qdrant-edge", path=tmp / "edge"),
    "npz": lambda tmp: open_store("npz", path=tmp / "npz"),
    # One collection per directory (as `vsbench embed --out DIR` uses it), whatever its name.
    "dir": lambda tmp: EmbeddingDirStore(tmp / "dir"),
    "client-memory": lambda tmp: open_store("qdrant-local", location=":memory:"),
}
REOPENABLE = {
    "edge": lambda tmp: open_store("qdrant-edge", path=tmp / "edge"),
    "npz": lambda tmp: open_store("npz", path=tmp / "npz"),
    "dir": lambda tmp: EmbeddingDirStore(tmp / "dir"),
    "client-path": lambda tmp: open_store("qdrant-local", path=tmp / "client"),
}


@pytest.fixture(params=sorted(STORE_KINDS))
def store(request, tmp_path):
    s = STORE_KINDS[request.param](tmp_path)
    yield s
    s.close()


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def payloads(ids, split="gallery"):
    return [{"product_id": f"p{i[-2:]}", "split": split, "dataset": "sop", "model": "toy-model"} for i in ids]


def fill(store, n=40, dim=8, seed=0, split="gallery", prefix="g"):
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    vectors = unit_rows(np.random.default_rng(seed), n, dim)
    store.ensure_collection(COLL, dim)
    store.upsert(COLL, ids, vectors, payloads(ids, split))
    return ids, vectors


def test_upsert_is_idempotent_and_replaces(store):
    ids, vectors = fill(store)
    assert store.count(COLL) == len(ids)
    store.upsert(COLL, ids, vectors, payloads(ids))
    assert store.count(COLL) == len(ids)
    changed = unit_rows(np.random.default_rng(9), 5, vectors.shape[1])
    store.upsert(COLL, ids[:5], changed, payloads(ids[:5]))
    assert store.count(COLL) == len(ids)
    (block,) = store.fetch(COLL, ids[:5])
    np.testing.assert_array_equal(block.vectors, changed)
    store.ensure_collection(COLL, vectors.shape[1])  # again, same dim: a no-op
    assert store.count(COLL) == len(ids)


def test_existing_ids(store):
    ids, _ = fill(store, n=10)
    asked = ids[3:7] + ["never-stored", "g9999"]
    assert store.existing_ids(COLL, asked) == set(ids[3:7])
    assert store.existing_ids(COLL, []) == set()


def test_fetch_keeps_requested_order_in_blocks(store):
    ids, vectors = fill(store, n=10)
    asked = [ids[7], "missing-a", ids[2], ids[9], ids[0], "missing-b", ids[5]]
    blocks = list(store.fetch(COLL, asked, batch_size=3))
    assert [b.image_ids for b in blocks] == [[ids[7], ids[2]], [ids[9], ids[0]], [ids[5]]]
    got = np.concatenate([b.vectors for b in blocks])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vectors[[7, 2, 9, 0, 5]])  # float32 round-trips exactly
    payload = blocks[0].payloads[0]
    assert payload == {
        "image_id": ids[7],
        "product_id": "p07",
        "split": "gallery",
        "dataset": "sop",
        "model": "toy-model",
    }


def test_dim_mismatch_is_a_clear_error_and_writes_nothing(store):
    ids, _ = fill(store, n=6, dim=8)
    with pytest.raises(ValueError, match="8-d vectors, asked for 16-d"):
        store.ensure_collection(COLL, 16)
    with pytest.raises(ValueError, match="dim 16 does not match"):
        store.upsert(COLL, ["x1"], np.ones((1, 16), np.float32), payloads(["x1"]))
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        store.search_exact(COLL, np.ones((2, 16), np.float32), 3)
    assert store.count(COLL) == len(ids)


def test_bad_batches_are_rejected_whole(store):
    ids, vectors = fill(store, n=6)
    new = ["n1", "n2"]
    bad_nan = vectors[:2].copy()
    bad_nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        store.upsert(COLL, new, bad_nan, payloads(new))
    with pytest.raises(ValueError, match="counts must match"):
        store.upsert(COLL, new, vectors[:3], payloads(new))
    with pytest.raises(ValueError, match="payload image_id"):
        store.upsert(COLL, new, vectors[:2], [{"image_id": "other"}, {}])
    with pytest.raises(ValueError, match="duplicate image ids"):
        store.upsert(COLL, ["n1", "n1"], vectors[:2], payloads(new))
    assert store.count(COLL) == len(ids) and store.existing_ids(COLL, new) == set()


def test_unknown_and_unsafe_collection_names(store):
    with pytest.raises(ValueError, match="does not exist"):
        store.count("no_such_collection")
    with pytest.raises(ValueError, match="not usable"):
        store.ensure_collection("../escape", 8)


def test_split_filter(store):
    g_ids, _ = fill(store, n=30, split="gallery", prefix="g", seed=1)
    q_ids, q_vecs = fill(store, n=12, split="query", prefix="q", seed=2)
    hits = store.search_exact(COLL, q_vecs, 5, split="gallery")
    assert all(h.image_id in set(g_ids) for ranked in hits for h in ranked)
    assert all(len(ranked) == 5 for ranked in hits)
    own = store.search_exact(COLL, q_vecs, 1, split="query")
    assert [r[0].image_id for r in own] == q_ids  # each query finds itself among query images
    whole = store.search_exact(COLL, q_vecs, 1, split=None)
    assert [r[0].image_id for r in whole] == q_ids


def test_self_match_exclusion(store):
    ids, vectors = fill(store, n=25)
    plain = store.search_exact(COLL, vectors[:6], 3)
    assert [r[0].image_id for r in plain] == ids[:6]
    assert plain[0][0].score == pytest.approx(1.0, abs=1e-5)
    excluded = store.search_exact(COLL, vectors[:6], 3, exclude_ids=ids[:5] + [None])
    for row, ranked in enumerate(excluded[:5]):
        assert ids[row] not in [h.image_id for h in ranked]
        assert [h.image_id for h in ranked] == [h.image_id for h in plain[row][1:]] + [ranked[-1].image_id]
    assert excluded[5][0].image_id == ids[5]  # None: nothing excluded
    # k larger than the split: every other gallery image, none missing, none twice.
    everything = store.search_exact(COLL, vectors[:1], 100, exclude_ids=[ids[0]])[0]
    assert sorted(h.image_id for h in everything) == ids[1:]


def test_parity_with_exact_topk_and_brute_force(store):
    """--search qdrant (search_exact) and --search matmul (exact_topk over vectors read back)
    give the same ranked ids. Random float data has no exact ties; the fixed seed is checked to
    keep every adjacent pair in the top k+1 more than 1e-5 apart, so float rounding differences
    between Qdrant's SIMD dot and BLAS cannot swap ranks."""
    n, dim, n_q, k = 2000, 64, 50, 10
    rng = np.random.default_rng(1234)
    gallery = unit_rows(rng, n, dim)
    ids = [f"img{i:05d}" for i in range(n)]
    store.ensure_collection(COLL, dim)
    store.upsert(COLL, ids, gallery, payloads(ids))
    queries = np.concatenate([gallery[:25], unit_rows(rng, n_q - 25, dim)])
    exclude = np.array(list(range(25)) + [-1] * (n_q - 25))

    scores64 = queries.astype(np.float64) @ gallery.astype(np.float64).T
    scores64[np.arange(25), exclude[:25]] = -np.inf
    brute = np.argsort(-scores64, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores64, np.argsort(-scores64, axis=1)[:, : k + 1], 1)
    assert (np.abs(np.diff(top, axis=1)) > 1e-5).all(), "seed gives near-ties; pick another"

    read_back = np.concatenate([b.vectors for b in store.fetch(COLL, ids, batch_size=512)])
    hits = store.search_exact(COLL, queries, k, exclude_ids=[ids[e] if e >= 0 else None for e in exclude])
    got = np.array([[int(h.image_id[3:]) for h in ranked] for ranked in hits])
    got_scores = np.array([[h.score for h in ranked] for ranked in hits])
    np.testing.assert_array_equal(got, brute)
    np.testing.assert_allclose(got_scores, np.take_along_axis(scores64, brute, 1), atol=1e-5)
    for engine in ("torch", "numpy"):
        matmul = exact_topk(queries, read_back, k, exclude=exclude, engine=engine)
        np.testing.assert_array_equal(matmul.indices, got)


def test_ties_follow_the_protocol_rule(store):
    """Integer-valued vectors make many exact ties (dot products of small integers are exact in
    float32). Qdrant itself orders ties arbitrarily; the store must give score desc, then
    tie_order (gallery position) asc, exactly as exact_topk does, and image id asc by default."""
    n, dim, k = 300, 4, 7
    rng = np.random.default_rng(5)
    gallery = rng.integers(-1, 2, size=(n, dim)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(20, dim)).astype(np.float32)
    queries[0] = 0  # every score 0: one tie group spanning the whole gallery
    ids = [f"id{(i * 7919) % 1000:04d}" for i in range(n)]  # id order != gallery order
    position = {image_id: i for i, image_id in enumerate(ids)}
    store.ensure_collection(COLL, dim)
    store.upsert(COLL, ids, gallery, payloads(ids))
    exclude = np.array([3, -1, 10] + [-1] * 17)
    ex_ids = [ids[e] if e >= 0 else None for e in exclude]

    ref = exact_topk(queries, gallery, k, exclude=exclude, engine="numpy")
    scores = queries @ gallery.T
    scores[[0, 2], exclude[[0, 2]]] = -np.inf
    brute = np.lexsort((np.arange(n)[None, :].repeat(len(queries), 0), -scores), axis=1)[:, :k]
    np.testing.assert_array_equal(ref.indices, brute)
    by_position = store.search_exact(COLL, queries, k, exclude_ids=ex_ids, tie_order=position)
    np.testing.assert_array_equal(np.array([[position[h.image_id] for h in r] for r in by_position]), brute)

    id_rank = np.argsort(np.argsort(np.array(ids)))
    by_id = np.lexsort((id_rank[None, :].repeat(len(queries), 0), -scores), axis=1)[:, :k]
    default = store.search_exact(COLL, queries, k, exclude_ids=ex_ids)
    np.testing.assert_array_equal(np.array([[position[h.image_id] for h in r] for r in default]), by_id)


@pytest.mark.parametrize("kind", sorted(REOPENABLE))
def test_reopened_store_keeps_its_points(kind, tmp_path):
    first = REOPENABLE[kind](tmp_path)
    ids, vectors = fill(first, n=20)
    first.close()
    again = REOPENABLE[kind](tmp_path)
    try:
        assert again.count(COLL) == 20
        assert again.existing_ids(COLL, ids + ["zzz"]) == set(ids)
        np.testing.assert_array_equal(np.concatenate([b.vectors for b in again.fetch(COLL, ids)]), vectors)
        again.ensure_collection(COLL, 8)
        with pytest.raises(ValueError, match="holds 8-d"):
            again.ensure_collection(COLL, 9)
    finally:
        again.close()


def test_edge_collection_open_twice_is_a_clear_error(tmp_path):
    first = open_store("qdrant-edge", path=tmp_path / "edge")
    fill(first, n=3)
    second = open_store("qdrant-edge", path=tmp_path / "edge")
    try:
        with pytest.raises(ValueError, match="open in another process or store"):
            second.count(COLL)
    finally:
        second.close()
        first.close()
    reopened = open_store("qdrant-edge", path=tmp_path / "edge")
    assert reopened.count(COLL) == 3
    reopened.close()


def test_edge_store_resumes_after_a_killed_process(tmp_path):
    """The embedding run is killed mid-way (no close, no flush): a new process sees every point
    whose upsert returned (Qdrant Edge's write-ahead log), so the rerun only embeds the rest."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from services.evaluator.stores.registry import open_store
        s = open_store("qdrant-edge", path={str(tmp_path / "edge")!r})
        s.ensure_collection({COLL!r}, 8)
        ids = [f"g{{i:04d}}" for i in range(30)]
        v = np.eye(8, dtype=np.float32)[np.arange(30) % 8]
        s.upsert({COLL!r}, ids, v, [{{"split": "gallery"}}] * 30)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    store = open_store("qdrant-edge", path=tmp_path / "edge")
    try:
        assert store.count(COLL) == 30
        assert store.existing_ids(COLL, [f"g{i:04d}" for i in range(40)]) == {f"g{i:04d}" for i in range(30)}
    finally:
        store.close()


def test_point_ids_never_change():
    """Resuming relies on the same image id mapping to the same point id in every release."""
    assert point_id("img-1") == "ec107b70-4a7e-50ee-9bba-fd6ca496d0b8"


def test_registry_lists_kinds_on_error():
    assert set(STORES) == {"npz", "qdrant-edge", "qdrant-server", "qdrant-local"}
    with pytest.raises(ValueError, match="npz, qdrant-edge, qdrant-local, qdrant-server"):
        open_store("faiss")
    with pytest.raises(ValueError, match="needs url"):
        open_store("qdrant-server")


def test_server_store_sends_the_env_api_key_and_never_shows_it(monkeypatch, caplog):
    """A loopback HTTP server answering in Qdrant's REST format records what the store sends."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from services.evaluator.stores.qdrant_server import QdrantServerStore

    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("api-key")))
            result = {"result": {"exists": False}, "status": "ok", "time": 0.0}
            body = json.dumps(result).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key-value")
    caplog.set_level("DEBUG")
    try:
        with pytest.warns(UserWarning, match="insecure connection"):
            store = QdrantServerStore(
                url=f"http://127.0.0.1:{server.server_address[1]}", check_compatibility=False
            )
        with pytest.raises(ValueError, match="does not exist on http://127.0.0.1"):
            store.count("sop__m")
        store.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/collections/sop__m/exists", "s3cret-key-value")]
    assert "s3cret" not in repr(store) and "s3cret" not in caplog.text


FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64


def test_collections_record_their_fingerprint(store):
    """A collection remembers which model made its vectors; another model under the same name is
    refused with both fingerprints named, and --reembed's drop_collection starts afresh."""
    assert store.collection_fingerprint(COLL) is None
    store.ensure_collection(COLL, 8, FP_A)
    store.upsert(COLL, ["g1"], unit_rows(np.random.default_rng(0), 1, 8), payloads(["g1"]))
    assert store.collection_fingerprint(COLL) == FP_A
    store.ensure_collection(COLL, 8, FP_A)  # same model: fine
    with pytest.raises(FingerprintMismatch, match="sha256:aaaaaaaaaaaa.*sha256:bbbbbbbbbbbb.*--reembed") as err:
        store.ensure_collection(COLL, 8, FP_B)
    assert (err.value.stored, err.value.served) == (FP_A, FP_B)
    assert store.count(COLL) == 1  # nothing touched
    store.drop_collection(COLL)
    assert store.collection_fingerprint(COLL) is None
    store.ensure_collection(COLL, 8, FP_B)
    assert store.collection_fingerprint(COLL) == FP_B and store.count(COLL) == 0
    store.drop_collection("never_made")  # absent: no error


@pytest.mark.parametrize("kind", sorted(REOPENABLE))
def test_fingerprint_survives_reopening(kind, tmp_path):
    first = REOPENABLE[kind](tmp_path)
    first.ensure_collection(COLL, 8, FP_A)
    first.upsert(COLL, ["g1"], unit_rows(np.random.default_rng(0), 1, 8), payloads(["g1"]))
    first.close()
    again = REOPENABLE[kind](tmp_path)
    try:
        assert again.collection_fingerprint(COLL) == FP_A
        with pytest.raises(FingerprintMismatch):
            again.ensure_collection(COLL, 8, FP_B)
    finally:
        again.close()


def test_npz_store_writes_the_score_format_and_resumes_from_chunks(tmp_path):
    """`vsbench embed` output: gallery and query splits in two NPZ files `vsbench score` reads;
    a process killed before close() leaves chunks that a rerun picks up."""
    from services.evaluator.stores.npz import NpzStore

    out = tmp_path / "emb.npz"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from services.evaluator.stores.npz import NpzStore
        s = NpzStore.single({str(out)!r})
        s.ensure_collection("any", 4, {FP_A!r})
        s.upsert("any", ["g1", "g2"], np.eye(4, dtype=np.float32)[:2],
                 [{{"split": "gallery", "product_id": "p1"}}, {{"split": "gallery", "product_id": ""}}])
        s.upsert("any", ["q1"], np.eye(4, dtype=np.float32)[2:3], [{{"split": "query", "product_id": "p1"}}])
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert not out.exists()  # never merged: only chunks
    store = NpzStore.single(out)
    assert store.existing_ids("any", ["g1", "g2", "q1", "x"]) == {"g1", "g2", "q1"}
    store.ensure_collection("any", 4, FP_A)
    store.upsert("any", ["q2"], np.eye(4, dtype=np.float32)[3:4], [{"split": "query", "product_id": "p2"}])
    store.close()
    gallery, queries = np.load(out), np.load(tmp_path / "emb.queries.npz")
    assert gallery["ids"].tolist() == ["g1", "g2"] and gallery["labels"].tolist() == ["p1", ""]
    assert queries["ids"].tolist() == ["q1", "q2"] and queries["labels"].tolist() == ["p1", "p2"]
    assert str(gallery["fingerprint"]) == FP_A
    np.testing.assert_array_equal(queries["embeddings"], np.eye(4, dtype=np.float32)[2:4])
    assert not (tmp_path / "emb.partial").exists()


# -- a Qdrant cluster's distribution parameters ------------------------------------------------
# qdrant-client's local mode drops shard_number / replication_factor / write_consistency_factor
# (get_collection reports None), so these tests read them off the create_collection request the
# client sends to a loopback server (tests/fakes/qdrant_rest.py).
DISTRIBUTION = {"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2}
NOBODY = "http://127.0.0.1:9"  # never connected to: these are refused before the client is made


def _server_store(url, **options):
    from services.evaluator.stores.qdrant_server import QdrantServerStore

    return QdrantServerStore(url=url, check_compatibility=False, **options)


def test_server_store_creates_collections_with_the_distribution_asked():
    from tests.fakes.qdrant_rest import RecordingQdrant

    with RecordingQdrant() as qdrant:
        store = _server_store(qdrant.url, **DISTRIBUTION)
        store.ensure_collection(COLL, 8, FP_A)
        store.ensure_collection(COLL, 8, FP_A)  # existing, same distribution: fine
        params = store.client.get_collection(COLL).config.params
        store.close()
        plain = _server_store(qdrant.url)
        plain.ensure_collection("sop__other", 8, FP_A)
        plain.ensure_collection(COLL, 8, FP_A)  # nothing asked: an existing collection is not checked
        plain.close()
        other = _server_store(qdrant.url, shard_number=4)
        with pytest.raises(StoreError, match=r"has shard_number 6, asked for 4"):
            other.ensure_collection(COLL, 8, FP_A)
        other.close()
    body = qdrant.created[COLL]
    assert {k: body.get(k) for k in DISTRIBUTION} == DISTRIBUTION
    assert body["vectors"] == {"size": 8, "distance": "Dot"}
    assert (params.shard_number, params.replication_factor, params.write_consistency_factor) == (6, 2, 2)
    assert not set(DISTRIBUTION) & set(qdrant.created["sop__other"]), "left out: the server's defaults"
    assert qdrant.unexpected == []


def test_a_run_config_store_entry_reaches_create_collection(tmp_path):
    from services.evaluator.config import StoreEntry
    from services.evaluator.runner import open_vector_store
    from tests.fakes.qdrant_rest import RecordingQdrant

    with RecordingQdrant() as qdrant:
        entry = StoreEntry(kind="qdrant-server", url=qdrant.url, shard_number=16, replication_factor=2)
        store = open_vector_store(entry, tmp_path / "results")
        store.ensure_collection(COLL, 4, FP_A)
        store.close()
        assert qdrant.version_asked.wait(10), "the run config's store keeps qdrant-client's version check"
    body = qdrant.created[COLL]
    assert (body["shard_number"], body["replication_factor"]) == (16, 2)
    assert "write_consistency_factor" not in body


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("qdrant-local", {"location": ":memory:", "shard_number": 2},
         "shard_number: qdrant-client's local mode has no shards"),
        ("qdrant-local", {"path": "x", "replication_factor": 2}, "replication_factor: qdrant-client's local mode"),
        ("qdrant-server", {"url": NOBODY, "shard_number": 0}, "shard_number must be an integer >= 1, got 0"),
        ("qdrant-server", {"url": NOBODY, "replication_factor": True}, "replication_factor must be an integer"),
        ("qdrant-server", {"url": NOBODY, "replication_factor": 2, "write_consistency_factor": 3},
         "write_consistency_factor 3 exceeds replication_factor 2"),
    ],
)
def test_distribution_is_refused_where_it_cannot_apply(kind, options, message, tmp_path):
    """Refused before any connection or folder is made."""
    options = {k: (tmp_path / v if k == "path" else v) for k, v in options.items()}
    with pytest.raises(StoreError, match=re.escape(message)):
        open_store(kind, **options)
    assert not (tmp_path / "x").exists()
