"""Dataset formats by name: ``load_dataset("sop", "/data/Stanford_Online_Products")``.

Adding a format is one line in `DATASET_LOADERS`; every loader takes the path first and its
options as keywords.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from .base import Dataset, DatasetError
from .folder import load_folder
from .ilias import load_ilias
from .manifest import load_manifest
from .products10k import load_products10k
from .quickstart import load_quickstart
from .sop import load_sop

DATASET_LOADERS: dict[str, Callable[..., Dataset]] = {
    "manifest": load_manifest,
    "folder": load_folder,
    "sop": load_sop,
    "products10k": load_products10k,
    "ilias": load_ilias,
    "quickstart": load_quickstart,
}
DATASET_FORMATS: tuple[str, ...] = tuple(DATASET_LOADERS)


def dataset_options(format: str) -> dict[str, Any]:
    """The options a format takes, with their defaults (for CLI help and config checks)."""
    loader = _loader(format)
    parameters = list(inspect.signature(loader).parameters.values())[1:]
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in parameters}


def load_dataset(format: str, path: str | os.PathLike, **options: Any) -> Dataset:
    loader = _loader(format)
    known = dataset_options(format)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DatasetError(
            f"dataset format {format!r} has no option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (options: {', '.join(known) or 'none'})"
        )
    return loader(path, **options)


def _loader(format: str) -> Callable[..., Dataset]:
    try:
        return DATASET_LOADERS[format]
    except KeyError:
        raise DatasetError(
            f"unknown dataset format {format!r} (known: {', '.join(DATASET_FORMATS)})"
        ) from None
