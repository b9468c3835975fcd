"""Turns a RunSpec (or CLI arguments) into seam objects and hands them to the one loop,
`Evaluation.run`."""

from __future__ import annotations

import logging
import os
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from services.common.errors import ConfigError
from services.common.errors import VsbenchError
from services.evaluator.clients.base import EmbeddingClient
from services.evaluator.config import DatasetEntry, ModelEntry, RunSpec, StoreEntry
from services.common.types import InputRole
from services.evaluator.datasets.base import Dataset, Split
from services.evaluator.pipeline import Evaluation, EvaluationOptions, RunOutcome

DEFAULT_STORE_PATH = Path(".vsbench") / "qdrant"


def open_vector_store(spec: StoreEntry, results_dir: Path):
    from services.evaluator.stores.registry import open_store

    if spec.kind == "qdrant-server":
        return open_store(spec.kind, url=spec.url, **spec.distribution())
    path = spec.path or (results_dir.parent / DEFAULT_STORE_PATH)
    return open_store(spec.kind, path=path)


def load_dataset_spec(spec: DatasetEntry) -> Dataset:
    from services.evaluator.datasets.registry import load_dataset

    dataset = load_dataset(spec.format, spec.path, name=spec.name, **spec.options)
    dataset.source = {**dict(dataset.source), "format": spec.format, "path": str(spec.path), "group": spec.group}
    if dataset.root is not None:
        dataset.source.setdefault("root", str(dataset.root))
    return dataset


def make_client(spec: ModelEntry) -> EmbeddingClient:
    if spec.inprocess:
        from services.evaluator.clients.inprocess import InProcessEmbeddingClient

        if spec.kind is not None:
            from services.embedder.backends.registry import build_backend

            backend = build_backend(
                spec.kind, spec.options, name=spec.name, device=spec.device, max_batch=spec.batch_size or 32
            )
            return InProcessEmbeddingClient(backend, batch_size=spec.batch_size, owns_backend=True)
        return InProcessEmbeddingClient(spec.name, weights=spec.weights, device=spec.device)
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    token = os.environ.get(spec.auth_token_env) if spec.auth_token_env else None
    if spec.auth_token_env and not token:
        raise ConfigError(f"model {spec.name!r}: environment variable {spec.auth_token_env} is not set")
    tls_ca = spec.tls_ca.read_bytes() if spec.tls_ca else None
    return GrpcEmbeddingClient(
        spec.server, batch_size=spec.batch_size, max_in_flight=spec.max_in_flight,
        tls=spec.tls, tls_ca=tls_ca, auth_token=token,
        connect_timeout_s=spec.connect_timeout_s, overload_deadline_s=spec.overload_deadline_s,
    )


def input_roles(spec: ModelEntry) -> dict[Split, InputRole | None]:
    """A model entry's input roles per split (config names -> the pipeline's)."""
    split = {"gallery": Split.GALLERY, "queries": Split.QUERY}
    roles = {Split.GALLERY: InputRole.DOCUMENT, Split.QUERY: InputRole.QUERY}
    for name, role in spec.input_roles.items():
        roles[split[name]] = None if role == "unspecified" else InputRole(role)
    return roles


def run_spec(
    spec: RunSpec, *, embed: bool = True, score: bool = True, console: Console | None = None, show_progress: bool = True
) -> list[RunOutcome]:
    """Every dataset x model of a config through `Evaluation.run`. A model whose service fails
    for good gets a failed record and the run goes on with the next one; the caller decides the
    exit status from the outcomes."""
    from services.evaluator.sharding import select_shard

    console = console or Console(stderr=True)
    base = EvaluationOptions(
        recall_k=spec.k, map_k=spec.map_k, search=spec.search, reembed=spec.reembed,
        unanswerable_as_miss=spec.unanswerable_as_miss, show_progress=show_progress,
        analyses=spec.analyses.options(),
    )
    store = open_vector_store(spec.store, spec.results_dir)
    outcomes: list[RunOutcome] = []
    try:
        for dataset_spec in spec.datasets:
            dataset = load_dataset_spec(dataset_spec)
            dataset.validate()
            options = replace(base, recall_k=dataset_spec.k or base.recall_k, map_k=dataset_spec.map_k or base.map_k)
            evaluation = Evaluation(store, spec.results_dir, options)
            shard = select_shard(dataset.records, spec.shard.index, spec.shard.count)
            for model_spec in spec.models:
                with closing(make_client(model_spec)) as client:
                    extra = {"model": {"group": model_spec.group}, "dataset": {"group": dataset_spec.group}}
                    outcome = evaluation.run(
                        dataset, client, model_spec.name, embed=embed, score=score,
                        records=shard if spec.shard.count > 1 else None, extra=extra,
                        roles=input_roles(model_spec),
                    )
                outcomes.append(outcome)
                _print_outcome(console, dataset.name, model_spec.name, outcome)
    finally:
        store.close()
    return outcomes


