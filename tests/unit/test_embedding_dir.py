"""Embedding directories (embeddings.npy + items.parquet): `vsbench score` reads them memory-mapped
with columnar ids and labels, and scores them exactly as the same vectors in NPZ files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.evaluator.datasets.columns import inter_columns, intra_columns
from services.evaluator.precomputed import InputError, open_precomputed_inputs
from services.evaluator.stores._common import StoreError
from services.evaluator.embedding_files import PartsMatrix, read_split, write_split
from services.evaluator.stores.embedding_dir import EmbeddingDirStore


def vsbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          timeout=120)


def data(seed=0, n=400, q=60, dim=24, products=50):
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n, dim)).astype(np.float32)
    labels = [f"p{i % products}" if i % 7 else "" for i in range(n)]  # every 7th a distractor
    picks = rng.integers(0, n, q)
    picks = picks[[bool(labels[i]) for i in picks]]
    queries = gallery[picks] + 0.3 * rng.standard_normal((len(picks), dim)).astype(np.float32)
    return (gallery, [f"g{i}" for i in range(n)], labels), (queries, [f"q{i}" for i in range(len(picks))],
                                                             [labels[i] for i in picks])


def score(tmp_path, name, gallery, queries=None, *extra):
    args = ["score", "--gallery", str(gallery), "--out", str(tmp_path / f"{name}.json"), "--k", "1,5",
            "--map-k", "10", "--dataset", "d", "--model", "m", *extra]
    if queries is not None:
        args += ["--queries", str(queries)]
    done = vsbench(*args)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / f"{name}.json").read_text())
    lines = (tmp_path / f"{name}.queries.jsonl").read_text().splitlines()[1:]
    return record, [json.loads(line) for line in lines]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_directory_scores_like_the_npz_of_the_same_vectors(tmp_path, dtype):
    (g, g_ids, g_labels), (q, q_ids, q_labels) = data()
    g = g.astype(dtype).astype(np.float32)  # the NPZ holds exactly the values the directory holds
    np.savez(tmp_path / "g.npz", embeddings=g, ids=np.array(g_ids), labels=np.array(g_labels))
    np.savez(tmp_path / "q.npz", embeddings=q, ids=np.array(q_ids), labels=np.array(q_labels))
    write_split(tmp_path / "dir" / "gallery", g.astype(dtype), g_ids, g_labels)
    write_split(tmp_path / "dir" / "queries", q, q_ids, q_labels)
    from_npz, npz_rows = score(tmp_path, "npz", tmp_path / "g.npz", tmp_path / "q.npz")
    from_dir, dir_rows = score(tmp_path, "dir", tmp_path / "dir" / "gallery", tmp_path / "dir" / "queries")
    assert from_dir["metrics"] == from_npz["metrics"] and from_dir["queries"] == from_npz["queries"]
    assert from_dir["gallery"] == from_npz["gallery"]
    assert [(r["query_id"], r["top_ids"], r["top_scores"]) for r in dir_rows] == [
        (r["query_id"], r["top_ids"], r["top_scores"]) for r in npz_rows]
    assert from_dir["dataset"]["source"]["format"] == "embedding-dir"
    assert from_dir["dataset"]["source"]["embeddings_dtype"] == dtype
    assert from_dir["gallery"]["distractors"] == sum(1 for label in g_labels if not label)


def test_npz_embeddings_are_memory_mapped_unless_compressed(tmp_path):
    (g, g_ids, g_labels), _ = data()
    columns = dict(ids=np.array(g_ids), labels=np.array(g_labels))
    np.savez(tmp_path / "stored.npz", embeddings=g, **columns)
    np.savez_compressed(tmp_path / "deflated.npz", embeddings=g, **columns)
    np.savez(tmp_path / "fortran.npz", embeddings=np.asfortranarray(g.astype(np.float16)), **columns)
    stored = read_split(tmp_path / "stored.npz", "gallery")
    assert isinstance(stored.vectors, np.memmap) and not stored.vectors.flags.writeable
    np.testing.assert_array_equal(stored.vectors, g)
    assert stored.ids.to_pylist() == g_ids and stored.labels.to_pylist() == g_labels
    deflated = read_split(tmp_path / "deflated.npz", "gallery")
    assert not isinstance(deflated.vectors, np.memmap)
    np.testing.assert_array_equal(deflated.vectors, g)
    fortran = read_split(tmp_path / "fortran.npz", "gallery")
    assert isinstance(fortran.vectors, np.memmap) and fortran.vectors.dtype == np.float16
    np.testing.assert_array_equal(fortran.vectors, g.astype(np.float16))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((tmp_path / "stored.npz").read_bytes()[:-200])
    with pytest.raises(StoreError, match="not a readable .npz"):
        read_split(truncated, "gallery")


def test_intra_directory_and_defaults_from_the_folder_name(tmp_path):
    (g, g_ids, g_labels), _ = data(seed=1)
    write_split(tmp_path / "catalog" / "gallery", g, g_ids, g_labels, fingerprint="fp-1", model="m1")
    np.savez(tmp_path / "g.npz", embeddings=g, ids=np.array(g_ids), labels=np.array(g_labels))
    inputs = open_precomputed_inputs(tmp_path / "catalog" / "gallery", None)
    assert inputs.dataset.name == "catalog" and inputs.client.info().fingerprint == "fp-1"
    assert inputs.client.info().name == "m1"
    from_npz, npz_rows = score(tmp_path, "npz", tmp_path / "g.npz")
    from_dir, dir_rows = score(tmp_path, "dir", tmp_path / "catalog" / "gallery")
    assert from_dir["metrics"] == from_npz["metrics"] and from_dir["queries"]["total"] == sum(map(bool, g_labels))
    assert [r["top_ids"] for r in dir_rows] == [r["top_ids"] for r in npz_rows]
    assert all(r["query_id"] not in r["top_ids"] for r in dir_rows)  # self-match removed


def test_bad_directories_are_named(tmp_path):
    (g, g_ids, g_labels), _ = data(n=20, q=0)
    good = tmp_path / "good"
    write_split(good, g, g_ids, g_labels)

    def broken(name, edit):
        target = tmp_path / name
        write_split(target, g, g_ids, g_labels)
        edit(target)
        with pytest.raises(InputError) as caught:
            open_precomputed_inputs(target, None)
        return str(caught.value)

    assert "lacks items.parquet" in broken("no-items", lambda d: (d / "items.parquet").unlink())
    assert "lacks column(s) label" in broken("no-label", lambda d: pq.write_table(
        pa.table({"id": g_ids}), d / "items.parquet"))
    assert "mismatched lengths: 20 embeddings, 19 ids" in broken("short", lambda d: pq.write_table(
        pa.table({"id": g_ids[:19], "label": g_labels[:19]}), d / "items.parquet"))
    assert "duplicate id 'g0' at rows 0 and 3" in broken("dup", lambda d: pq.write_table(
        pa.table({"id": ["g0", "g1", "g2", "g0"] + g_ids[4:], "label": g_labels}), d / "items.parquet"))
    assert "float16 or float32" in broken("f64", lambda d: np.save(d / "embeddings.npy", g.astype(np.float64)))
    assert "not a readable .npy" in broken("junk", lambda d: (d / "embeddings.npy").write_bytes(b"junk"))
    # A zero row is found while searching, named by its row and id, and nothing is written.
    zero = g.copy()
    zero[11] = 0
    write_split(tmp_path / "zero", zero, g_ids, g_labels)
    done = vsbench("score", "--gallery", str(tmp_path / "zero"), "--out", str(tmp_path / "r.json"))
    assert done.returncode != 0 and "gallery row 11 (id 'g11') is a zero vector" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


def test_null_labels_are_distractors(tmp_path):
    (g, g_ids, g_labels), (q, q_ids, q_labels) = data(n=30, q=10)
    write_split(tmp_path / "g", g, g_ids, g_labels)
    pq.write_table(pa.table({"id": g_ids, "label": [lab or None for lab in g_labels]}), tmp_path / "g" / "items.parquet")
    write_split(tmp_path / "q", q, q_ids, q_labels)
    inputs = open_precomputed_inputs(tmp_path / "g", tmp_path / "q")
    assert inputs.dataset.counts()["distractors"] == sum(1 for label in g_labels if not label)


def test_columns_cost_well_under_60_mb_per_million_items():
    """The issue's budget: <= 60 MB of ids and labels per 1M gallery items (ILIAS-like ids)."""
    n = 200_000
    ids = pa.array([f"distractors/{i % 1000:03d}/{i:09d}.jpg" for i in range(n)])  # 30 characters
    labels = pa.array([f"product_{i % 5000}" if i % 10 == 0 else "" for i in range(n)])
    columns = intra_columns(ids, labels)
    per_million = columns.nbytes() * (1_000_000 / n)
    assert per_million <= 60e6, per_million
    inter = inter_columns(ids, labels, pa.array(["q1", "q2"]), pa.array(["product_0", "nowhere"]))
    assert inter.query_codes[1] >= 0 and inter.query_codes[1] not in set(inter.gallery_codes.tolist())
    assert inter.query_products() == ["product_0", "nowhere"]


