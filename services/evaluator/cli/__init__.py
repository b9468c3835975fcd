"""`vsbench`: evaluate embedding models for instance-level product retrieval.

The application lives in core.py; each module below adds its commands to it. Each command imports
what it needs when it runs, so `vsbench --help` stays fast and the scoring commands work without
torch.
"""

import gc
import os

from services.evaluator.cli.core import app

# Importing a module registers its commands; the order is the order `vsbench --help` lists them.
from services.evaluator.cli import scoring, results, runs, search, catalogue  # noqa: E402,F401,I001

__all__ = ["app", "main"]

# OpenBLAS's worker threads keep polling for new work for 2**28 cycles (~0.1 s) after each GEMM.
# Exact search selects its top-k on the same cores right after each GEMM, and that polling made
# the selection ~60 % slower (93 ms vs 58 ms at k = 1000 on a 1000 x 60k tile; docs/performance.md).
# 2**4 cycles: they sleep at once. OpenBLAS reads it when numpy loads, so the process edge sets
# it before any command imports numpy; a value already in the environment wins.
OPENBLAS_THREAD_TIMEOUT = "4"


# Python's cyclic collector runs every 700 new container objects by default; importing numpy,
# pyarrow, pydantic and the record models creates hundreds of thousands, so the commands spent
# tens of ms in it before doing anything. Every 100,000 still collects the cycles of a long run.
GC_THRESHOLD = (100_000, 10, 10)


def main() -> None:
    """The `vsbench` console script (and `python -m services.evaluator.cli`)."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    gc.set_threshold(*GC_THRESHOLD)
    try:
        app()
    finally:
        # The interpreter's last collection walks every object left (~0.05-0.1 s after a scoring
        # command); frozen ones it skips. Exit handlers and module teardown still run.
        gc.freeze()