@dataclass
class PlanRow:
    """One (dataset, model) of a run config as `vsbench run --dry-run` sees it."""

    dataset: str
    model: str
    images: int = 0
    missing_files: int = 0
    stored: int = 0
    to_embed: int = 0
    stored_fingerprint: str | None = None  # None: no collection yet
    images_per_s: float | None = None  # measured in an earlier record of this model, if any
    problem: str = ""

    @property
    def estimate_s(self) -> float | None:
        if self.images_per_s and self.to_embed:
            return self.to_embed / self.images_per_s
        return 0.0 if not self.to_embed else None


def check_model_definitions(spec: RunSpec) -> None:
    """Models defined by kind + options are validated against the kind's typed options before
    anything runs (BackendOptionsError lists the valid options)."""
    for model in spec.models:
        if model.kind is not None:
            from services.embedder.backends.registry import validate_definition

            validate_definition(model.kind, model.options, name=model.name)


def plan_spec(spec: RunSpec, *, check_files: bool = True) -> list[PlanRow]:
    """What `vsbench run` would do, without contacting any embedding server: per dataset x model
    the images, what the store already holds, what is left to embed, and a time estimate from the
    newest images/s this model achieved in an earlier record under results_dir. Datasets that
    cannot be loaded become rows naming the problem (the whole config is checked in one go)."""
    from services.evaluator.pipeline import collection_name
    from services.evaluator.results import load_results

    speeds: dict[str, float] = {}
    if Path(spec.results_dir).is_dir():
        for run in load_results(spec.results_dir, latest_only=False):
            ips = run.data.get("timings", {}).get("images_per_s")
            if ips:
                speeds[run.model] = float(ips)  # files are read in name order: newest run ids last
    rows: list[PlanRow] = []
    store = open_vector_store(spec.store, spec.results_dir)
    try:
        for dataset_spec in spec.datasets:
            try:
                dataset = load_dataset_spec(dataset_spec)
                dataset.validate()
            except (VsbenchError, OSError) as exc:
                rows.append(PlanRow(dataset_spec.name, f"(all {len(spec.models)} models)",
                                    problem=" ".join(str(exc).split())))
                continue
            missing = {r.image_id for r in dataset.missing()} if check_files else set()
            present = [r.image_id for r in dataset.records if r.image_id not in missing]
            for model in spec.models:
                collection = collection_name(dataset.name, model.name)
                fingerprint = store.collection_fingerprint(collection)
                stored = len(store.existing_ids(collection, present)) if fingerprint is not None else 0
                rows.append(PlanRow(
                    dataset=dataset.name, model=model.name, images=len(dataset.records), missing_files=len(missing),
                    stored=stored, to_embed=len(present) - stored, stored_fingerprint=fingerprint,
                    images_per_s=speeds.get(model.name),
                ))
    finally:
        store.close()
    return rows


def _print_outcome(console: Console, dataset: str, model: str, outcome: RunOutcome) -> None:
    where = f"{dataset} / {model}"
    if outcome.report is not None:
        r = outcome.report
        console.print(
            f"{where}: embedded {r.embedded}, already stored {r.already_stored}, errors {len(r.errors)}",
            highlight=False,
        )
    result = outcome.result
    if result is not None and result.ok:
        metrics = ", ".join(f"{k} {v:.1f}" for k, v in result.metrics.items() if v is not None)
        console.print(f"{where}: {metrics}", highlight=False)
    elif result is not None:
        console.print(f"[red]{where}: FAILED: {result.record.failure}[/] (record: {result.path})", highlight=False)
    elif outcome.report is not None and outcome.report.failure:
        console.print(f"[red]{where}: FAILED: {outcome.report.failure}[/]", highlight=False)


