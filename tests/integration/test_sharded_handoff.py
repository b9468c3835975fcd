"""The cluster hand-off end to end, as separate processes: embedding directories written in parts
(`vsbench embed --part i/N`, one pod each) -> `vsbench search-shard` over the concatenated gallery
-> `vsbench search-merge` -> `vsbench score --ranked`, which must equal plain `vsbench score` of
the same files (metrics and every query's ranked ids), ties across shard boundaries included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.evaluator.embedding_files import part_dirs, read_split, write_split
from services.evaluator.servers import embedder_process
from services.evaluator.sharded_search import Shard
from tests.fakes.images import write_product_folder

ROOT = Path(__file__).resolve().parents[2]


def vsbench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "services.evaluator.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def search_sharded(tmp_path: Path, gallery: Path, queries: Path | None, count: int, k: int) -> Path:
    """N search-shard processes at once (as an Indexed Job's pods), then the merge: topk.npz."""
    (tmp_path / "parts").mkdir()
    extra = [] if queries is None else ["--queries", queries]
    shards = [_start(tmp_path, "search-shard", "--gallery", gallery, *extra, "--shard", f"{i}/{count}", "--k", k,
                     "--out", tmp_path / "parts" / f"part-{i:05d}.npz", "--engine", "numpy") for i in range(count)]
    for process in shards:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    merged = vsbench(tmp_path, "search-merge", tmp_path / "parts", "--out", tmp_path / "topk.npz")
    assert merged.returncode == 0, merged.stderr
    return tmp_path / "topk.npz"


def score(tmp_path: Path, name: str, gallery: Path, queries: Path | None, *extra) -> tuple[dict, list[dict]]:
    args = ["score", "--gallery", gallery, "--out", tmp_path / f"{name}.json", "--k", "1,5", "--map-k", "10",
            "--dataset", "d", "--model", "m", "--engine", "numpy", *extra]
    done = vsbench(tmp_path, *args, *([] if queries is None else ["--queries", queries]))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / f"{name}.json").read_text())
    lines = (tmp_path / f"{name}.queries.jsonl").read_text().splitlines()[1:]
    return record, [json.loads(line) for line in lines]


def assert_same_scoring(ranked: tuple[dict, list[dict]], plain: tuple[dict, list[dict]], shards: int) -> None:
    (r, r_rows), (p, p_rows) = ranked, plain
    assert r["metrics"] == p["metrics"]
    assert r["queries"] == p["queries"] and r["gallery"] == p["gallery"]
    assert [(x["query_id"], x["top_ids"], x["top_scores"]) for x in r_rows] == [
        (x["query_id"], x["top_ids"], x["top_scores"]) for x in p_rows]
    assert r["protocol"]["search"].startswith(f"exact sharded search merged from {shards} shard files")
    assert p["protocol"]["search"].startswith("exact blocked matmul")


