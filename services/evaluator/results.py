"""Result files: one JSON per (dataset, model, run), never overwritten, plus a per-query JSONL.

Layout under a results directory:

    <results>/<dataset>/<model>/<run_id>.json          summary (schema "vsbench.result/v1")
    <results>/<dataset>/<model>/<run_id>.queries.jsonl  one line per query

Tables and the report site are built from these files only, never by re-running (CLIP_benchmark's
idea). Names are sanitised into path segments; the JSON keeps the original names.
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
from typing import Any, Iterable, Iterator, Mapping

SCHEMA = "vsbench.result/v1"
QUERY_SCHEMA = "vsbench.queries/v1"


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
            "top_scores": [round(float(s), 6) for s in self.top_scores],
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
    """The summary JSON of one run, as a dict plus where it lies. `data` follows SCHEMA:

    schema, run_id, created, dataset{name, setup, gallery_type, counts, source, group, description},
    model{name, dim, dtype, preprocessing, normalized, revision, max_batch, backend, details, group},
    protocol{setup, gallery_type, recall_k, map_k, tie_rule, normalization, similarity, search,
             self_match, unanswerable},
    metrics{"recall@1": %, "recall@5": %, "map@20": %, ...},
    queries{total, scored, unanswerable, failed_to_embed, missing_files},
    gallery{total, indexed, failed_to_embed, missing_files},
    errors[{image_id, split, code, message}], timings{...}, usage{...}, versions{...},
    per_query_file (relative name of the JSONL beside it, or null)
    """

    data: dict[str, Any]
    path: Path | None = None

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


def write_run(
    results_dir: Path,
    summary: dict[str, Any],
    outcomes: Iterable[QueryOutcome] | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Write a new run's files; refuses to overwrite (a clash means a run id was reused).

    The per-query file is written first and the summary last, each through a temporary name, so a
    summary JSON on disk always has its complete per-query file beside it.
    """
    run_id = run_id or summary.get("run_id") or new_run_id()
    folder = Path(results_dir) / path_segment(summary["dataset"]["name"]) / path_segment(summary["model"]["name"])
    folder.mkdir(parents=True, exist_ok=True)
    summary_path = folder / f"{run_id}.json"
    queries_path = folder / f"{run_id}.queries.jsonl"
    if summary_path.exists() or queries_path.exists():
        raise FileExistsError(f"result {summary_path} already exists; results are never overwritten")
    data = {"schema": SCHEMA, "run_id": run_id, **{k: v for k, v in summary.items() if k not in ("schema", "run_id")}}
    data.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if outcomes is not None:
        tmp = queries_path.with_suffix(".jsonl.tmp")
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(json.dumps({"schema": QUERY_SCHEMA, "run_id": run_id}) + "\n")
            for outcome in outcomes:
                handle.write(json.dumps(outcome.to_json(), default=_json_default) + "\n")
        os.replace(tmp, queries_path)
        data["per_query_file"] = queries_path.name
    else:
        data["per_query_file"] = None
    tmp = summary_path.with_suffix(".json.tmp")
    with open(tmp, "x", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=_json_default, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, summary_path)
    return RunResult(data=data, path=summary_path)


def load_run(path: Path) -> RunResult:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a vsbench result (schema {data.get('schema')!r})")
    return RunResult(data=data, path=Path(path))


def load_results(results_dir: Path, latest_only: bool = True) -> list[RunResult]:
    """Every run under a directory; with latest_only, the newest run per (dataset, model)."""
    runs = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            runs.append(load_run(path))
        except (ValueError, json.JSONDecodeError):
            continue
    if not latest_only:
        return runs
    newest: dict[tuple[str, str], RunResult] = {}
    for run in runs:
        key = (run.dataset, run.model)
        if key not in newest or (run.created, run.data["run_id"]) > (newest[key].created, newest[key].data["run_id"]):
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (r.dataset, r.model))