def embed_to_files(
    server: str, images: Path, out: Path, *, batch_size: int = 32, show_progress: bool = True, reembed: bool = False,
    dtype: str = "float32", part: tuple[int, int] | None = None,
) -> RunOutcome:
    """Embed a folder or manifest through a server into a `vsbench score` format, through the
    same loop as every run (the files are the vector store): OUT.npz -> NpzStore (OUT and
    OUT.queries.npz), any other OUT -> EmbeddingDirStore (OUT/gallery/, OUT/queries/, streaming).

    An inter dataset keeps its query split apart, so scoring the files keeps the dataset's
    protocol; anything else is one gallery, scored as intra. Vectors land in chunk files as they
    arrive: an interrupted embed resumes where it stopped.

    `part` (i, N): embed only shard i of N, the records `vsbench run --shard-index i --shard-count N`
    embeds (sharding.select_shard: by a hash of the image id), into OUT/gallery/part-<i>/ and
    OUT/queries/part-<i>/; the N parts read back as one split (embedding_files.py)."""
    from services.evaluator.clients.grpc import GrpcEmbeddingClient
    from services.evaluator.datasets.registry import load_dataset
    from services.evaluator.sharding import select_shard

    if part is not None and out.suffix == ".npz":
        raise ConfigError(f"--part writes part-*/ directories of an embedding directory; {out.name} is an NPZ file "
                          "(give an OUT without .npz)")

    if _is_plain_image_dir(images):
        dataset = _plain_dir(images)  # unlabelled: nothing to validate for scoring
    else:
        dataset = load_dataset("folder" if images.is_dir() else "manifest", images)
        dataset.validate()
    records = None if part is None else select_shard(dataset.records, part[0], part[1])
    store = _file_store(out, dtype, None if part is None else part[0])
    try:
        with GrpcEmbeddingClient(server, batch_size=batch_size) as client:
            evaluation = Evaluation(store, out.parent, EvaluationOptions(show_progress=show_progress, reembed=reembed))
            return evaluation.run(dataset, client, dataset.name, score=False, records=records)
    finally:
        store.close()


def _file_store(out: Path, dtype: str, part: int | None = None):
    if out.suffix == ".npz":
        from services.evaluator.stores.npz import NpzStore

        if dtype != "float32":
            raise ConfigError("NPZ files hold float32; --dtype float16 needs an embedding directory (an OUT without .npz)")
        return NpzStore.single(out)
    from services.evaluator.stores.embedding_dir import EmbeddingDirStore

    return EmbeddingDirStore(out, dtype=dtype, part=part)


def score_command_for(out: Path) -> str | None:
    """The `vsbench score` line for what `embed_to_files` wrote (None when nothing was)."""
    if out.suffix == ".npz":
        from services.evaluator.stores.npz import queries_path_for

        queries = queries_path_for(out)
        if not out.exists():
            return None
        return f"vsbench score --gallery {out}" + (f" --queries {queries}" if queries.exists() else "") + " --out results.json"
    from services.evaluator.embedding_files import SPLIT_DIRS, is_embedding_dir

    gallery, queries = out / SPLIT_DIRS["gallery"], out / SPLIT_DIRS["query"]
    if not is_embedding_dir(gallery):
        return None
    return f"vsbench score --gallery {gallery}" + (f" --queries {queries}" if is_embedding_dir(queries) else "") + (
        " --out results.json"
    )


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _is_plain_image_dir(path: Path) -> bool:
    """A folder of images without the gallery/ query/ layout: embed them all, no labels."""
    return path.is_dir() and not any((path / sub).is_dir() for sub in ("gallery", "query", "distractors"))


def _plain_dir(path: Path) -> Dataset:
    from services.evaluator.datasets.base import GalleryType, ImageRecord, Setup, Split

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    records = [ImageRecord(p.relative_to(path).as_posix(), p.relative_to(path).as_posix(), "", Split.GALLERY) for p in files]
    return Dataset(name=path.name, setup=Setup.INTRA, gallery_type=GalleryType.OPEN, records=records, root=path)


def dataset_image_resolver(results_dir: Path):
    """For the report: find result images again by reloading each dataset from the source its
    result files recorded (format + path); datasets that cannot be loaded give placeholders."""
    from services.evaluator.datasets.registry import load_dataset
    from services.evaluator.report import dataset_resolver
    from services.evaluator.results import load_results

    datasets = []
    seen: set[str] = set()
    for run in load_results(results_dir):
        source = run.data.get("dataset", {}).get("source") or {}
        if run.dataset in seen or not source.get("format") or not source.get("path"):
            continue
        seen.add(run.dataset)
        try:
            datasets.append(load_dataset(source["format"], Path(source["path"]), name=run.dataset))
        except (VsbenchError, OSError) as exc:  # the report shows placeholders instead
            logging.getLogger(__name__).warning("report: cannot reload dataset %s: %s", run.dataset, exc)
    return dataset_resolver(datasets)
