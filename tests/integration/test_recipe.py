"""The Table 3 recipe and the commands around it: the shipped config validates and names what the
published values are keyed by; `--dry-run` lists what a run would do without calling a server;
`table --against published` prints deltas; a model defined by kind + typed options runs, and a
misspelt option is refused with the valid ones listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.evaluator.config import RunSpec
from services.evaluator.published import load_published
from tests.fakes.images import write_product_folder

REPO = Path(__file__).resolve().parents[2]


def vsbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def make_folder(root: Path, products: int = 4) -> Path:
    write_product_folder(root, products=products, seed=7, per_split=(("gallery", 2), ("query", 1)))
    return root


def test_shipped_recipe_validates_and_matches_the_published_names():
    spec = RunSpec.from_yaml(REPO / "configs" / "table3.yaml")
    published = load_published()
    published_models = {p.vsbench_model for p in published} - {""}
    assert {m.name for m in spec.models} == published_models
    assert {d.name for d in spec.datasets} == {p.dataset for p in published}
    by_name = {d.name: d for d in spec.datasets}
    assert by_name["ilias"].map_k == [20, 1000] and by_name["sop"].map_k == [20]  # K per dataset


def test_dry_run_lists_stored_and_left_to_embed_with_an_estimate(tmp_path):
    folder = make_folder(tmp_path / "parts")
    config = tmp_path / "run.yaml"
    base = {
        "results_dir": "results", "store": {"kind": "qdrant-edge", "path": "store"},
        "datasets": [{"name": "parts", "format": "folder", "path": str(folder)},
                     {"name": "ghost", "format": "sop", "path": str(tmp_path / "nowhere")}],
        "models": [{"name": "histogram", "inprocess": True}],
    }
    config.write_text(yaml.safe_dump({**base, "datasets": base["datasets"][:1]}))
    first = vsbench("run", str(config), "--quiet")
    assert first.returncode == 0, first.stderr
    (folder / "gallery" / "p0" / "9.png").write_bytes((folder / "gallery" / "p0" / "0.png").read_bytes())
    config.write_text(yaml.safe_dump(base))
    plan = vsbench("run", str(config), "--dry-run")
    assert plan.returncode == 1  # the ghost dataset cannot load: named, and the rest still listed
    text = " ".join(plan.stdout.split())
    assert "parts │ histogram │ 13 │ 0 │ 12 │ 1 │" in text
    assert "img/s" in text and "cannot load" in text and "Ebay_test.txt" in text
    assert "1 images to embed" in " ".join(plan.stderr.split())
    assert len(list((tmp_path / "results").rglob("*.json"))) == 1  # nothing ran


def test_table_against_published_prints_deltas_and_flags(tmp_path):
    from services.evaluator.record import SCHEMA_ID, RunRecord
    from services.evaluator.results import write_run

    write_run(tmp_path, RunRecord.model_validate({
        "schema": SCHEMA_ID, "run_id": "20260101T000000Z-000001", "created": "2026-01-01T00:00:00+00:00",
        "dataset": {"name": "SOP", "setup": "intra", "gallery_type": "closed"},
        "model": {"name": "dinov2-large", "dim": 1024},
        "metrics": {"recall@1": 56.0, "recall@5": 60.0, "map@50": 10.0},
    }))
    done = vsbench("table", str(tmp_path), "--against", "published")
    assert done.returncode == 0, done.stderr
    lines = {line.split("|")[3].strip(): line for line in done.stdout.splitlines() if line.startswith("| dinov2")}
    assert "| 56.00 | 56.30 | -0.30 |  |" in lines["recall@1"]
    assert "| 60.00 | 67.70 | -7.70 | |delta| > 0.5 |" in lines["recall@5"]
    assert "not published" in lines["map@50"]
    assert "2 value(s) compared" in done.stdout and "1 differ by more than 0.5 points" in done.stdout


def test_model_defined_by_kind_and_options_runs_and_misspelt_options_are_refused(tmp_path):
    folder = make_folder(tmp_path / "parts")
    config = tmp_path / "run.yaml"
    model = {"name": "hist-4", "inprocess": True, "kind": "histogram", "options": {"bins": 4}}
    config.write_text(yaml.safe_dump({
        "results_dir": "results", "store": {"kind": "qdrant-edge", "path": "store"},
        "datasets": [{"name": "parts", "format": "folder", "path": str(folder)}], "models": [model],
    }))
    done = vsbench("run", str(config), "--quiet")
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert record["model"]["dim"] == 64 and record["model"]["name"] == "hist-4"

    model["options"] = {"binz": 4}
    config.write_text(config.read_text().replace("bins: 4", "binz: 4"))
    refused = vsbench("run", str(config), "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "binz" in refused.stderr and "bins" in refused.stderr and "max_side" in refused.stderr


@pytest.mark.parametrize("bad", [{"kind": "histogram", "server": "127.0.0.1:1"}])
def test_kind_needs_inprocess(tmp_path, bad):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": [{"name": "x", "format": "folder", "path": str(tmp_path)}], "models": [{"name": "m", **bad}],
    }))
    done = vsbench("run", str(config))
    assert done.returncode == 2 and "define an in-process model" in done.stderr