def test_store_merges_rewrites_and_resumes_after_final_files(tmp_path):
    out = tmp_path / "emb"
    store = EmbeddingDirStore(out, dtype="float16", model="m")
    store.ensure_collection("d__m", 4, "fp")
    rows = np.eye(4, dtype=np.float32)
    store.upsert("d__m", ["a", "b"], rows[:2], [{"product_id": "A", "split": "gallery", "dataset": "d"}] * 2)
    store.upsert("d__m", ["q"], rows[2:3], [{"product_id": "A", "split": "query", "dataset": "d"}])
    store.upsert("d__m", ["a"], rows[3:4], [{"product_id": "A2", "split": "gallery", "dataset": "d"}])  # replaces
    store.close()
    assert not (out / ".partial").exists()
    items = pq.read_table(out / "gallery" / "items.parquet")
    assert items.column("id").to_pylist() == ["b", "a"] and items.column("label").to_pylist() == ["A", "A2"]
    assert items.schema.metadata[b"vsbench.fingerprint"] == b"fp" and items.schema.metadata[b"vsbench.model"] == b"m"
    matrix = np.load(out / "gallery" / "embeddings.npy")
    assert matrix.dtype == np.float16 and np.array_equal(matrix, rows[[1, 3]].astype(np.float16))
    assert pq.read_table(out / "queries" / "items.parquet").column("id").to_pylist() == ["q"]
    # Reopened: the final files plus new chunks merge into new final files.
    again = EmbeddingDirStore(out, dtype="float16")
    again.ensure_collection("d__m", 4, "fp")
    assert again.existing_ids("d__m", ["a", "b", "c", "q"]) == {"a", "b", "q"}
    again.upsert("d__m", ["c"], rows[:1], [{"product_id": "C", "split": "gallery"}])
    again.close()
    assert pq.read_table(out / "gallery" / "items.parquet").column("id").to_pylist() == ["b", "a", "c"]
    from services.evaluator.stores._common import FingerprintMismatch

    with pytest.raises(FingerprintMismatch):
        EmbeddingDirStore(out).ensure_collection("d__m", 4, "other")


