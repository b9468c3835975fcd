"""When everything goes wrong the user gets a record and one clear line, and nothing paid for is
lost: a run in which no image gets a vector, a bad manifest, and `vsbench embed` cut off by an
outage then resumed (issue: hold up under hostile input, items 4 and 5)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import yaml
from PIL import Image

from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.datasets.registry import load_dataset
from services.evaluator.pipeline import Evaluation, EvaluationOptions
from services.evaluator.servers import embedder_process
from services.evaluator.stores.npz import NpzStore


def vsbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_folder(root, products=6):
    rng = np.random.default_rng(5)
    for p in range(products):
        base = rng.integers(0, 256, 3)
        for split, count in (("gallery", 3), ("query", 1)):
            (root / split / f"p{p}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"p{p}" / f"{i}.png")
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


def test_embed_to_npz_keeps_what_arrived_through_an_outage_and_resumes(tmp_path):
    """The NPZ writer is a VectorStore like the others: a service that dies for good leaves its
    vectors in chunk files; the rerun embeds only the rest and writes the complete files."""
    dataset = load_dataset("folder", make_folder(tmp_path / "ds"), name="ds")
    out = tmp_path / "emb.npz"
    port = free_port()
    server = embedder_process("histogram", "--port", str(port), "--max-batch", "4").start()
    first = CountingClient(GrpcEmbeddingClient(f"127.0.0.1:{port}", batch_size=4, max_in_flight=1,
                                               backoff_s=0.05, max_retries=2), server, kill_after=8)
    store = NpzStore.single(out)
    try:
        report = Evaluation(store, tmp_path, EvaluationOptions(show_progress=False)).run(
            dataset, first, "ds", score=False).report
    finally:
        first.close()
        server.stop()
    assert report.failure and "UNAVAILABLE" in report.failure
    kept = report.embedded
    assert kept >= 8 and kept < len(dataset.records)
    store.close()  # merges what arrived into out: nothing is lost
    assert len(np.load(out)["ids"]) + (
        len(np.load(tmp_path / "emb.queries.npz")["ids"]) if (tmp_path / "emb.queries.npz").exists() else 0
    ) == kept

    with embedder_process("histogram") as again:
        second = CountingClient(GrpcEmbeddingClient(again.address))
        store = NpzStore.single(out)
        report = Evaluation(store, tmp_path, EvaluationOptions(show_progress=False)).run(
            dataset, second, "ds", score=False).report
        second.close()
        store.close()
    assert report.already_stored == kept and report.embedded == len(dataset.records) - kept
    assert not set(first.delivered) & set(second.delivered)  # nothing paid for twice
    gallery, queries = np.load(out), np.load(tmp_path / "emb.queries.npz")
    assert sorted(gallery["ids"].tolist() + queries["ids"].tolist()) == sorted(r.image_id for r in dataset.records)
    done = vsbench("score", "--gallery", str(out), "--queries", str(tmp_path / "emb.queries.npz"),
                   "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["queries"]["scored"] == 6