def tied_parts(root: Path, parts=(70, 1, 95, 64), dim=16, n_queries=40, intra_labels=False):
    """Integer-valued vectors with four +-1 entries (norm 2, so the normalised dot products are
    exact multiples of 1/4 whatever the summation order: equal scores are real ties), written as
    gallery parts, with copies of rows on both sides of every 3-shard boundary of the
    concatenated gallery."""
    rng = np.random.default_rng(3)
    n = sum(parts)

    def vectors(rows):
        out = np.zeros((rows, dim), dtype=np.float32)
        for row in range(rows):
            out[row, rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        return out

    gallery = vectors(n)
    for shard in range(1, 3):
        boundary = Shard(shard, 3).bounds(n)[0]
        gallery[boundary - 2 : boundary + 2] = gallery[boundary - 1]
        gallery[boundary + 5] = gallery[3]
    labels = [f"p{i % 30}" if i % 5 else "" for i in range(n)]
    ids = [f"g{i:04d}" for i in range(n)]
    start = 0
    for index, size in enumerate(parts):
        write_split(root / "gallery" / f"part-{index:05d}", gallery[start : start + size].astype(np.float16),
                    ids[start : start + size], labels[start : start + size], fingerprint="fp")
        start += size
    queries = vectors(n_queries)
    q_labels = [f"p{i % 30}" for i in range(n_queries)]
    write_split(root / "queries" / "part-00000", queries[:25], [f"q{i}" for i in range(25)], q_labels[:25],
                fingerprint="fp")
    write_split(root / "queries" / "part-00001", queries[25:], [f"q{i}" for i in range(25, n_queries)],
                q_labels[25:], fingerprint="fp")
    return gallery, queries


def test_ranked_inter_scoring_over_parts_equals_plain_score_with_ties(tmp_path):
    gallery, queries = tied_parts(tmp_path / "emb")
    split = read_split(tmp_path / "emb" / "gallery", "gallery")
    assert split.parts == 4 and split.vectors.shape == gallery.shape
    topk = search_sharded(tmp_path, tmp_path / "emb" / "gallery", tmp_path / "emb" / "queries", 3, 10)
    ranked = score(tmp_path, "ranked", tmp_path / "emb" / "gallery", tmp_path / "emb" / "queries", "--ranked", topk)
    plain = score(tmp_path, "plain", tmp_path / "emb" / "gallery", tmp_path / "emb" / "queries")
    assert_same_scoring(ranked, plain, 3)
    # the case that matters happens: a query's 10th score ties with rows in another shard
    with np.load(topk) as data:
        scores = data["scores"]
    bounds = [Shard(i, 3).bounds(len(gallery)) for i in range(3)]
    shard_of = lambda position: next(i for i, (a, b) in enumerate(bounds) if a <= position < b)  # noqa: E731
    normed = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    all_scores = normed @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    straddling = 0
    for row in range(len(queries)):
        tied = np.flatnonzero(all_scores[row] == scores[row, -1])
        straddling += len({shard_of(int(p)) for p in tied}) > 1
    assert straddling > 0


def test_ranked_intra_scoring_over_parts_equals_plain_score(tmp_path):
    """Without --queries both sides are intra retrieval: the labelled gallery rows query the rest,
    each excluding itself, so the shard files' exclusion matches the score stage's."""
    tied_parts(tmp_path / "emb")
    topk = search_sharded(tmp_path, tmp_path / "emb" / "gallery", None, 3, 12)
    ranked = score(tmp_path, "ranked", tmp_path / "emb" / "gallery", None, "--ranked", topk)
    plain = score(tmp_path, "plain", tmp_path / "emb" / "gallery", None)
    assert ranked[0]["protocol"]["setup"] == "intra"
    assert_same_scoring(ranked, plain, 3)


def test_ranked_refuses_a_ranking_of_other_files_or_too_shallow(tmp_path):
    tied_parts(tmp_path / "emb")
    gallery, queries = tmp_path / "emb" / "gallery", tmp_path / "emb" / "queries"
    topk = search_sharded(tmp_path, gallery, queries, 2, 5)

    def refused(*args) -> str:
        done = vsbench(tmp_path, "score", "--gallery", gallery, "--out", tmp_path / "r.json", "--engine", "numpy",
                       *args)
        assert done.returncode != 0 and not (tmp_path / "r.json").exists()
        assert "Traceback" not in done.stderr
        return done.stderr.strip()

    assert "holds the top 5 per query; scoring needs 10" in refused("--queries", queries, "--ranked", topk,
                                                                      "--map-k", "10")
    # intra over the same gallery: other queries than the ranking was computed from
    assert "other queries" in refused("--ranked", topk, "--map-k", "5")
    # a gallery missing a part is another gallery
    write_split(tmp_path / "g2" / "part-00000", np.eye(16, dtype=np.float16)[:3], ["a", "b", "c"], ["x", "x", "y"],
                fingerprint="fp")
    done = vsbench(tmp_path, "score", "--gallery", tmp_path / "g2", "--queries", queries, "--ranked", topk,
                   "--map-k", "5", "--out", tmp_path / "r.json")
    assert done.returncode != 0 and "ranks a 230 x 16 gallery; this gallery is 3 x 16" in done.stderr
    # a ranking of raw .npy inputs does not say what `vsbench score` would rank
    np.save(tmp_path / "Q.npy", np.eye(16, dtype=np.float32)[:4])
    np.save(tmp_path / "G.npy", np.eye(16, dtype=np.float32))
    assert vsbench(tmp_path, "search-shard", "--queries", "Q.npy", "--gallery", "G.npy", "--shard", "0/1", "--k", "5",
                   "--out", "raw-part.npz").returncode == 0
    assert vsbench(tmp_path, "search-merge", "raw-part.npz", "--out", "raw.npz").returncode == 0
    assert "ranks raw dot products" in refused("--queries", queries, "--ranked", tmp_path / "raw.npz", "--map-k", "5")
    # mixing a directory and an .npy is refused in one line
    done = vsbench(tmp_path, "search-shard", "--queries", "Q.npy", "--gallery", gallery, "--shard", "0/1", "--k", "5",
                   "--out", "mixed.npz")
    assert done.returncode != 0 and "embedding directory too" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_product_folder(root, products=8, seed=11, size=40, folder="part{}", image="{}.jpg", quality=90)
    return root


def test_embed_in_parts_then_sharded_search_then_ranked_score(tmp_path, folder):
    """The whole cluster path on real images through a real embedder: 3 embed pods, 2 search
    pods, the merge, the score; equal to embedding in one go and scoring plainly."""
    out = tmp_path / "search"
    with embedder_process("histogram") as server:
        for i in range(3):
            done = vsbench(tmp_path, "embed", "--server", server.address, "--images", folder, "--out", out,
                           "--part", f"{i}/3", "--dtype", "float16", "--quiet")
            assert done.returncode == 0, done.stderr
        # a rerun of a finished pod embeds nothing (resume from what is there)
        again = vsbench(tmp_path, "embed", "--server", server.address, "--images", folder, "--out", out,
                        "--part", "1/3", "--dtype", "float16", "--quiet")
        assert again.returncode == 0 and "embedded 0," in again.stdout + again.stderr
        whole = vsbench(tmp_path, "embed", "--server", server.address, "--images", folder, "--out", tmp_path / "whole",
                        "--dtype", "float16", "--quiet")
        assert whole.returncode == 0, whole.stderr
        refused = vsbench(tmp_path, "embed", "--server", server.address, "--images", folder, "--out",
                          tmp_path / "e.npz", "--part", "0/2")
        assert refused.returncode != 0 and "embedding directory" in refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "e.npz").exists()
        mixed = vsbench(tmp_path, "embed", "--server", server.address, "--images", folder, "--out", out, "--quiet")
        assert mixed.returncode != 0 and "part-*/" in mixed.stderr and "Traceback" not in mixed.stderr
    assert [p.name for p in part_dirs(out / "gallery")] == ["part-00000", "part-00001", "part-00002"]
    gallery = read_split(out / "gallery", "gallery")
    queries = read_split(out / "queries", "queries")
    assert len(gallery.ids) == 24 and len(queries.ids) == 8 and gallery.vectors.dtype == np.float16
    # the parts hold what one embed holds, in another row order
    single = read_split(tmp_path / "whole" / "gallery", "gallery")
    order = {image_id: row for row, image_id in enumerate(single.ids.to_pylist())}
    rows = [order[i] for i in gallery.ids.to_pylist()]
    np.testing.assert_array_equal(gallery.vectors[0:24], np.asarray(single.vectors)[rows])

    topk = search_sharded(tmp_path, out / "gallery", out / "queries", 2, 10)
    ranked = score(tmp_path, "ranked", out / "gallery", out / "queries", "--ranked", topk)
    plain = score(tmp_path, "plain", out / "gallery", out / "queries")
    assert_same_scoring(ranked, plain, 2)
    assert ranked[0]["metrics"]["recall@1"] > 50
