"""Which decision analytics a run computes: kept apart from the analyses themselves so the
evaluation loop (and `vsbench score`) can name the options without importing what computes them."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TARGET_PRECISION = 0.95
DEFAULT_FOLDS = 5
DEFAULT_REPETITIONS = 5


@dataclass
class AnalysisOptions:
    """Which analyses a run computes. open_set None: whenever out-of-catalog queries exist."""

    open_set: bool | None = None
    scaling: bool = False
    compression: bool = False
    qdrant_quantization: bool = True  # with compression: also Qdrant's own quantization (qdrant-edge)
    target_precision: float = DEFAULT_TARGET_PRECISION
    folds: int = DEFAULT_FOLDS
    repetitions: int = DEFAULT_REPETITIONS
    seed: int = 0
