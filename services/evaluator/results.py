"""Result files: one JSON per (dataset, model, run), never overwritten, plus a per-query JSONL.

Layout under a results directory:

    <results>/<dataset>/<model>/<run_id>.json          a RunRecord (services/evaluator/record.py)
    <results>/<dataset>/<model>/<run_id>.queries.jsonl  one line per query

Tables and the report site are built from these files only, never by re-running (CLIP_benchmark's
idea). Names are sanitised into path segments; the JSON keeps the original names. `vsbench score
--out FILE` writes the same record to a path of the user's choosing.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from pydantic import ValidationError

from services.common.errors import VsbenchError
from services.evaluator.record import SCHEMA, SCHEMA_ID, RunRecord

QUERY_SCHEMA = "vsbench.queries/v1"
# Schemas of files written before the typed record: recognised so they get a clear message.
OLD_SCHEMAS = ("vsbench.result/v1", "vsbench.score/v1")


class ResultExistsError(VsbenchError, FileExistsError):
    """A run's record or per-query file is already on disk: results are never overwritten."""


class ResultFormatError(VsbenchError, ValueError):
    """A JSON file that is not a readable run record of this version; the message is one line."""


def path_segment(name: str) -> str:
    """A readable, safe folder name for a dataset or model name ("cohere/embed-v4.0" -> "cohere__embed-v4.0")."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__")).strip("._")
    return cleaned or "unnamed"


def new_run_id(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class QueryOutcome:
    """One line of the per-query file. `first_relevant_rank` is 1-based, 0 = none in the top list.
    `ap` maps K (as a string) to AP@K; `top_relevant` marks which of `top_ids` are relevant."""

    query_id: str
    product_id: str
    n_relevant: int
    answerable: bool
    first_relevant_rank: int
    ap: dict[str, float]
    top_ids: list[str]
    top_scores: list[float]
    top_relevant: list[bool]

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "product_id": self.product_id,
            "n_relevant": self.n_relevant,
            "answerable": self.answerable,
            "first_relevant_rank": self.first_relevant_rank,
            "ap": {k: (None if math.isnan(v) else round(v, 6)) for k, v in self.ap.items()},
            "top_ids": self.top_ids,
            "top_scores": np.round(np.asarray(self.top_scores, dtype=np.float64), 6).tolist(),
            "top_relevant": self.top_relevant,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "QueryOutcome":
        return cls(
            query_id=data["query_id"],
            product_id=data["product_id"],
            n_relevant=int(data["n_relevant"]),
            answerable=bool(data["answerable"]),
            first_relevant_rank=int(data["first_relevant_rank"]),
            ap={k: (float("nan") if v is None else float(v)) for k, v in data["ap"].items()},
            top_ids=list(data["top_ids"]),
            top_scores=[float(s) for s in data["top_scores"]],
            top_relevant=[bool(b) for b in data["top_relevant"]],
        )


@dataclass
class RunResult:
    """One run's RunRecord plus where it lies. `data` is the record as JSON data (read-only use)."""

    record: RunRecord
    path: Path | None = None
    data: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data = self.record.to_json_dict()

    @property
    def ok(self) -> bool:
        return self.record.status == "ok"

    @property
    def dataset(self) -> str:
        return self.data["dataset"]["name"]

    @property
    def model(self) -> str:
        return self.data["model"]["name"]

    @property
    def metrics(self) -> dict[str, float]:
        return self.data["metrics"]

    @property
    def created(self) -> str:
        return self.data.get("created", "")

    def per_query_path(self) -> Path | None:
        name = self.data.get("per_query_file")
        if not name or self.path is None:
            return None
        return self.path.parent / name

    def queries(self) -> Iterator[QueryOutcome]:
        path = self.per_query_path()
        if path is None:
            return iter(())
        return read_query_outcomes(path)


