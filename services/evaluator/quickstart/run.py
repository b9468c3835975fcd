"""`vsbench quickstart`: real models, real photos, the real services, in a few minutes.

Builds (or reuses) the quickstart dataset, starts one embedder server per model on loopback,
evaluates both dataset variants through gRPC into an embedded Qdrant (Qdrant Edge), prints the
Table-3 style table, writes result files and the report site, and stops every server it started,
also on Ctrl-C and on error. A second run reuses the stored vectors.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from rich.console import Console
from rich.markdown import Markdown

from services.common.errors import VsbenchError
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.datasets.registry import load_dataset
from services.evaluator.analytics.options import AnalysisOptions
from services.evaluator.pipeline import Evaluation, EvaluationOptions
from services.evaluator.quickstart.build import build_quickstart_dataset
from services.evaluator.results import RunResult, load_results
from services.evaluator.servers import ServerProcess, embedder_process
from services.evaluator.stores.registry import open_store

DEFAULT_MODELS = ("efficientnet-lite0", "open-nsfw", "histogram")


def _start_servers(models: Sequence[str], logs: Path, stack: ExitStack, console: Console) -> dict[str, ServerProcess]:
    """Start every embedder at once (each loads its model while the others do)."""
    servers = {m: embedder_process(m, "--max-batch", "32", log_path=logs / f"embedder-{m}.log") for m in models}
    for server in servers.values():
        stack.callback(server.stop)
    with console.status(f"starting {len(servers)} embedder servers on loopback..."):
        with ThreadPoolExecutor(len(servers)) as pool:
            for future in [pool.submit(s.start) for s in servers.values()]:
                future.result()
    for name, server in servers.items():
        console.print(f"  embedder [bold]{name}[/] on {server.address}", highlight=False)
    return servers


def run_quickstart(
    out: Path,
    *,
    small: bool = False,
    model_names: Sequence[str] = DEFAULT_MODELS,
    console: Console | None = None,
    show_progress: bool = True,
) -> list[RunResult]:
    console = console or Console(stderr=True)
    out = Path(out)
    started = time.perf_counter()
    with _interruptible() as received:
        runs = _run(out, small, model_names, console, show_progress, started)
    if received:
        # The handler's exception was swallowed where it landed (Python drops exceptions raised
        # inside finalizers, and some library code catches BaseException); the run went on to
        # the end, but it was still interrupted.
        raise SystemExit(_EXIT_STATUS[received[0]])
    return runs


_EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextmanager
def _interruptible() -> Iterator[list[int]]:
    """SIGTERM (e.g. from a container runtime) unwinds like Ctrl-C, so servers are stopped; both
    are remembered (the list yielded), in case their exception never reaches the top."""
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(_EXIT_STATUS[signum])

    # Ctrl-C only where Python's own handler has it: a shell that started us with SIGINT ignored
    # (a background job) keeps it ignored.
    signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else [])
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class QuickstartError(VsbenchError):
    """The quickstart could not produce its table (a model's run failed)."""


def _run(out: Path, small: bool, model_names, console: Console, show_progress: bool, started: float):
    console.rule("[bold]vsbench quickstart")
    with console.status("building the quickstart dataset from the shipped photos..."):
        manifests = build_quickstart_dataset(out / "dataset", size="small" if small else "full")
    datasets = [load_dataset("manifest", path) for path in manifests.values()]
    for dataset in datasets:
        counts = dataset.counts()
        console.print(
            f"  dataset [bold]{dataset.name}[/]: {dataset.setup.value}/{dataset.gallery_type.value}, "
            f"{counts['query_images']} queries, {counts['gallery_images']} gallery images "
            f"({counts['distractors']} distractors)", highlight=False,
        )
    results_dir = out / "results"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    with ExitStack() as stack:
        servers = _start_servers(model_names, out / "logs", stack, console)
        store = open_store("qdrant-edge", path=out / "qdrant")
        stack.callback(store.close)
        # Every analysis, so the report shows each on real photos (a second or two per run here).
        options = EvaluationOptions(
            show_progress=show_progress, analyses=AnalysisOptions(scaling=True, compression=True)
        )
        evaluation = Evaluation(store, results_dir, options)
        for dataset in datasets:
            for name, server in servers.items():
                with GrpcEmbeddingClient(server.address) as client:
                    run = evaluation.run(dataset, client, name).result
                if not run.ok:
                    raise QuickstartError(f"{dataset.name} / {name}: {run.record.failure}")
                runs.append(run)
                timings = run.data["timings"]
                reused = timings.get("images_already_stored", 0)
                console.print(
                    f"  {dataset.name} / {name}: R@1 {run.metrics['recall@1']:.1f}  "
                    f"({timings.get('images_embedded', 0)} embedded in {timings.get('embed_s', 0):.1f}s, "
                    f"{reused} reused from the store)", highlight=False,
                )
    _print_summary(results_dir, out, datasets, console, time.perf_counter() - started)
    return runs


def _print_summary(results_dir: Path, out: Path, datasets, console: Console, elapsed: float) -> None:
    from services.evaluator.tables import render_table

    console.rule("[bold]Results (R@1 / R@5 / mAP@20, %)")
    console.print(Markdown(render_table(load_results(results_dir), "markdown")))
    site = None
    try:
        from services.evaluator.report import build_site, dataset_resolver

        site = build_site(results_dir, out / "report", image_resolver=dataset_resolver(datasets))
    except ImportError:  # the report site is optional for the quickstart
        pass
    console.rule("[bold]Next")
    lines = [
        f"results:  {results_dir}/<dataset>/<model>/<run>.json (+ per-query .queries.jsonl)",
        f"report:   {site}" if site else None,
        f"finished in {elapsed:.0f}s; run it again to see stored vectors reused",
        "",
        _activate_hint(),
        "score your own embeddings:  vsbench score --gallery gallery.npz [--queries queries.npz] --out results.json",
        "bring your own dataset:     write a manifest (docs/datasets.md), list it in a run config, vsbench run config.yaml",
        "serve a model:              python -m services.embedder --model efficientnet-lite0 --port 50051",
        "everything in containers:   docker compose up   (docs/deployment.md)",
    ]
    for line in lines:
        if line is not None:
            console.print(line, highlight=False)


def _activate_hint() -> str | None:
    """`make quickstart` runs from .venv without activating it: say how to get `vsbench` on PATH."""
    if shutil.which("vsbench"):
        return None
    return f"(first put the commands on your PATH: source {Path(sys.executable).parent / 'activate'})"
