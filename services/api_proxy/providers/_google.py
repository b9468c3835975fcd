"""Error shapes shared by Google APIs (Vertex AI, Gemini API)."""

from __future__ import annotations

import httpx


def retry_info_delay(response: httpx.Response) -> float | None:
    """google.rpc.RetryInfo `retryDelay` ("37s", "0.5s") from a Google error body, if any."""
    try:
        details = response.json()["error"].get("details") or []
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(detail.get("retryDelay", ""))
            try:
                return float(delay.rstrip("s"))
            except ValueError:
                return None
    return None
