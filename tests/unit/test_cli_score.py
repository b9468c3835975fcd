"""`vsbench score`: the precomputed-embeddings contract, run as users run it (the console script)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def vsbench(*args):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True)


def save(path, vectors, ids, labels):
    np.savez(path, embeddings=np.asarray(vectors, dtype=np.float32), ids=np.array(ids), labels=np.array(labels))


def test_intra_scoring_writes_results_and_per_query_file(tmp_path):
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((20, 32))
    vectors = np.repeat(centers, 3, axis=0) + 0.05 * rng.standard_normal((60, 32))
    labels = [f"p{i // 3}" for i in range(60)]
    save(tmp_path / "g.npz", vectors, [f"img{i}" for i in range(60)], labels)
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"] == {"recall@1": 100.0, "recall@5": 100.0, "map@20": 100.0}
    assert result["queries"] == {"total": 60, "scored": 60, "unanswerable": 0, "failed_to_embed": 0,
                                 "missing_files": 0}
    assert result["protocol"]["setup"] == "intra"
    assert result["schema"] == "vsbench.run-record/v2" and result["status"] == "ok"
    assert result["dataset"]["name"] == "g" and result["model"]["name"] == "g"  # defaults: the file name
    lines = (tmp_path / "r.queries.jsonl").read_text().splitlines()
    assert len(lines) == 61  # header + one per query
    first = json.loads(lines[1])
    assert first["query_id"] == "img0" and first["first_relevant_rank"] == 1 and "img0" not in first["top_ids"]


def test_inter_scoring_with_custom_k(tmp_path):
    save(tmp_path / "g.npz", [[1, 0], [0, 1], [0.9, 0.1]], ["a", "b", "d"], ["A", "B", ""])
    save(tmp_path / "q.npz", [[1, 0.05], [0.05, 1]], ["qa", "qb"], ["A", "B"])
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--queries", str(tmp_path / "q.npz"),
                   "--k", "1,2", "--map-k", "3", "--out", str(tmp_path / "out" / "r.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "r.json").read_text())
    assert set(result["metrics"]) == {"recall@1", "recall@2", "map@3"}
    assert result["metrics"]["recall@1"] == 100.0


@pytest.mark.parametrize(
    "gallery, queries, expected",
    [
        (([[1, 0], [0, 1]], ["a", "b"], ["A"]), None, "mismatched lengths"),
        (([[1, 0], [np.inf, 1]], ["a", "b"], ["A", "A"]), None, "row 1 (id 'b') has NaN or inf"),
        (([[1, 0], [0, 0]], ["a", "b"], ["A", "A"]), None, "row 1 (id 'b') is a zero vector"),
        (([[1, 0], [0, 1]], ["a", "a"], ["A", "A"]), None, "duplicate id 'a' at rows 0 and 1"),
        (([[1, 0], [0, 1]], ["a", "b"], ["A", "A"]), ([[1, 0, 0]], ["q"], ["A"]), "dimension mismatch"),
        (([[1, 0], [0, 1]], ["a", "b"], ["A", "A"]), ([[1, 0]], ["q"], [""]), "query with an empty label"),
        # Regression: a query id also in the gallery was silently its own relevant top-1 match.
        (([[1, 0], [0, 1]], ["a", "b"], ["A", "A"]), ([[1, 0]], ["a"], ["A"]), "id 'a' is also a gallery id"),
    ],
)
def test_bad_input_exits_nonzero_with_one_clear_line(tmp_path, gallery, queries, expected):
    save(tmp_path / "g.npz", *gallery)
    args = ["score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "r.json")]
    if queries:
        save(tmp_path / "q.npz", *queries)
        args += ["--queries", str(tmp_path / "q.npz")]
    done = vsbench(*args)
    assert done.returncode != 0
    assert expected in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "r.json").exists()


def test_missing_npz_key_is_named(tmp_path):
    np.savez(tmp_path / "g.npz", embeddings=np.eye(2, dtype=np.float32), ids=np.array(["a", "b"]))
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "r.json"))
    assert done.returncode != 0 and "lacks key(s) labels" in done.stderr


def test_score_ilias_official_features_streams_distractors(tmp_path):
    import h5py

    def write(path, ids, vectors):
        with h5py.File(path, "w") as handle:
            handle.create_dataset("index", data=ids, dtype=h5py.string_dtype(encoding="ascii"))
            handle.create_dataset("features", data=np.asarray(vectors, dtype=np.float16))

    # object A: query at 0 deg, positives at 10 and 80 deg; object B: query 180, positive 170;
    # distractors at 5 deg (beats A's positives) and 270 deg.
    def at(*deg):
        r = np.deg2rad(deg)
        return np.stack([np.cos(r), np.sin(r)], axis=1)

    write(tmp_path / "features_image_queries.hdf5", ["a_000/query/Q000_00.jpg", "b_001/query/Q001_00.jpg"], at(0, 180))
    write(tmp_path / "features_positives.hdf5", ["a_000/pos/P000_00.jpg", "a_000/pos/P000_01.jpg",
                                                  "b_001/pos/P001_00.jpg"], at(10, 80, 170))
    write(tmp_path / "features_distractors_00000.hdf5", ["yfcc100m_000000.tar/1", "yfcc100m_000000.tar/2"], at(5, 270))
    done = vsbench("score-ilias", str(tmp_path), "--protocol", "vsbench", "--k", "1", "--map-k", "2",
                   "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    # query A ranks: distractor(5), P0(10), P1(80): R@1 0, AP@2 = (1/2)/2; query B: P(170) first: R@1 1, AP@2 1
    assert result["metrics"]["recall@1"] == 50.0
    assert result["metrics"]["map@2"] == pytest.approx(100 * (0.25 + 1.0) / 2)
    assert result["gallery"] == {"total": 5, "indexed": 5, "distractors": 2, "failed_to_embed": 0, "missing_files": 0,
                                 "listed_positives": None, "listed_positives_missing": None}


def test_unknown_engine_is_refused_not_silently_replaced(tmp_path):
    # Regression: --engine foo ran numpy and wrote "(foo)" as the search engine into the results.
    save(tmp_path / "g.npz", [[1, 0], [0, 1]], ["a", "b"], ["A", "A"])
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "r.json"),
                   "--engine", "foo")
    assert done.returncode == 2 and "--engine takes auto, torch or numpy" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_score_output_is_a_run_record_that_table_and_report_read(tmp_path):
    """Regression: `vsbench score --out d/run.json; vsbench table d` said "no vsbench result files"."""
    import jsonschema

    from services.evaluator.record import SCHEMA_FILE

    save(tmp_path / "g.npz", [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], ["a", "b", "c", "d"], ["A", "A", "C", "C"])
    done = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--dataset", "toy", "--model", "m1",
                   "--out", str(tmp_path / "d" / "run.json"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "d" / "run.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA_FILE.read_text()))
    assert (record["dataset"]["name"], record["model"]["name"]) == ("toy", "m1")
    table = vsbench("table", str(tmp_path / "d"))
    assert table.returncode == 0, table.stderr
    assert "m1" in table.stdout and "100.0" in table.stdout
    report = vsbench("report", str(tmp_path / "d"), "--out", str(tmp_path / "site"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    # an existing record is never overwritten
    again = vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "d" / "run.json"))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_older_result_files_get_one_line_each(tmp_path):
    save(tmp_path / "g.npz", [[1, 0], [0.9, 0.1]], ["a", "b"], ["A", "A"])
    assert vsbench("score", "--gallery", str(tmp_path / "g.npz"), "--out", str(tmp_path / "d" / "new.json")).returncode == 0
    (tmp_path / "d" / "old.json").write_text(json.dumps({"schema": "vsbench.score/v1", "metrics": {}}))
    (tmp_path / "d" / "unrelated.json").write_text(json.dumps({"hello": 1}))
    table = vsbench("table", str(tmp_path / "d"))
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "old.json" in lines[0] and "older vsbench (schema vsbench.score/v1)" in lines[0]


def test_console_script_lets_openblas_threads_sleep_unless_told_otherwise(monkeypatch):
    """`vsbench` sets OPENBLAS_THREAD_TIMEOUT before numpy loads (polling BLAS threads slowed the
    search's selection); a value the user set is kept."""
    import services.evaluator.cli as cli

    seen = []
    monkeypatch.setattr(cli, "app", lambda: seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT")))
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    cli.main()
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "12")
    cli.main()
    assert seen == ["4", "12"]
