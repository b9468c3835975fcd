"""Prometheus metrics of the search service (defined once per process, labelled by collection)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SEARCHES = Counter("vsbench_search_requests", "Search requests", ["collection", "query", "status"])
DECISIONS = Counter("vsbench_search_decisions", "Accept / reject decisions", ["collection", "decision"])
STAGE_SECONDS = Histogram(
    "vsbench_search_stage_seconds",
    "Time per stage of a search (embed, search)",
    ["collection", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
