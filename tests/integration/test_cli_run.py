"""The CLI as users drive it: `vsbench run` (gRPC and in-process models), `embed` + `score`,
`table` and `report`, on a small real-image dataset."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.evaluator.results import load_results, read_query_outcomes
from services.evaluator.servers import embedder_process
from tests.fakes.images import write_product_folder


def vsbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    write_product_folder(root, products=8, seed=11, per_split=(("gallery", 2), ("query", 1)), size=40,
                         folder="part{}", image="{}.jpg", quality=90)
    return root


def test_run_config_with_grpc_and_inprocess_models_then_table_and_report(tmp_path, folder):
    with embedder_process("histogram") as server:
        config = {
            "results_dir": "results",
            "store": {"kind": "qdrant-edge", "path": "store"},
            "k": [1, 3],
            "map_k": [5],
            "datasets": [{"name": "parts", "format": "folder", "path": str(folder), "group": "private"}],
            "models": [
                {"name": "histogram", "server": server.address},
                {"name": "efficientnet-lite0", "inprocess": True},
            ],
        }
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        done = vsbench("run", str(tmp_path / "run.yaml"), "--quiet")
    assert done.returncode == 0, done.stderr
    runs = {r.model: r for r in load_results(tmp_path / "results")}
    assert set(runs) == {"histogram", "efficientnet-lite0"}
    for run in runs.values():
        assert set(run.metrics) == {"recall@1", "recall@3", "map@5"}
        assert run.data["dataset"]["source"]["group"] == "private"
        outcomes = list(read_query_outcomes(run.per_query_path()))
        assert len(outcomes) == 8
        assert 100 * np.mean([0 < o.first_relevant_rank <= 3 for o in outcomes]) == pytest.approx(
            run.metrics["recall@3"])
    assert runs["efficientnet-lite0"].data["model"]["backend"] != runs["histogram"].data["model"]["backend"]

    table = vsbench("table", str(tmp_path / "results"), "--format", "csv")
    assert table.returncode == 0, table.stderr
    assert "histogram" in table.stdout and "efficientnet-lite0" in table.stdout

    site = vsbench("report", str(tmp_path / "results"), "--out", str(tmp_path / "site"))
    assert site.returncode == 0, site.stderr
    index = (tmp_path / "site" / "index.html").read_text()
    assert "efficientnet-lite0" in index
    thumbs = list((tmp_path / "site").rglob("*.jpg"))
    assert thumbs and all(t.stat().st_size < 20_000 for t in thumbs)  # small generated files


def test_embed_then_score_compose(tmp_path, folder):
    with embedder_process("histogram") as server:
        done = vsbench("embed", "--server", server.address, "--images", str(folder), "--out",
                       str(tmp_path / "parts.npz"), "--quiet")
    assert done.returncode == 0, done.stderr
    # an inter dataset: gallery and queries in two files, so scoring keeps the protocol
    gallery, queries = np.load(tmp_path / "parts.npz"), np.load(tmp_path / "parts.queries.npz")
    assert gallery["embeddings"].shape[0] == 16 and gallery["embeddings"].dtype == np.float32
    assert queries["embeddings"].shape[0] == 8
    assert not set(gallery["ids"].tolist()) & set(queries["ids"].tolist())
    assert sorted(set(gallery["labels"].tolist())) == [f"part{p}" for p in range(8)]
    assert "vsbench score --gallery" in done.stderr
    scored = vsbench("score", "--gallery", str(tmp_path / "parts.npz"), "--queries", str(tmp_path / "parts.queries.npz"),
                     "--out", str(tmp_path / "r.json"))
    assert scored.returncode == 0, scored.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["protocol"]["setup"] == "inter"
    assert result["queries"]["total"] == 8 and result["metrics"]["recall@1"] > 50


def test_embed_plain_folder_is_one_unlabelled_file(tmp_path, folder):
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, path in enumerate(sorted((folder / "gallery").rglob("*.jpg"))[:5]):
        (plain / f"{i}.jpg").write_bytes(path.read_bytes())
    with embedder_process("histogram") as server:
        done = vsbench("embed", "--server", server.address, "--images", str(plain), "--out", str(tmp_path / "p.npz"))
    assert done.returncode == 0, done.stderr
    data = np.load(tmp_path / "p.npz")
    assert data["ids"].tolist() == [f"{i}.jpg" for i in range(5)] and set(data["labels"].tolist()) == {""}
    assert not (tmp_path / "p.queries.npz").exists()


def test_bad_config_is_one_clear_error(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({
        "datasets": [{"name": "x", "format": "folder", "path": "."}],
        "models": [{"name": "m", "server": "localhost:1", "inprocess": True}],
    }))
    done = vsbench("run", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2
    assert "give exactly one of `server: host:port` or `inprocess: true`" in done.stderr


@pytest.mark.parametrize(
    "config_text, expected",
    [
        ("datasets: [\n  bad", "expected ',' or ']'"),  # malformed YAML
        ("datasets:\n  - {name: d, format: manifest, path: nope.csv}\nmodels:\n  - {name: m, server: '127.0.0.1:1'}\n",
         "manifest file not found"),
        ("datasets:\n  - {name: d, format: nosuch, path: x}\nmodels:\n  - {name: m, server: '127.0.0.1:1'}\n",
         "unknown dataset format 'nosuch'"),
    ],
)
def test_bad_yaml_or_dataset_is_one_clear_error_line(tmp_path, config_text, expected):
    # Regression: these ended in a Python traceback instead of one `error:` line.
    (tmp_path / "c.yaml").write_text(config_text)
    done = vsbench("run", str(tmp_path / "c.yaml"), "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr


def test_search_override_and_unanswerable_flag(tmp_path, folder):
    config = {
        "results_dir": "results", "store": {"kind": "qdrant-edge", "path": "store"},
        "datasets": [{"name": "parts", "format": "folder", "path": str(folder)}],
        "models": [{"name": "histogram", "inprocess": True}],
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = vsbench("run", str(tmp_path / "run.yaml"), "--quiet", "--search", "qdrant", "--unanswerable-as-miss")
    assert done.returncode == 0, done.stderr
    (run,) = load_results(tmp_path / "results")
    assert run.data["protocol"]["search"].startswith("Qdrant exact search")
    assert run.data["protocol"]["unanswerable"] == "scored as misses"
    bad = vsbench("run", str(tmp_path / "run.yaml"), "--search", "annoy")
    assert bad.returncode == 2 and "search" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
