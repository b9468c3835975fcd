"""RunRecord: the one typed result record vsbench writes and reads.

Every run (`vsbench run`, `quickstart`, `score`, `score-ilias`) writes exactly one RunRecord as
JSON; `vsbench table` and `vsbench report` read nothing else. The JSON Schema generated from this
module is committed as docs/schema/run-record.schema.json (`python -m services.evaluator.record`
regenerates it; a test fails when the two drift apart).

Bump SCHEMA_VERSION when a change would make an older reader misread a newer file; files of
another schema are refused with one line saying which schema they have.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "vsbench.run-record"
SCHEMA_VERSION = 2
SCHEMA_ID = f"{SCHEMA}/v{SCHEMA_VERSION}"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "schema" / "run-record.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetRecord(_Strict):
    name: str
    setup: Literal["intra", "inter"]
    gallery_type: Literal["closed", "open"]
    description: str = ""
    group: str = "public"
    counts: dict[str, int] = Field(default_factory=dict, description="images / products per split")
    source: dict[str, Any] = Field(
        default_factory=dict, description="where the data came from: format, path, id lists and their hashes"
    )


class ModelRecord(_Strict):
    name: str = Field(description="the name this run used (config / CLI), which keys the stored vectors")
    fingerprint: str = Field(
        "", description="sha256 over weights, preprocessing, pooling, dtype and vector-changing library versions"
    )
    dim: int
    dtype: str = "float32"
    preprocessing: str = ""
    normalized: bool = False
    revision: str = ""
    max_batch: int = 0
    backend: str = ""
    group: str = "general"
    details: dict[str, str] = Field(default_factory=dict)
    served_as: str = Field("", description="the name the server reported (Info.name)")
    input_roles: dict[str, str] = Field(
        default_factory=dict,
        description="the input role each split was embedded with (gallery: document, queries: query); "
        "what a vendor sends for each is in details['request_roles']",
    )


class ProtocolRecord(BaseModel):
    """How every number was computed. Extra keys (e.g. the ILIAS official mode's) are allowed so a
    protocol can state more, never less."""

    model_config = ConfigDict(extra="allow")

    mode: str = Field("vsbench", description="vsbench (docs/protocol.md) or ilias (the official ILIAS evaluation)")
    setup: Literal["intra", "inter"]
    gallery_type: Literal["closed", "open"]
    recall_k: list[int]
    map_k: list[int]
    recall_definition: str
    map_definition: str
    tie_rule: str
    normalization: str
    similarity: str
    search: str
    self_match: str
    distractors: str
    unanswerable: str


class QueryCounts(_Strict):
    total: int
    scored: int
    unanswerable: int
    failed_to_embed: int = 0
    missing_files: int = 0


class GalleryCounts(_Strict):
    total: int
    indexed: int
    failed_to_embed: int = 0
    missing_files: int = 0
    distractors: int = 0
    # ILIAS official mode: positives listed in image_ids/positive_ids.txt, and how many of them
    # have no feature (they still count in min(k, |gt|), as the official evaluation counts them).
    listed_positives: int | None = None
    listed_positives_missing: int | None = None


class ItemErrorRecord(_Strict):
    image_id: str
    split: str = ""
    code: str
    message: str


class UsageRecord(_Strict):
    """What THIS run cost at the embedding service (never a server's running total)."""

    billed_images: int = 0
    cached_images: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    cost_usd: float | None = Field(None, description="null where the service knows no price")


# ---- decision analytics (services/evaluator/analytics, docs/analytics.md) ---------------------


class RocPoint(_Strict):
    threshold: float | None = Field(description="accept when the top-1 score > threshold; null = -inf (accept all)")
    far: float | None = Field(description="% of out-of-catalog queries accepted")
    tpr: float | None = Field(description="% of in-catalog queries accepted")
    dir: float | None = Field(description="% of in-catalog queries accepted with a correct top-1")


class AccuracyRejectionPoint(_Strict):
    threshold: float | None
    coverage: float | None = Field(description="% of all queries answered")
    precision: float | None = Field(description="% of answered queries whose top-1 is correct")


class ThresholdRecommendation(_Strict):
    target_precision: float | None = Field(description="%")
    threshold: float | None = Field(description="null: no threshold reaches the target, or accept_all")
    accept_all: bool = False
    precision: float | None = Field(description="% on all queries at the threshold")
    coverage: float | None
    cv_precision: float | None = Field(description="% pooled over held-out folds, each at its own threshold")
    cv_coverage: float | None
    folds: int
    seed: int


class OpenSetAnalysis(_Strict):
    score: str
    in_catalog: int
    out_of_catalog: int
    auroc: float | None = Field(description="%, ties count 1/2")
    dir_at_far: dict[str, float | None] = Field(description='FAR ("0.01", "0.05", "0.1") -> best DIR in %')
    dir_thresholds: dict[str, float | None]
    closed_set_top1: float | None = Field(description="% of in-catalog queries with a correct top-1")
    recommendation: ThresholdRecommendation
    roc: list[RocPoint]
    accuracy_rejection: list[AccuracyRejectionPoint]


class MetricSpread(_Strict):
    min: float
    max: float
    std: float


class ScalingPoint(_Strict):
    distractors: int
    subsets: int
    metrics: dict[str, float | None] = Field(description="% mean over the subsets")
    spread: dict[str, MetricSpread | None]


class ScalingExtrapolation(_Strict):
    distractors: int
    value: float


class ScalingFit(_Strict):
    metric: str
    form: str
    intercept: float
    slope: float
    fitted_on: list[int]
    extrapolation: ScalingExtrapolation = Field(description="the fitted line at 10x the distractors: not a measurement")


class ScalingAnalysis(_Strict):
    method: str
    seed: int
    repetitions: int
    ranking_depth: int
    points: list[ScalingPoint]
    fit: ScalingFit | None = None


class CompressionRow(_Strict):
    dims: int
    quantization: str = Field(description="float32 / float16 / int8 / binary, or qdrant-scalar / qdrant-binary / qdrant-product")
    rescore: bool
    rescore_depth: int | None = None
    bytes_per_vector: float | None
    engine: str = Field(description="vsbench (numpy/torch over the stored vectors) or qdrant-edge / qdrant-local")
    metrics: dict[str, float | None] = Field(default_factory=dict)
    note: str = Field("", description="why a row has no metrics, or what it approximates")


class CompressionAnalysis(_Strict):
    method: str
    rows: list[CompressionRow]


class Analyses(_Strict):
    """Decision analytics computed from this run's stored vectors and ranking (docs/analytics.md)."""

    open_set: OpenSetAnalysis | None = None
    scaling: ScalingAnalysis | None = None
    compression: CompressionAnalysis | None = None
    skipped: dict[str, str] = Field(default_factory=dict, description="analysis -> why it was asked for but not computed")


class RunRecord(_Strict):
    schema_id: str = Field(SCHEMA_ID, alias="schema")
    run_id: str
    created: str
    status: Literal["ok", "failed"] = "ok"
    failure: str | None = Field(None, description="one line: why a failed run has no metrics")
    dataset: DatasetRecord
    model: ModelRecord
    protocol: ProtocolRecord | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict, description="percent; null = no scored query")
    queries: QueryCounts | None = None
    gallery: GalleryCounts | None = None
    missing_images: list[str] = Field(default_factory=list)
    errors: list[ItemErrorRecord] = Field(default_factory=list)
    timings: dict[str, float | int | None] = Field(default_factory=dict)
    usage: UsageRecord | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    breakdowns: dict[str, Any] | None = Field(None, description="per-subset metrics (e.g. ILIAS scale / clutter)")
    text_queries: dict[str, Any] | None = Field(
        None, description="a second query set's metrics and counts (ILIAS text-to-image queries)"
    )
    per_query_file: str | None = None
    analyses: Analyses | None = Field(None, description="open-set rejection, gallery scaling, compression (docs/analytics.md)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def json_schema() -> dict[str, Any]:
    schema = RunRecord.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://vsbench.dev/schema/{SCHEMA_ID}.json"
    schema["title"] = f"vsbench run record ({SCHEMA_ID})"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the committed JSON Schema (docs/schema/run-record.schema.json)."""
    target = Path(argv[0]) if argv else SCHEMA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
