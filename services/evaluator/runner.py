"""Turns a RunSpec (or CLI arguments) into seam objects and hands them to the pipeline."""

from __future__ import annotations

import logging
import os
from pathlib import Path
import numpy as np
from rich.console import Console

from services.evaluator.clients.base import EmbeddingClient
from services.evaluator.config import DatasetSpec, ModelSpec, RunSpec, StoreSpec
from services.evaluator.datasets.base import Dataset, Setup
from services.evaluator.pipeline import Evaluation, EvaluationOptions
from services.evaluator.results import RunResult

DEFAULT_STORE_PATH = Path(".vsbench") / "qdrant"


def open_vector_store(spec: StoreSpec, results_dir: Path):
    from services.evaluator.stores.registry import open_store

    if spec.kind == "qdrant-server":
        if not spec.url:
            raise ValueError("store kind qdrant-server needs `url`")
        return open_store(spec.kind, url=spec.url)
    path = spec.path or (results_dir.parent / DEFAULT_STORE_PATH)
    return open_store(spec.kind, path=path)


def load_dataset_spec(spec: DatasetSpec) -> Dataset:
    from services.evaluator.datasets.registry import load_dataset

    dataset = load_dataset(spec.format, spec.path, name=spec.name, **spec.options)
    dataset.source = {**dict(dataset.source), "format": spec.format, "path": str(spec.path), "group": spec.group}
    if dataset.root is not None:
        dataset.source.setdefault("root", str(dataset.root))
    return dataset


def make_client(spec: ModelSpec) -> EmbeddingClient:
    if spec.inprocess:
        from services.evaluator.clients.inprocess import InProcessEmbeddingClient

        return InProcessEmbeddingClient(spec.name, weights=spec.weights, device=spec.device)
    from services.evaluator.clients.grpc import GrpcEmbeddingClient

    token = os.environ.get(spec.auth_token_env) if spec.auth_token_env else None
    if spec.auth_token_env and not token:
        raise ValueError(f"model {spec.name!r}: environment variable {spec.auth_token_env} is not set")
    tls_ca = spec.tls_ca.read_bytes() if spec.tls_ca else None
    return GrpcEmbeddingClient(
        spec.server, batch_size=spec.batch_size, max_in_flight=spec.max_in_flight,
        tls=spec.tls, tls_ca=tls_ca, auth_token=token,
    )


def run_spec(
    spec: RunSpec, *, embed: bool = True, score: bool = True, console: Console | None = None, show_progress: bool = True
) -> list[RunResult]:
    from services.evaluator.sharding import select_shard

    console = console or Console(stderr=True)
    options = EvaluationOptions(
        recall_k=spec.k, map_k=spec.map_k, search=spec.search,
        unanswerable_as_miss=spec.unanswerable_as_miss, show_progress=show_progress,
    )
    store = open_vector_store(spec.store, spec.results_dir)
    evaluation = Evaluation(store, spec.results_dir, options)
    runs: list[RunResult] = []
    try:
        for dataset_spec in spec.datasets:
            dataset = load_dataset_spec(dataset_spec)
            dataset.validate()
            missing = dataset.missing()
            if missing:
                console.print(f"[yellow]{dataset.name}: {len(missing)} image files missing; going on without them[/]")
            missing_ids = {r.image_id for r in missing}
            present = [r for r in dataset.records if r.image_id not in missing_ids]
            for model_spec in spec.models:
                client = make_client(model_spec)
                try:
                    extra = {"model": {"group": model_spec.group}, "dataset": {"group": dataset_spec.group}}
                    report = None
                    if embed:
                        records = select_shard(present, spec.shard.index, spec.shard.count)
                        report = evaluation.embed(dataset, client, model_spec.name, records)
                        console.print(
                            f"{dataset.name} / {model_spec.name}: embedded {report.embedded}, "
                            f"already stored {report.already_stored}, errors {len(report.errors)}",
                            highlight=False,
                        )
                    if score:
                        info = client.refresh_info() if hasattr(client, "refresh_info") else client.info()
                        run = evaluation.score(
                            dataset, info, model_spec.name, embed_report=report, missing=missing, extra=extra
                        )
                        runs.append(run)
                        metrics = ", ".join(
                            f"{k} {v:.1f}" for k, v in run.metrics.items() if v is not None
                        )
                        console.print(f"{dataset.name} / {model_spec.name}: {metrics}", highlight=False)
                finally:
                    client.close()
    finally:
        store.close()
    return runs


def queries_path_for(out: Path) -> Path:
    """Where `vsbench embed` writes the query split of an inter dataset, beside the gallery NPZ."""
    return out.with_name(f"{out.stem}.queries.npz")


def embed_to_npz(server: str, images: Path, out: Path, *, batch_size: int = 32, show_progress: bool = True):
    """Embed a folder or manifest through a server into the `vsbench score` NPZ format.

    An inter dataset (with a query split) becomes two files, `out` (gallery) and
    `queries_path_for(out)`, so scoring them keeps the dataset's protocol; anything else is one
    file, scored as intra. Returns ({path: rows written}, errors)."""
    from services.common.types import ImageItem
    from services.evaluator.clients.grpc import GrpcEmbeddingClient
    from services.evaluator.datasets.registry import load_dataset

    if _is_plain_image_dir(images):
        dataset = _plain_dir(images)
    else:
        dataset = load_dataset("folder" if images.is_dir() else "manifest", images)
    records = list(dataset.records)
    errors: list[dict] = []
    by_id = {r.image_id: r for r in records}
    vectors: dict[str, np.ndarray] = {}

    def items():
        for record in records:
            try:
                yield ImageItem(record.image_id, dataset.read(record))
            except OSError as exc:
                errors.append({"image_id": record.image_id, "code": "READ_ERROR", "message": str(exc)})

    with GrpcEmbeddingClient(server, batch_size=batch_size) as client:
        from services.evaluator.pipeline import _progress

        with _progress(show_progress) as progress:
            task = progress.add_task(f"embed {images.name}", total=len(records)) if progress else None
            for embedding in client.embed(items()):
                if embedding.error is not None:
                    errors.append({"image_id": embedding.id, "code": embedding.error.code.name,
                                   "message": embedding.error.message})
                else:
                    vectors[embedding.id] = embedding.vector
                if progress:
                    progress.advance(task)
    out.parent.mkdir(parents=True, exist_ok=True)
    if dataset.setup is Setup.INTER:
        parts = {out: dataset.gallery(), queries_path_for(out): dataset.queries()}
    else:
        parts = {out: records}
    written: dict[Path, int] = {}
    for path, part in parts.items():
        ids = [r.image_id for r in part if r.image_id in vectors]
        if ids:
            np.savez(
                path,
                embeddings=np.stack([vectors[i] for i in ids]).astype(np.float32),
                ids=np.array(ids),
                labels=np.array([by_id[i].product_id for i in ids]),
            )
        written[path] = len(ids)
    return written, errors


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
        except Exception as exc:  # noqa: BLE001 - the report shows a placeholder instead
            logging.getLogger(__name__).warning("report: cannot reload dataset %s: %s", run.dataset, exc)
    return dataset_resolver(datasets)