def test_an_existing_per_query_file_is_refused_in_one_line(tmp_path):
    (g, g_ids, g_labels), _ = data(n=30, q=0)
    write_split(tmp_path / "g", g, g_ids, g_labels)
    (tmp_path / "r.queries.jsonl").write_text("{}\n")
    done = vsbench("score", "--gallery", str(tmp_path / "g"), "--out", str(tmp_path / "r.json"))
    assert done.returncode != 0 and "r.queries.jsonl already exists" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ---- parts: part-*/ subdirectories read as one split ------------------------------------------
def _write_parts(root, g, ids, labels, sizes, dtype=np.float16, fingerprint="fp"):
    start = 0
    for index, size in enumerate(sizes):
        write_split(root / f"part-{index:05d}", g[start : start + size].astype(dtype), ids[start : start + size],
                    labels[start : start + size], fingerprint=fingerprint)
        start += size


def test_parts_read_as_one_split_memory_mapped_per_part(tmp_path):
    (g, g_ids, g_labels), _ = data(n=100, q=0, dim=8)
    # name order, not creation order: part-00010 comes after part-00002
    _write_parts(tmp_path / "g", g, g_ids, g_labels, [30, 1, 40])
    (tmp_path / "g" / "part-00002").rename(tmp_path / "g" / "part-00010")
    write_split(tmp_path / "g" / "part-00002", g[71:].astype(np.float16), g_ids[71:], g_labels[71:], fingerprint="fp")
    (tmp_path / "g" / "part-00002").rename(tmp_path / "g" / "part-00005")
    split = read_split(tmp_path / "g", "gallery")
    want = g[list(range(31)) + list(range(71, 100)) + list(range(31, 71))].astype(np.float16)
    want_ids = g_ids[:31] + g_ids[71:] + g_ids[31:71]
    m = split.vectors
    assert isinstance(m, PartsMatrix) and split.parts == 4 and m.shape == (100, 8) and m.dtype == np.float16
    assert split.ids.to_pylist() == want_ids and split.fingerprint == "fp"
    # slices within a part are views of its memmap; across parts a copy of just those rows
    inside = m[35:50]
    assert isinstance(inside, np.memmap) and np.array_equal(inside, want[35:50])
    for a, b in [(0, 100), (25, 33), (30, 31), (29, 61), (99, 120), (50, 50)]:
        assert np.array_equal(m[a:b], want[a:b])
    assert np.array_equal(m[::7], want[::7]) and np.array_equal(m[-1], want[-1]) and np.array_equal(m[31], want[31])
    rows = np.array([99, 0, 30, 30, 31, 60, -2])
    assert np.array_equal(m[rows], want[rows]) and np.array_equal(m[want[:, 0] > 0], want[want[:, 0] > 0])
    with pytest.raises(IndexError):
        m[np.array([100])]
    blocks = list(m.blocks(20, 90, rows=16))
    assert np.array_equal(np.concatenate(blocks), want[20:90]) and max(b.shape[0] for b in blocks) <= 16
    assert all(isinstance(b, np.memmap) for b in blocks)
    # the store's matrix() streams a block per part, in split order
    store = EmbeddingDirStore.reader(split)
    stored = store.matrix("c", split.ids)
    assert stored.stored.all() and [b.shape[0] for b in stored.blocks()] == [30, 1, 29, 40]
    assert np.array_equal(np.concatenate(list(stored.blocks())), want)


