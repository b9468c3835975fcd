"""`store:` of a run config: a Qdrant cluster's distribution fields, typed and refused where they
cannot apply, as `vsbench run` reports them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from services.evaluator.config import RunSpec, StoreEntry

BASE = {"datasets": [{"name": "d", "format": "manifest", "path": "d.csv"}],
        "models": [{"name": "m", "server": "localhost:50051"}]}


def test_distribution_fields_reach_the_store_options():
    spec = RunSpec.model_validate({**BASE, "store": {
        "kind": "qdrant-server", "url": "http://qdrant:6333",
        "shard_number": 16, "replication_factor": 2, "write_consistency_factor": 1}})
    assert spec.store.distribution() == {
        "shard_number": 16, "replication_factor": 2, "write_consistency_factor": 1}
    plain = StoreEntry(kind="qdrant-server", url="http://q:6333")
    assert plain.distribution() == {}, "left out: the server's defaults"


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"kind": "qdrant-edge", "shard_number": 4}, "store.shard_number applies to kind qdrant-server only"),
        ({"kind": "qdrant-local", "replication_factor": 2},
         "store.replication_factor applies to kind qdrant-server only"),
        ({"kind": "npz", "write_consistency_factor": 1},
         "store.write_consistency_factor applies to kind qdrant-server only"),
        ({"kind": "qdrant-server", "url": "http://q", "shard_number": 0}, "greater than or equal to 1"),
        ({"kind": "qdrant-server", "url": "http://q", "replication_factor": "2"}, "valid integer"),
        ({"kind": "qdrant-server", "url": "http://q", "shard_number": True}, "valid integer"),
        ({"kind": "qdrant-server", "url": "http://q", "replication_factor": 1, "write_consistency_factor": 2},
         "store.write_consistency_factor 2 exceeds store.replication_factor 1"),
        ({"kind": "qdrant-server", "url": "http://q", "shards": 4}, "Extra inputs are not permitted"),
    ],
)
def test_bad_distribution_fields_are_refused(store, message):
    with pytest.raises(ValidationError, match=message):
        RunSpec.model_validate({**BASE, "store": store})


def test_vsbench_run_names_the_field_in_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**BASE, "store": {"kind": "qdrant-edge", "shard_number": 4}}))
    done = subprocess.run([sys.executable, "-m", "services.evaluator.cli", "run", str(config), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "store.shard_number applies to kind qdrant-server only" in done.stderr
    assert "Traceback" not in done.stderr
