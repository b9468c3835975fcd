"""The report's model card shows the probe of the same model fingerprint, and only that one."""

from __future__ import annotations

from services.evaluator.probe import ProbeResult, probe_path
from services.evaluator.record import SCHEMA_ID, RunRecord
from services.evaluator.report import SiteOptions, build_site
from services.evaluator.results import write_run

FP = "sha256:" + "1" * 64


def probe(fingerprint: str, created: str, batch_cos: float, problems: list[str]) -> ProbeResult:
    return ProbeResult.model_validate({
        "schema": "vsbench.probe/v1", "model": "m1", "fingerprint": fingerprint, "target": "grpc://127.0.0.1:1",
        "created": created, "info": {}, "preprocessing": "resize 256", "images": {"source": "x", "count": 8, "ids": []},
        "dim": 64, "norms": {"min": 1.0, "mean": 1.0, "max": 1.0}, "normalized_measured": True,
        "determinism_max_abs_diff": 0.0, "batch_invariance_min_cos": batch_cos, "invariance_batch": 32,
        "throughput": [{"batch_size": 32, "request_size": 32, "images": 64, "seconds": 2.0, "images_per_s": 32.0}],
        "parity": {"status": "no reference"}, "thresholds": {}, "problems": problems, "ok": not problems,
    })


def test_model_card_shows_the_matching_probe(tmp_path):
    results = tmp_path / "results"
    write_run(results, RunRecord.model_validate({
        "schema": SCHEMA_ID, "run_id": "20260101T000000Z-000001", "created": "2026-01-01T00:00:00+00:00",
        "dataset": {"name": "toy", "setup": "intra", "gallery_type": "closed"},
        "model": {"name": "m1", "dim": 64, "fingerprint": FP},
        "metrics": {"recall@1": 50.0},
    }))
    path = probe_path(results, "m1")
    path.parent.mkdir(parents=True)
    path.write_text(probe(FP, "2026-01-02T00:00:00+00:00", 0.987654, ["batch invariance 0.987654 < 0.9999"]).to_json())
    # a newer probe of other weights must not be shown for these results
    (path.parent / "m1-other.json").write_text(probe("sha256:" + "2" * 64, "2026-02-01T00:00:00+00:00", 1.0, []).to_json())
    build_site(results, tmp_path / "site", options=SiteOptions(n_boot=50))
    page = (tmp_path / "site" / "models" / "m1.html").read_text(encoding="utf-8")
    assert "Probe (measured, not assumed)" in page
    assert "0.987654" in page and "batch invariance 0.987654 &lt; 0.9999" in page
    assert "batch 32: 32 images/s" in page


def test_published_page_sets_reproduced_beside_published(tmp_path):
    results = tmp_path / "results"
    write_run(results, RunRecord.model_validate({
        "schema": SCHEMA_ID, "run_id": "20260101T000000Z-000002", "created": "2026-01-01T00:00:00+00:00",
        "dataset": {"name": "sop", "setup": "intra", "gallery_type": "closed"},
        "model": {"name": "dinov2-large", "dim": 1024},
        "metrics": {"recall@1": 56.0, "recall@5": 60.0},
    }))
    build_site(results, tmp_path / "site", options=SiteOptions(n_boot=50))
    page = (tmp_path / "site" / "published.html").read_text(encoding="utf-8")
    assert "2 value(s) compared" in page and "<strong>1</strong> differ by more than 0.5" in page
    assert "-0.30" in page and "-7.70 ⚑" in page and "DINOv2 Large" in page
    assert 'href="published.html"' in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
