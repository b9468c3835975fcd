"""RunSpec: what `vsbench run CONFIG.yaml` evaluates (datasets x models), validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    format: str = Field(description="a loader name from services.evaluator.datasets.registry")
    path: Path
    group: str = Field("public", description="leaderboard grouping, e.g. public / private")
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    """A model reached over gRPC (`server`) or loaded in this process (`inprocess`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    server: str | None = Field(None, description="host:port of an Embedder server")
    inprocess: bool = False
    weights: Path | None = None
    device: str = "cpu"
    group: str = Field("general", description="leaderboard grouping, e.g. general / domain-specific / commercial")
    tls: bool = False
    tls_ca: Path | None = None
    auth_token_env: str | None = Field(None, description="environment variable holding the server's bearer token")
    batch_size: int | None = None
    max_in_flight: int = 4

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if bool(self.server) == self.inprocess:
            raise ValueError(f"model {self.name!r}: give exactly one of `server: host:port` or `inprocess: true`")
        return self


class StoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["qdrant-edge", "qdrant-server", "qdrant-local"] = "qdrant-edge"
    path: Path | None = None
    url: str | None = None


class ShardSpec(BaseModel):
    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _in_range(self) -> "ShardSpec":
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be < count {self.count}")
        return self


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results_dir: Path = Path("results")
    store: StoreSpec = Field(default_factory=StoreSpec)
    search: Literal["matmul", "qdrant"] = "matmul"
    k: list[int] = Field(default_factory=lambda: [1, 5])
    map_k: list[int] = Field(default_factory=lambda: [20])
    unanswerable_as_miss: bool = False
    datasets: list[DatasetSpec]
    models: list[ModelSpec]
    shard: ShardSpec = Field(default_factory=ShardSpec)

    @field_validator("k", "map_k")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("K values must be positive integers")
        return sorted(set(values))

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


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path
