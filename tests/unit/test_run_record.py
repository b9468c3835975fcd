"""The typed run record: its committed JSON Schema never drifts from the code, and every record
vsbench writes validates against it."""

import json

import jsonschema
import pytest

from services.evaluator.record import SCHEMA_FILE, SCHEMA_ID, RunRecord, schema_text
from services.evaluator.results import ResultFormatError, load_run, write_run


def test_committed_schema_matches_the_code():
    assert SCHEMA_FILE.is_file(), "run `python -m services.evaluator.record` to write docs/schema/run-record.schema.json"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "docs/schema/run-record.schema.json is stale: regenerate it with `python -m services.evaluator.record`"
    )


def minimal_record(**changes):
    data = {
        "schema": SCHEMA_ID,
        "run_id": "20260101T000000Z-abcdef",
        "created": "2026-01-01T00:00:00+00:00",
        "dataset": {"name": "toy", "setup": "intra", "gallery_type": "closed"},
        "model": {"name": "m", "dim": 4, "fingerprint": "sha256:" + "0" * 64},
    }
    data.update(changes)
    return RunRecord.model_validate(data)


def test_written_records_validate_and_round_trip(tmp_path):
    run = write_run(tmp_path, minimal_record(metrics={"recall@1": 50.0}))
    on_disk = json.loads(run.path.read_text())
    jsonschema.validate(on_disk, json.loads(SCHEMA_FILE.read_text()))
    again = load_run(run.path)
    assert again.record == run.record and again.metrics == {"recall@1": 50.0}
    assert run.path == tmp_path / "toy" / "m" / "20260101T000000Z-abcdef.json"


def test_unknown_fields_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ValueError):
        minimal_record(metricz={})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**minimal_record().to_json_dict(), "status": "maybe"}))
    with pytest.raises(ResultFormatError, match=r"bad.json: invalid vsbench.run-record/v2 record at status"):
        load_run(bad)


def test_failed_runs_say_why():
    record = minimal_record(status="failed", failure="no gallery image has a stored vector")
    assert record.failure and record.metrics == {}
