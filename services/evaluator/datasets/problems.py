"""Collect every located problem in an input file, then raise them together.

A user fixing a manifest wants all its bad lines at once, not one per run; and nothing is
returned half-loaded because the loaders raise before building a `Dataset`.
"""

from __future__ import annotations

from .base import DatasetError

# Enough to show the pattern of a systematic mistake without flooding a terminal.
SHOWN_PROBLEMS = 20


class Problems:
    """Messages that each already name their file and line (``manifest.csv line 17: ...``)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        if len(self.messages) == 1:
            raise DatasetError(self.messages[0])
        shown = self.messages[:SHOWN_PROBLEMS]
        lines = [f"{self.where}: {len(self.messages)} problems", *(f"  {m}" for m in shown)]
        if len(self.messages) > len(shown):
            lines.append(f"  ... and {len(self.messages) - len(shown)} more")
        raise DatasetError("\n".join(lines))


def require_file(path, what: str) -> None:
    """The index file of a dataset must exist (image files may be missing; index files not)."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