def test_parts_score_like_one_directory(tmp_path):
    (g, g_ids, g_labels), (q, q_ids, q_labels) = data(seed=4, n=300, q=40)
    write_split(tmp_path / "one" / "gallery", g.astype(np.float16), g_ids, g_labels)
    write_split(tmp_path / "one" / "queries", q, q_ids, q_labels)
    _write_parts(tmp_path / "parts" / "gallery", g, g_ids, g_labels, [100, 150, 50], fingerprint="")
    _write_parts(tmp_path / "parts" / "queries", q, q_ids, q_labels, [10, len(q_ids) - 10], dtype=np.float32,
                 fingerprint="")
    one, one_rows = score(tmp_path, "one", tmp_path / "one" / "gallery", tmp_path / "one" / "queries")
    parts, parts_rows = score(tmp_path, "parts", tmp_path / "parts" / "gallery", tmp_path / "parts" / "queries")
    assert parts["metrics"] == one["metrics"] and parts["gallery"] == one["gallery"]
    assert [(r["top_ids"], r["top_scores"]) for r in parts_rows] == [(r["top_ids"], r["top_scores"]) for r in one_rows]


def test_parts_that_disagree_are_refused_in_one_line(tmp_path):
    (g, g_ids, g_labels), _ = data(n=40, q=0, dim=8)

    def refused(name, *parts) -> str:
        for index, (rows, dtype, fingerprint, ids) in enumerate(parts):
            write_split(tmp_path / name / f"part-{index:05d}", rows.astype(dtype), ids, g_labels[: len(ids)],
                        fingerprint=fingerprint)
        with pytest.raises(StoreError) as caught:
            read_split(tmp_path / name, "gallery")
        assert "\n" not in str(caught.value)
        return str(caught.value)

    a, b = g[:20], g[20:]
    message = refused("dup2", (a, "float16", "fp", g_ids[:20]), (b, "float16", "fp", ["g5"] + g_ids[21:40]))
    assert "id 'g5' appears twice (part-00000 row 5 and part-00001 row 0)" in message
    assert "dim 4" in refused("dim", (a, "float16", "fp", g_ids[:20]), (b[:, :4], "float16", "fp", g_ids[20:]))
    assert "dtype float32" in refused("dtype", (a, "float16", "fp", g_ids[:20]), (b, "float32", "fp", g_ids[20:]))
    assert "model fingerprint other" in refused("fp", (a, "float16", "fp", g_ids[:20]), (b, "float16", "other", g_ids[20:]))
    write_split(tmp_path / "both", a, g_ids[:20], g_labels[:20])
    write_split(tmp_path / "both" / "part-00000", b, g_ids[20:], g_labels[20:])
    with pytest.raises(StoreError, match="holds both embeddings.npy and part-"):
        read_split(tmp_path / "both", "gallery")


