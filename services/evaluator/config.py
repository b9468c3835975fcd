"""RunSpec: what `vsbench run CONFIG.yaml` evaluates (datasets x models), validated by pydantic.

Entries are named for what they are in the config file (DatasetEntry, ModelEntry, ...), apart
from the embedder's registered model specs and the api_proxy's vendor model specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DatasetEntry(BaseModel):
    """One dataset of a run config."""

    model_config = ConfigDict(extra="forbid")

    name: str
    format: str = Field(description="a loader name from services.evaluator.datasets.registry")
    path: Path
    group: str = Field("public", description="leaderboard grouping, e.g. public / private")
    options: dict[str, Any] = Field(default_factory=dict)
    # Per-dataset cut-offs (e.g. ILIAS's mAP@1000 beside SOP's mAP@20); default: the run's.
    k: list[int] | None = None
    map_k: list[int] | None = None

    @field_validator("k", "map_k")
    @classmethod
    def _positive(cls, values: list[int] | None) -> list[int] | None:
        return None if values is None else _positive_ks(values)


class ModelEntry(BaseModel):
    """One model of a run config: reached over gRPC (`server`) or loaded in this process
    (`inprocess`), either a registry name or a definition from `kind` + `options`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    server: str | None = Field(None, description="host:port of an Embedder server")
    inprocess: bool = False
    kind: str | None = Field(None, description="in-process only: a backend kind defining the model (with `options`)")
    options: dict[str, Any] = Field(default_factory=dict, description="the backend kind's typed options")
    weights: Path | None = None
    device: str = "cpu"
    group: str = Field("general", description="leaderboard grouping, e.g. general / domain-specific / commercial")
    tls: bool = False
    tls_ca: Path | None = None
    auth_token_env: str | None = Field(None, description="environment variable holding the server's bearer token")
    batch_size: int | None = None
    max_in_flight: int = 4
    # What each split is embedded as, for services that embed the two differently (Cohere
    # input_type, Voyage input_type, Jina task, Gemini taskType); "unspecified" = the server's default.
    input_roles: dict[Literal["gallery", "queries"], Literal["document", "query", "unspecified"]] = Field(
        default_factory=lambda: {"gallery": "document", "queries": "query"}
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="give up on an address that refuses connections after this")
    overload_deadline_s: float = Field(
        600.0, gt=0, description="how long to keep resending batches an overloaded server refused"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelEntry":
        if bool(self.server) == self.inprocess:
            raise ValueError(f"model {self.name!r}: give exactly one of `server: host:port` or `inprocess: true`")
        if (self.kind is not None or self.options) and not self.inprocess:
            raise ValueError(f"model {self.name!r}: `kind`/`options` define an in-process model; serve it with "
                             "`python -m services.embedder --kind ... --options ...` to reach it by `server`")
        return self


class StoreEntry(BaseModel):
    """`store:` of a run config. The distribution fields are a Qdrant cluster's (kind qdrant-server);
    left out, the server's defaults apply (docs/deployment.md, "Qdrant at scale")."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["qdrant-edge", "qdrant-server", "qdrant-local", "npz"] = "qdrant-edge"
    path: Path | None = None
    url: str | None = None
    # strict: `true` or "2" in a config is a mistake, not 1 or 2
    shard_number: int | None = Field(None, ge=1, strict=True, description="qdrant-server: shards per collection")
    replication_factor: int | None = Field(None, ge=1, strict=True, description="qdrant-server: copies per shard")
    write_consistency_factor: int | None = Field(
        None, ge=1, strict=True, description="qdrant-server: replicas that must apply a write for it to succeed"
    )

    @model_validator(mode="after")
    def _distribution_needs_a_cluster(self) -> "StoreEntry":
        given = [k for k in ("shard_number", "replication_factor", "write_consistency_factor")
                 if getattr(self, k) is not None]
        if given and self.kind != "qdrant-server":
            raise ValueError(f"store.{given[0]} applies to kind qdrant-server only (a Qdrant server or "
                             f"cluster), not {self.kind!r}")
        rf, wcf = self.replication_factor, self.write_consistency_factor
        if rf is not None and wcf is not None and wcf > rf:
            raise ValueError(f"store.write_consistency_factor {wcf} exceeds store.replication_factor {rf}: "
                             "no write could succeed")
        return self

    def distribution(self) -> dict[str, int]:
        """The distribution fields given, as create_collection keywords."""
        return {k: v for k in ("shard_number", "replication_factor", "write_consistency_factor")
                if (v := getattr(self, k)) is not None}


class ShardEntry(BaseModel):
    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _in_range(self) -> "ShardEntry":
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be < count {self.count}")
        return self


class AnalysesEntry(BaseModel):
    """`analyses:` of a run config: the decision analytics each run computes (docs/analytics.md)."""

    model_config = ConfigDict(extra="forbid")

    open_set: bool | None = Field(None, description="null: whenever out-of-catalog queries exist")
    scaling: bool = False
    compression: bool = False
    qdrant_quantization: bool = Field(True, description="with compression: also Qdrant's own quantization")
    target_precision: float = Field(0.95, gt=0.0, le=1.0)
    repetitions: int = Field(5, ge=3, description="random distractor subsets per scaling size")
    seed: int = 0

    def options(self):
        """The evaluation loop's AnalysisOptions."""
        from services.evaluator.analytics.options import AnalysisOptions

        return AnalysisOptions(**self.model_dump())


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results_dir: Path = Path("results")
    store: StoreEntry = Field(default_factory=StoreEntry)
    search: Literal["matmul", "qdrant"] = "matmul"
    k: list[int] = Field(default_factory=lambda: [1, 5])
    map_k: list[int] = Field(default_factory=lambda: [20])
    unanswerable_as_miss: bool = False
    # Replace stored vectors that another model fingerprint made (default: refuse such a run).
    reembed: bool = False
    datasets: list[DatasetEntry]
    models: list[ModelEntry]
    shard: ShardEntry = Field(default_factory=ShardEntry)
    analyses: AnalysesEntry = Field(default_factory=AnalysesEntry)

    @field_validator("k", "map_k")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        return _positive_ks(values)

    @model_validator(mode="after")
    def _unique_names(self) -> "RunSpec":
        for kind, names in (("dataset", [d.name for d in self.datasets]), ("model", [m.name for m in self.models])):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"duplicate {kind} names: {sorted(dupes)}")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> "RunSpec":
        """Load a config; relative paths in it resolve against the config file's folder."""
        path = Path(path)
        raw = yaml.safe_load(path.read_text()) or {}
        spec = cls.model_validate(raw)
        base = path.resolve().parent
        spec.results_dir = _resolve(base, spec.results_dir)
        if spec.store.path is not None:
            spec.store.path = _resolve(base, spec.store.path)
        for dataset in spec.datasets:
            dataset.path = _resolve(base, dataset.path)
        for model in spec.models:
            if model.weights is not None:
                model.weights = _resolve(base, model.weights)
        return spec


def _positive_ks(values: list[int]) -> list[int]:
    if not values or any(v < 1 for v in values):
        raise ValueError("K values must be positive integers")
    return sorted(set(values))


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path
