"""Sharded exact search: `vsbench search-shard` run as separate processes, then `vsbench
search-merge`, gives exactly the single-process exact_topk (ids and scores), including equal scores
straddling shard boundaries and the intra self-match exclusion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.evaluator.search import exact_topk
from services.evaluator.sharded_search import Shard, ShardError, merge_shards, search_shard, write_npz

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    # the engine calibration cache goes to the test's folder, never the user's
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.evaluator.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=tmp_path)


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _tied_data(n_gallery: int, count: int, dim: int = 12, n_queries: int = 60):
    """Integer vectors (exact float32 dot products, so equal scores are real ties), with copies of
    rows placed on both sides of every shard boundary."""
    rng = np.random.default_rng(11)
    gallery = rng.integers(-2, 3, (n_gallery, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, (n_queries, dim)).astype(np.float32)
    for shard in range(1, count):
        boundary = Shard(shard, count).bounds(n_gallery)[0]
        gallery[boundary - 2 : boundary + 2] = gallery[boundary - 1]
        gallery[boundary + 5] = gallery[3]
    return queries, gallery


def _run_sharded(tmp_path: Path, queries, gallery, count: int, k: int, exclude=None, engine="numpy", dtype=np.float32):
    np.save(tmp_path / "Q.npy", queries.astype(dtype))
    np.save(tmp_path / "G.npy", gallery.astype(dtype))
    extra = []
    if exclude is not None:
        np.save(tmp_path / "exclude.npy", exclude)
        extra = ["--exclude", str(tmp_path / "exclude.npy")]
    shards = [
        _start(tmp_path, "search-shard", "--queries", "Q.npy", "--gallery", "G.npy", "--shard", f"{i}/{count}",
               "--k", str(k), "--out", f"part-{i}.npz", "--engine", engine, *extra)
        for i in range(count)
    ]  # all N run at once, as the pods of an Indexed Job do
    for process in shards:
        result = _finish(process)
        assert result.returncode == 0, result.stderr
    parts = sorted(str(p.name) for p in tmp_path.glob("part-*.npz"))
    assert len(parts) == count
    merged = _finish(_start(tmp_path, "search-merge", *parts[::-1], "--out", "topk.npz"))
    assert merged.returncode == 0, merged.stderr
    with np.load(tmp_path / "topk.npz") as data:
        return data["indices"], data["scores"]


@pytest.mark.parametrize("count,k", [(3, 25), (4, 1), (5, 200)])
def test_shards_as_processes_equal_single_process_search_with_ties(tmp_path, count, k):
    queries, gallery = _tied_data(1500, count)
    indices, scores = _run_sharded(tmp_path, queries, gallery, count, k)
    single = exact_topk(queries, gallery, k, engine="numpy")
    assert indices.shape == (len(queries), k)
    np.testing.assert_array_equal(indices, single.indices)
    np.testing.assert_array_equal(scores, single.scores)
    # the case that matters happens: the k-th score ties with rows in another shard, and the
    # lower gallery position wins the cut-off
    full = queries @ gallery.T
    shard_of_row = np.searchsorted([Shard(i, count).bounds(len(gallery))[1] for i in range(count)],
                                   np.arange(len(gallery)), side="right")
    cut = scores[:, -1]
    across = [q for q in range(len(queries)) if len(set(shard_of_row[full[q] == cut[q]])) > 1]
    assert across, "no tie at the cut-off spans shards: the data does not test the merge"
    for q in across:
        tied_rows = np.flatnonzero(full[q] == cut[q])
        chosen = indices[q][scores[q] == cut[q]]
        np.testing.assert_array_equal(chosen, tied_rows[: chosen.size])


def test_intra_self_match_exclusion_across_shards(tmp_path):
    _, gallery = _tied_data(900, 3)
    positions = np.arange(0, 900, 17)  # queries are gallery images, spread over every shard
    queries = gallery[positions]
    exclude = positions.copy()
    exclude[::4] = -1  # some queries have nothing to exclude
    indices, scores = _run_sharded(tmp_path, queries, gallery, 3, 40, exclude=exclude, engine="torch")
    single = exact_topk(queries, gallery, 40, exclude=exclude, engine="numpy")
    np.testing.assert_array_equal(indices, single.indices)
    np.testing.assert_array_equal(scores, single.scores)
    kept = exclude >= 0
    assert not (indices[kept] == exclude[kept, None]).any()


def test_float16_gallery_random_data_and_more_shards_than_k_needs(tmp_path):
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((700, 32)).astype(np.float16)
    queries = rng.standard_normal((30, 32)).astype(np.float16)
    # 7 shards of 100 rows, k = 150: every shard is short and pads with empty slots
    indices, scores = _run_sharded(tmp_path, queries, gallery, 7, 150, dtype=np.float16)
    single = exact_topk(queries.astype(np.float32), gallery, 150, engine="numpy")
    np.testing.assert_array_equal(indices, single.indices)
    np.testing.assert_array_equal(scores, single.scores)


def test_merge_refuses_missing_repeated_or_foreign_shards(tmp_path):
    queries, gallery = _tied_data(300, 3, n_queries=8)
    parts = []
    for i in range(3):
        path = tmp_path / f"part-{i}.npz"
        write_npz(path, search_shard(queries, gallery, Shard(i, 3), 5))
        parts.append(path)
    with pytest.raises(ShardError, match="shards missing from the merge: 1/3"):
        merge_shards([parts[0], parts[2]])
    with pytest.raises(ShardError, match="shard 2/3 given twice"):
        merge_shards([parts[0], parts[1], parts[2], parts[2]])
    other = tmp_path / "other.npz"
    write_npz(other, search_shard(queries + 1, gallery, Shard(1, 3), 5))
    with pytest.raises(ShardError, match="different searches \\(queries_sha1 differs\\)"):
        merge_shards([parts[0], other, parts[2]])
    result = _finish(_start(tmp_path, "search-merge", str(parts[0]), "--out", "topk.npz"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: shards missing from the merge: 1/3, 2/3"
    assert not (tmp_path / "topk.npz").exists()


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0"])
def test_bad_shard_argument_is_one_line_error(tmp_path, text):
    np.save(tmp_path / "Q.npy", np.eye(2, dtype=np.float32))
    result = _finish(_start(tmp_path, "search-shard", "--queries", "Q.npy", "--gallery", "Q.npy", "--shard", text,
                            "--k", "1", "--out", "p.npz"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: --shard") and result.stderr.count("\n") == 1