def read_query_outcomes(path: Path) -> Iterator[QueryOutcome]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            data = json.loads(line)
            if data.get("schema") == QUERY_SCHEMA:
                continue  # header line
            yield QueryOutcome.from_json(data)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot serialise {type(value).__name__}")


def check_new_result(summary_path: Path) -> Path:
    """Refuse (ResultExistsError) when a record or its per-query file is already at this place;
    returns the per-query file's path. Commands call it before any work, write_run again."""
    summary_path = Path(summary_path)
    queries_path = summary_path.with_name(summary_path.name.removesuffix(".json") + ".queries.jsonl")
    for clash in (summary_path, queries_path):
        if clash.exists():
            raise ResultExistsError(f"result {clash} already exists; results are never overwritten")
    return queries_path


def write_run(
    results_dir: Path,
    record: RunRecord,
    outcomes: Iterable[QueryOutcome] | None = None,
    *,
    path: Path | None = None,
) -> RunResult:
    """Write a new run's files; refuses to overwrite (a clash means a run id was reused).

    Default place: <results_dir>/<dataset>/<model>/<run_id>.json; `path` puts the record exactly
    there instead (`vsbench score --out`). The per-query file is written first and the record last,
    each through a temporary name, so a record on disk always has its complete per-query file.
    """
    if path is None:
        folder = Path(results_dir) / path_segment(record.dataset.name) / path_segment(record.model.name)
        summary_path = folder / f"{record.run_id}.json"
    else:
        summary_path = Path(path)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    queries_path = check_new_result(summary_path)
    per_query_file = None
    if outcomes is not None:
        tmp = queries_path.with_name(queries_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"schema": QUERY_SCHEMA, "run_id": record.run_id}) + "\n")
            encode = json.JSONEncoder(default=_json_default).encode  # one encoder: json.dumps makes one per call
            for outcome in outcomes:
                handle.write(encode(outcome.to_json()) + "\n")
        os.replace(tmp, queries_path)
        per_query_file = queries_path.name
    record = record.model_copy(update={"per_query_file": per_query_file})
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record.to_json_dict(), handle, indent=2, default=_json_default, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, summary_path)
    return RunResult(record=record, path=summary_path)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_run(path: Path) -> RunResult:
    """Read one run record; ResultFormatError (one line) for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFormatError(f"{path}: not readable JSON ({exc})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema in OLD_SCHEMAS:
        raise ResultFormatError(
            f"{path}: written by an older vsbench (schema {schema}); rerun the evaluation to get a "
            f"{SCHEMA_ID} record"
        )
    if schema != SCHEMA_ID:
        raise ResultFormatError(f"{path}: not a vsbench run record (schema {schema!r}, expected {SCHEMA_ID})")
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ResultFormatError(f"{path}: invalid {SCHEMA_ID} record at {where}: {first['msg']}") from None
    return RunResult(record=record, path=path)


def is_run_record_file(path: Path) -> bool:
    """Cheap check that a JSON file claims to be a (possibly old) vsbench record."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return f'"{SCHEMA}' in head or any(f'"{old}"' in head for old in OLD_SCHEMAS)


def load_results(
    results_dir: Path, latest_only: bool = True, on_skip: Callable[[str], None] | None = None
) -> list[RunResult]:
    """Every run record under a directory; with latest_only, the newest run per (dataset, model).

    JSON files that are not vsbench records are ignored; old or broken records are skipped and
    reported through `on_skip` with one line each (default: ignored)."""
    runs = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        if not is_run_record_file(path):
            continue
        try:
            runs.append(load_run(path))
        except ResultFormatError as exc:
            if on_skip is not None:
                on_skip(str(exc))
    if not latest_only:
        return runs
    newest: dict[tuple[str, str], RunResult] = {}
    for run in runs:
        key = (run.dataset, run.model)
        if key not in newest or (run.created, run.data["run_id"]) > (newest[key].created, newest[key].data["run_id"]):
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (r.dataset, r.model))
