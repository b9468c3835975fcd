"""When everything goes wrong the user gets a record and one clear line, and nothing paid for is
lost: a run in which no image gets a vector, a bad manifest, and `vsbench embed` cut off by an
outage then resumed (issue: hold up under hostile input, items 4 and 5)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.datasets.registry import load_dataset
from services.evaluator.pipeline import Evaluation, EvaluationOptions
from services.evaluator.servers import embedder_process
from services.evaluator.stores.embedding_dir import EmbeddingDirStore
from services.evaluator.stores.npz import NpzStore
from tests.fakes.images import write_product_folder


def vsbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_folder(root, products=6):
    write_product_folder(root, products=products, seed=5)
    return root


def test_run_where_every_image_fails_writes_a_failed_record_and_exits_nonzero(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,location,product_id,split\n"
                        + "".join(f"g{i},missing/g{i}.jpg,p{i % 2},gallery\n" for i in range(4)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "results_dir": "results", "store": {"kind": "qdrant-edge", "path": "store"},
        "datasets": [{"name": "ghost", "format": "manifest", "path": str(manifest)}],
        "models": [{"name": "histogram", "inprocess": True}],
    }))
    done = vsbench("run", str(config), "--quiet")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: 1 of 1 runs failed (see above); stored vectors are kept"
    ]
    (path,) = (tmp_path / "results" / "ghost" / "histogram").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "no gallery image of ghost has a stored vector" in record["failure"]
    assert record["missing_images"] == ["g0", "g1", "g2", "g3"] and record["metrics"] == {}
    assert record["gallery"]["missing_files"] == 4
    # the failed record is listed, not scored, by `table`
    table = vsbench("table", str(tmp_path / "results"))
    assert table.returncode == 2 and "no vsbench run records with metrics" in table.stderr


def test_embed_with_a_bad_manifest_is_one_line(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,location,product_id,split\na,a.jpg,p,gallery\na,b.jpg,p,gallery\n")
    done = vsbench("embed", "--server", "127.0.0.1:1", "--images", str(manifest), "--out", str(tmp_path / "e.npz"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "duplicate image id 'a'" in lines[0]


class CountingClient:
    """The real client, counting what each image cost; kills the server after `kill_after`."""

    def __init__(self, inner, server=None, kill_after=-1):
        self.inner, self.server, self.kill_after = inner, server, kill_after
        self.delivered = Counter()

    def info(self):
        return self.inner.info()

    def embed(self, items, usage=None, role=None):
        for embedding in self.inner.embed(items, usage, role):
            self.delivered[embedding.id] += 1
            if self.server is not None and sum(self.delivered.values()) == self.kill_after:
                self.server.kill()
            yield embedding

    def close(self):
        self.inner.close()


def _written_ids(out: Path) -> dict[str, list[str]]:
    """The ids per split in what `embed_to_files` wrote (NPZ files or an embedding directory)."""
    if out.suffix == ".npz":
        parts = {"gallery": out, "queries": out.with_name(out.stem + ".queries.npz")}
        return {k: np.load(p)["ids"].tolist() for k, p in parts.items() if p.exists()}
    return {k: pq.read_table(out / k / "items.parquet").column("id").to_pylist()
            for k in ("gallery", "queries") if (out / k / "items.parquet").exists()}


@pytest.mark.parametrize("out_name", ["emb.npz", "emb-dir"])
def test_embed_keeps_what_arrived_through_an_outage_and_resumes(tmp_path, out_name):
    """The embedding files are a VectorStore like the others: a service that dies for good leaves
    its vectors in chunk files; the rerun embeds only the rest and writes the complete files, which
    `vsbench score` reads (NPZ, or an embedding directory written streaming in float16)."""
    dataset = load_dataset("folder", make_folder(tmp_path / "ds"), name="ds")
    out = tmp_path / out_name
    open_files = (lambda: NpzStore.single(out)) if out.suffix == ".npz" else (
        lambda: EmbeddingDirStore(out, dtype="float16"))
    port = free_port()
    server = embedder_process("histogram", "--port", str(port), "--max-batch", "4").start()
    first = CountingClient(GrpcEmbeddingClient(f"127.0.0.1:{port}", batch_size=4, max_in_flight=1,
                                               backoff_s=0.05, max_retries=2), server, kill_after=8)
    store = open_files()
    try:
        report = Evaluation(store, tmp_path, EvaluationOptions(show_progress=False)).run(
            dataset, first, "ds", score=False).report
    finally:
        first.close()
        server.stop()
    assert report.failure and "UNAVAILABLE" in report.failure
    kept = report.embedded
    assert kept >= 8 and kept < len(dataset.records)
    assert list((out.parent / (out.stem + ".partial") if out.suffix == ".npz" else out / ".partial").glob("chunk-*"))
    store.close()  # merges what arrived into the final files: nothing is lost
    assert sum(len(ids) for ids in _written_ids(out).values()) == kept

    with embedder_process("histogram") as again:
        second = CountingClient(GrpcEmbeddingClient(again.address))
        store = open_files()
        report = Evaluation(store, tmp_path, EvaluationOptions(show_progress=False)).run(
            dataset, second, "ds", score=False).report
        second.close()
        store.close()
    assert report.already_stored == kept and report.embedded == len(dataset.records) - kept
    assert not set(first.delivered) & set(second.delivered)  # nothing paid for twice
    written = _written_ids(out)
    assert sorted(written["gallery"] + written["queries"]) == sorted(r.image_id for r in dataset.records)
    if out.suffix == ".npz":
        splits = [str(out), str(tmp_path / "emb.queries.npz")]
    else:
        splits = [str(out / "gallery"), str(out / "queries")]
        assert np.load(out / "gallery" / "embeddings.npy", mmap_mode="r").dtype == np.float16
    done = vsbench("score", "--gallery", splits[0], "--queries", splits[1], "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["queries"]["scored"] == 6
