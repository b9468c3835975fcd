"""Prices, and the running totals of one proxy process (requests, images, retries, 429s, cache
hits, billed units, estimated price) for operators.

The totals are served as JSON in `Info().details["lifetime_usage"]`. They cover everything the
process did, for every client: results never use them. What one call cost travels on its own
EmbedResponse (accounting.py).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from services.common.errors import ConfigError

USAGE_DETAILS_KEY = "lifetime_usage"
USAGE_SCHEMA = "vsbench.proxy.usage/1"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per unit; `unit` is a billed-units key ("images", "tokens", ...)."""

    unit: str
    usd_per_unit: float
    source: str = ""

    def as_dict(self) -> dict:
        return {"unit": self.unit, "usd_per_unit": self.usd_per_unit, "source": self.source}


def load_price_table(path: Path) -> dict[str, Price]:
    """A JSON or YAML file: {"cohere/embed-v4.0": {"unit": "images", "usd_per_unit": 0.00047}, ...}."""
    text = Path(path).read_text()
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"price table {path}: not valid YAML: {exc}") from None
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ConfigError(f"price table {path}: expected a mapping of 'provider/model' to prices")
    table = {}
    for key, entry in raw.items():
        try:
            table[key] = Price(str(entry["unit"]), float(entry["usd_per_unit"]), str(entry.get("source", path)))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"price table {path}: entry {key!r} needs 'unit' and numeric 'usd_per_unit'") from None
    return table


class Usage:
    """Counters for one proxy process; mutated from the event loop thread only."""

    def __init__(self, provider: str, model: str, price: Price | None) -> None:
        self.provider = provider
        self.model = model
        self.price = price
        self.counts: Counter[str] = Counter()
        self.billed: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def add_billed(self, units: Mapping[str, float]) -> None:
        for unit, amount in units.items():
            self.billed[unit] += amount

    def add_error(self, code: str, amount: int = 1) -> None:
        self.errors[code] += amount

    def estimated_cost(self) -> tuple[float | None, str]:
        """(USD, basis): billed units from the vendor when it returned them, else our image count."""
        if self.price is None:
            return None, "no price known for this model"
        if self.price.unit in self.billed:
            return self.billed[self.price.unit] * self.price.usd_per_unit, f"vendor-billed {self.price.unit}"
        if self.price.unit == "images":
            return self.counts["images_embedded"] * self.price.usd_per_unit, "images embedded (vendor sent no count)"
        return None, f"vendor returned no {self.price.unit!r} units"

    def snapshot(self) -> dict:
        cost, basis = self.estimated_cost()
        fields = (
            "requests", "requests_ok", "images_sent", "images_embedded", "retries", "http_429",
            "timeouts", "connection_errors", "cache_hits", "cache_misses", "deduplicated",
            "images_reencoded", "images_downscaled", "items_failed",
        )
        return {
            "schema": USAGE_SCHEMA,
            "provider": self.provider,
            "model": self.model,
            **{name: int(self.counts[name]) for name in fields},
            "errors": dict(self.errors),
            "billed_units": dict(self.billed),
            "price": self.price.as_dict() if self.price else None,
            "estimated_cost_usd": round(cost, 6) if cost is not None else None,
            "cost_basis": basis,
        }
