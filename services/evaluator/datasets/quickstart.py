"""The quickstart set as a dataset format: built from the photos shipped in the package (no
download), so `docker compose up` and any run config can evaluate something real out of the box."""

from __future__ import annotations

import os

from .base import Dataset, DatasetError
from .manifest import load_manifest

VARIANTS = ("closed", "open")


def load_quickstart(
    path: str | os.PathLike,
    *,
    variant: str = "open",
    size: str = "full",
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """Build (or reuse) the quickstart set under `path`; `variant`: closed (no distractors) or open."""
    from services.evaluator.quickstart.build import build_quickstart_dataset  # it imports this package

    if variant not in VARIANTS:
        raise DatasetError(f"quickstart variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    manifests = build_quickstart_dataset(path, seed=seed, size=size)
    return load_manifest(manifests[variant], name=name)
