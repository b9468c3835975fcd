"""The errors a model backend raises while it is defined or loaded.

All derive from `VsbenchError`: the embedder's `main` prints their message as one line and exits
non-zero; anything else escaping a load is a bug and keeps its traceback.
"""

from __future__ import annotations

from services.common.errors import VsbenchError


class BackendLoadError(VsbenchError):
    """A backend cannot be built; the message says what is missing and how to provide it."""


class WeightsNotFoundError(BackendLoadError, FileNotFoundError):
    """No usable weights at the given place nor in the offline Hugging Face cache."""


class MissingExtraError(BackendLoadError, ImportError):
    """A library this backend needs is not installed; the message names the pip extra."""


class UnknownModelError(BackendLoadError, KeyError):
    """No registered model (or backend kind) of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; this reads better on a CLI
        return str(self.args[0]) if self.args else "unknown model"


class BackendOptionsError(BackendLoadError, ValueError):
    """Options a backend kind does not declare, or values of the wrong type; the message lists the
    kind's valid options."""


class UnknownKindError(BackendLoadError, KeyError):
    """No backend kind of that name; the message lists the known kinds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown backend kind"