def test_part_store_writes_its_part_and_resumes(tmp_path):
    out = tmp_path / "emb"
    rows = np.eye(4, dtype=np.float32)
    for part, ids in ((0, ["a", "b"]), (1, ["c"])):
        store = EmbeddingDirStore(out, dtype="float16", part=part)
        store.ensure_collection("d__m", 4, "fp")
        store.upsert("d__m", ids, rows[: len(ids)], [{"product_id": "A", "split": "gallery"}] * len(ids))
        if part == 0:
            store.upsert("d__m", ["q"], rows[3:], [{"product_id": "A", "split": "query"}])
        assert list((out / f".partial-part-{part:05d}").glob("chunk-*"))  # a killed pod keeps them
        store.close()
    assert sorted(p.name for p in (out / "gallery").iterdir()) == ["part-00000", "part-00001"]
    assert [p.name for p in (out / "queries").iterdir()] == ["part-00000"]
    assert read_split(out / "gallery", "gallery").ids.to_pylist() == ["a", "b", "c"]
    again = EmbeddingDirStore(out, dtype="float16", part=1)
    again.ensure_collection("d__m", 4, "fp")
    assert again.existing_ids("d__m", ["a", "c"]) == {"c"}  # its own part only
    with pytest.raises(StoreError, match="holds part-"):
        EmbeddingDirStore(out).ensure_collection("d__m", 4, "fp")
    write_split(tmp_path / "whole" / "gallery", rows, ["a", "b", "c", "d"], ["", "", "", ""])
    with pytest.raises(StoreError, match="holds a whole split"):
        EmbeddingDirStore(tmp_path / "whole", part=0).ensure_collection("d__m", 4, "fp")


def test_writing_holds_no_vectors_in_memory(tmp_path):
    """`vsbench embed --out DIR` streams: 120 MB of vectors written in 256-row upserts leave the
    writer's anonymous memory about where it started (the chunks are on disk until the merge,
    which copies one chunk at a time)."""
    script = f"""
import numpy as np
from services.evaluator.stores.embedding_dir import EmbeddingDirStore

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024

store = EmbeddingDirStore({str(tmp_path / "out")!r})
store.ensure_collection("c", 1024, "fp")
rng = np.random.default_rng(0)
batch = rng.standard_normal((256, 1024)).astype(np.float32)
store.upsert("c", [f"warm{{i}}" for i in range(256)], batch, [{{"split": "gallery"}}] * 256)
before = anon()
for b in range(1, 118):
    ids = [f"g{{b}}-{{i}}" for i in range(256)]
    store.upsert("c", ids, batch + b, [{{"product_id": "p", "split": "gallery"}}] * 256)  # a new array each time
during = anon()
store.close()
# Arrow's allocator keeps ~10 MiB of what the merge freed; hand it back, so what is measured is
# what the store holds (27-29 MiB otherwise, too near the 29 MiB bound: a flaky test).
import pyarrow as pa
pa.default_memory_pool().release_unused()
print(before, during, anon())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, during, after = map(int, done.stdout.split())
    written = 117 * 256 * 1024 * 4  # 117 MiB
    assert during - before < written / 4, (before, during)
    assert after - before < written / 4, (before, after)
    assert np.load(tmp_path / "out" / "gallery" / "embeddings.npy", mmap_mode="r").shape == (118 * 256, 1024)
