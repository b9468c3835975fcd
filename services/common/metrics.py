"""Prometheus metrics shared by every server. Defined once per process (the default registry
refuses duplicates), labelled by model so several servers in one process stay apart."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("vsbench_requests", "Embed requests (batches) handled", ["model", "method", "status"])
ITEMS = Counter("vsbench_items", "Images handled", ["model", "outcome"])
ITEM_ERRORS = Counter("vsbench_item_errors", "Per-item errors by code", ["model", "code"])
LATENCY = Histogram(
    "vsbench_request_latency_seconds",
    "Time to answer one Embed request (or one batch of a stream)",
    ["model", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "vsbench_batch_size", "Items per model forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
QUEUE_DEPTH = Gauge("vsbench_queue_depth", "Items waiting for a model worker", ["model", "stage"])
UPSTREAM_RETRIES = Counter("vsbench_upstream_retries", "Retries of vendor calls", ["model", "reason"])
UPSTREAM_429 = Counter("vsbench_upstream_429", "HTTP 429 answers from vendors", ["model"])
