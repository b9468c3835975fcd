"""Small torch helpers shared by torch-based backends (torch is imported lazily by callers)."""

from __future__ import annotations

from typing import Any

from services.embedder.backends.errors import BackendLoadError


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op threads only when asked: the default (one per core) is usually right,
    and torch's setting is process-wide, so a library must not change it on its own."""
    if threads is None:
        return
    import torch

    if threads < 1:
        raise BackendLoadError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def resolve_device(device: str) -> Any:
    """'cpu', 'cuda', 'cuda:1', 'mps' -> torch.device, failing clearly when it is not there."""
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError as exc:  # torch's own words for "cuda:x", "gpu", ...
        raise BackendLoadError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendLoadError(f"device {device!r} requested but torch sees no CUDA device")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise BackendLoadError("device 'mps' requested but it is not available")
    return resolved
