"""`vsbench quickstart` end to end, as a new user runs it (reduced dataset): real models behind
real embedder processes, Qdrant Edge, result files, the report site; then a second run that reuses
the stored vectors."""

import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from services.evaluator.results import load_results, read_query_outcomes


@pytest.mark.slow
def test_quickstart_small(tmp_path):
    out = tmp_path / "qs"
    command = [sys.executable, "-m", "services.evaluator.cli", "quickstart", "--small", "--quiet", "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Results (R@1 / R@5 / mAP@20, %)" in first.stderr
    assert "vsbench score --gallery" in first.stderr  # ends with what to do next
    runs = load_results(out / "results")
    assert {(r.dataset, r.model) for r in runs} == {
        (d, m) for d in ("quickstart-closed", "quickstart-open")
        for m in ("efficientnet-lite0", "open-nsfw", "histogram")
    }
    by = {(r.dataset, r.model): r for r in runs}
    for dataset in ("quickstart-closed", "quickstart-open"):
        assert by[dataset, "efficientnet-lite0"].metrics["recall@1"] > by[dataset, "histogram"].metrics["recall@1"]
    # results files agree with their per-query files
    for run in runs:
        outcomes = [o for o in read_query_outcomes(run.per_query_path()) if o.answerable]
        assert len(outcomes) == run.data["queries"]["scored"]
        for k in (1, 5):
            hits = [0 < o.first_relevant_rank <= k for o in outcomes]
            assert 100 * np.mean(hits) == pytest.approx(run.metrics[f"recall@{k}"], abs=1e-3)
        assert 100 * np.mean([o.ap["20"] for o in outcomes]) == pytest.approx(run.metrics["map@20"], abs=1e-3)
        assert run.data["timings"]["images_embedded"] > 0
    assert (out / "report" / "index.html").is_file()
    # the four analyses on real photos: the open set's held-out products are real out-of-catalog queries
    for model in ("efficientnet-lite0", "open-nsfw", "histogram"):
        analyses = by["quickstart-open", model].data["analyses"]
        assert analyses["open_set"]["out_of_catalog"] > 0 and analyses["open_set"]["auroc"] is not None
        points = analyses["scaling"]["points"]
        assert points[-1]["metrics"] == by["quickstart-open", model].metrics
        assert {r["quantization"] for r in analyses["compression"]["rows"]} >= {"float32", "binary", "qdrant-binary"}
        assert by["quickstart-closed", model].data["analyses"]["open_set"] is None  # every product is in the gallery
    assert by["quickstart-open", "efficientnet-lite0"].data["analyses"]["open_set"]["auroc"] > \
        by["quickstart-open", "histogram"].data["analyses"]["open_set"]["auroc"]
    for page in ("open-set", "scaling", "compression"):
        assert (out / "report" / "analysis" / "quickstart-open" / f"{page}.html").is_file()
    assert "★" in (out / "report" / "pareto.html").read_text()
    assert not list(out.glob("logs/*.log")) or all("Traceback" not in p.read_text() for p in out.glob("logs/*.log"))

    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    newest = load_results(out / "results")
    assert all(r.data["timings"]["images_embedded"] == 0 for r in newest)
    assert all(r.data["timings"]["images_already_stored"] > 0 for r in newest)
    assert {(r.dataset, r.model): r.metrics for r in newest} == {(r.dataset, r.model): r.metrics for r in runs}
    # every run left its own files; none overwritten
    assert len(list((out / "results").rglob("*.json"))) == 2 * len(runs)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_quickstart_stops_its_servers_when_interrupted(tmp_path, sig):
    command = [sys.executable, "-m", "services.evaluator.cli", "quickstart", "--small", "--quiet",
               "--out", str(tmp_path / "qs"), "--models", "histogram,efficientnet-lite0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(process.pid)
    servers: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    for line in process.stderr:  # wait until both embedders are up
        if line.strip().startswith("embedder "):
            servers = [p for p in parent.children(recursive=True) if "services.embedder" in " ".join(p.cmdline())]
            if len(servers) == 2:
                break
        assert time.monotonic() < deadline, "servers did not start"
    assert len(servers) == 2
    process.send_signal(sig)
    process.wait(timeout=120)
    assert process.returncode != 0
    gone, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive, f"embedder processes left running: {[p.pid for p in alive]}"
