"""Small text helpers of the report site: slugs, number formats, free-form record fields, anchors."""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from services.evaluator.results import path_segment

# Keys never shown from free-form model details, in case a backend put a credential there.
_HIDDEN_KEY_PARTS = ("key", "token", "secret", "password", "authorization", "credential")


def unique_slugs(names: Iterable[str]) -> dict[str, str]:
    """File-name slugs, unique even on case-insensitive file systems."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(set(names)):
        base = path_segment(name)
        slug, n = base, 2
        while slug.lower() in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug.lower())
        out[name] = slug
    return out


def pct(value: float | None, precision: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{precision}f}"


def signed(points: float) -> str:
    """+1.2 / −3.4 / 0.0 (never "-0.0"), with a true minus sign."""
    text = f"{abs(points):.1f}"
    if text == "0.0":
        return text
    return ("+" if points > 0 else "\u2212") + text


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _hidden(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _HIDDEN_KEY_PARTS)


def describe(value: Any, key: str = "") -> str:
    """A one-line human form of a free-form record field: dicts as k=v pairs, sizes as 224×224,
    other lists comma-separated."""
    if isinstance(value, Mapping):
        return (
            "; ".join(
                f"{k}={'(hidden)' if _hidden(str(k)) else describe(v, str(k))}" for k, v in value.items()
            )
            or "–"
        )
    if isinstance(value, (list, tuple)):
        if any(word in key.lower() for word in ("size", "shape", "resolution")) and all(
            isinstance(v, int) for v in value
        ):
            return "×".join(str(v) for v in value)
        return ", ".join(
            str(v) if isinstance(v, int) and not isinstance(v, bool) else describe(v) for v in value
        )
    return fmt_number(value)


def key_values(record: Any, limit: int = 240) -> list[tuple[str, str]]:
    """(key, value) rows of a free-form record; long values are cut (the result file has them whole)."""
    if not isinstance(record, Mapping):
        return []
    rows = []
    for key, value in record.items():
        text = "(hidden)" if _hidden(str(key)) else describe(value, str(key))
        rows.append((str(key), text if len(text) <= limit else text[: limit - 1] + "…"))
    return rows


def input_size(model: Mapping[str, Any]) -> str | None:
    """From the record's details or preprocessing: a field when there is one, else a best-effort
    reading of a preprocessing description ("resize 256, center crop 224" -> 224×224)."""
    details = model.get("details") if isinstance(model.get("details"), Mapping) else {}
    prep = model.get("preprocessing")
    for source in (details, prep if isinstance(prep, Mapping) else {}):
        for key in ("input_size", "image_size", "crop_size", "size", "resize"):
            if source.get(key) not in (None, "", {}):
                return describe(source[key], key)
    if isinstance(prep, str):
        pair = re.search(r"(\d{2,4})\s*[x×]\s*(\d{2,4})", prep)
        if pair:
            return f"{pair.group(1)}×{pair.group(2)} (from the preprocessing description)"
        crop = re.search(r"crop\D{0,12}?(\d{2,4})", prep, re.IGNORECASE)
        if crop:
            return f"{crop.group(1)}×{crop.group(1)} (from the preprocessing description)"
    return None


def metric_definition(metric: str, protocol: Mapping[str, Any]) -> str:
    kind = metric.partition("@")[0]
    if kind == "recall":
        return str(protocol.get("recall_definition") or "hit rate: 1 if any relevant item is in the top K")
    if kind == "map":
        return str(protocol.get("map_definition") or "AP@K = (1/min(K, n_rel)) * sum_{i<=K} P(i) rel(i)")
    return metric


def metric_anchor(metric: str) -> str:
    return {"recall": "metric-recall", "map": "metric-map"}.get(metric.partition("@")[0], "metrics")


def field_anchor(key: str) -> str:
    """Anchor of a protocol field: recall_k / recall_definition -> metric-recall, tie_rule -> tie-rule."""
    head = key.split("_")[0]
    if head in ("recall", "map"):
        return metric_anchor(head + "@")
    return key.replace("_", "-")
