"""Per-call usage: what answering ONE Embed call cost, so a run adds up its own figures.

Every vendor batch belongs to the call that sent it (its "owner") and records a `BatchCharge`:
vendor requests (retries included), retries, 429s, images the vendor billed (those in 200
answers) and their cost. When the batch ends, the owner is charged with all of it. An identical
image another call was waiting for (in-proxy de-duplication) is `cached` for that call, never
billed twice. If the owner was cancelled before its batch ended, its charge goes to the first call
that receives any of that batch's results instead, so an image that somebody received is billed
to exactly one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from services.api_proxy.usage import Price
from services.common.types import CallUsage, ItemError

Outcome = np.ndarray | ItemError


class CallLedger:
    """The usage of one call; `abandoned` once the call was cancelled before its batches ended."""

    def __init__(self) -> None:
        self.usage = CallUsage()
        self.abandoned = False


@dataclass
class BatchCharge:
    """What one vendor batch cost; mutated from the event loop only."""

    owner: CallLedger
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    billed_images: int = 0
    billed_units: dict[str, float] = field(default_factory=dict)
    claimed: bool = False

    def add_billed(self, images: int, units: Mapping[str, float]) -> None:
        self.billed_images += images
        for unit, amount in units.items():
            self.billed_units[unit] = self.billed_units.get(unit, 0.0) + amount

    def cost_usd(self, price: Price | None) -> float | None:
        """USD for the whole batch; None when something was billed at an unknown price."""
        if self.billed_images == 0:
            return 0.0
        if price is None:
            return None
        if price.unit in self.billed_units:
            return self.billed_units[price.unit] * price.usd_per_unit
        if price.unit == "images":
            return self.billed_images * price.usd_per_unit
        return None  # the vendor returned no count in the price's unit


@dataclass
class Delivery:
    """One image's result as every waiting call receives it."""

    outcome: Outcome
    charge: BatchCharge
    billed: bool  # the vendor billed this image (it was in a 200 answer)
    cost_usd: float | None  # this image's share of the batch cost
    claimed: bool = False  # its billing has been put on some call's usage


def add_cost(usage: CallUsage, cost: float | None) -> None:
    usage.cost_usd = None if usage.cost_usd is None or cost is None else usage.cost_usd + cost


def settle_batch(
    charge: BatchCharge, outcomes: list[tuple[Outcome, bool]], price: Price | None
) -> list[Delivery]:
    """Deliveries for a finished batch; the owner is charged now unless it has gone away."""
    cost = charge.cost_usd(price)
    share = None if cost is None else (cost / charge.billed_images if charge.billed_images else 0.0)
    deliveries = [Delivery(outcome, charge, billed, share if billed else 0.0) for outcome, billed in outcomes]
    if not charge.owner.abandoned:
        for delivery in deliveries:
            claim(charge.owner.usage, delivery)
    return deliveries


def claim(usage: CallUsage, delivery: Delivery) -> bool:
    """Charge `usage` with this image (and its batch's requests, once); False if already claimed."""
    if delivery.claimed:
        return False
    delivery.claimed = True
    if delivery.billed:
        usage.billed_images += 1
        add_cost(usage, delivery.cost_usd)
    charge = delivery.charge
    if not charge.claimed:
        charge.claimed = True
        usage.requests += charge.requests
        usage.retries += charge.retries
        usage.rate_limited += charge.rate_limited
    return True


def receive_joined(usage: CallUsage, delivery: Delivery) -> None:
    """A call that waited on an identical image another batch was sending: cached, unless the
    sender went away and this call is the first to receive it."""
    if not claim(usage, delivery) and isinstance(delivery.outcome, np.ndarray):
        usage.cached_images += 1
