"""Client-side limits for one (provider, model): requests/min, images/min, requests in flight.

A vendor counts per minute. A plain token bucket refilling at limit/60 per second with a burst
of B would admit limit + B in some 60 s window. Here the refill rate is (limit - B)/(60 + J):
any window of T seconds admits at most B + rate * T units, so even when requests reach the vendor
up to J seconds closer together than they left (network and scheduling jitter, default 0.5 s) no
vendor-side minute holds more than `limit`. The sustained rate is (60 - B_s)/(60 + J) of the limit
(0.975 with the 1 s default burst). Buckets start empty, so a cold start does not open with a burst
on top of connection set-up jitter.

Each attempt (first try or retry) takes one request token and its images' tokens just before it
is sent; images of an attempt the vendor did not process (429, 5xx) are refunded, since vendors
count embedded inputs, while the request token stays spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable
from services.common.errors import ConfigError

DEFAULT_JITTER_S = 0.5


class TokenBucket:
    def __init__(
        self,
        per_minute: float,
        burst_seconds: float = 1.0,
        jitter_s: float = DEFAULT_JITTER_S,
        clock: Callable[[], float] = time.monotonic,
        start_full: bool = False,
    ) -> None:
        if not 0 < burst_seconds < 60:
            raise ConfigError("burst_seconds must be in (0, 60)")
        if jitter_s < 0:
            raise ConfigError("jitter_s must be >= 0")
        self.per_minute = float(per_minute)
        self.capacity = max(1.0, self.per_minute * burst_seconds / 60.0)
        if self.per_minute <= self.capacity:
            raise ConfigError(f"a limit of {per_minute:g}/min is below one burst of {self.capacity:g}")
        self.rate = (self.per_minute - self.capacity) / (60.0 + jitter_s)
        self._clock = clock
        self._tokens = self.capacity if start_full else 0.0
        self._stamp = clock()
        # Held while a waiter sleeps, so waiters are served in arrival order and a large
        # request is never starved by small ones.
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` units are available (0 when they are now)."""
        if amount > self.capacity:
            raise ValueError(f"{amount:g} units exceed the bucket's burst of {self.capacity:g}")
        self._refill()
        return max(0.0, (amount - self._tokens) / self.rate)

    def take(self, amount: float) -> None:
        self._refill()
        self._tokens -= amount

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            while (wait := self.wait_time(amount)) > 0:
                await asyncio.sleep(wait)
            self.take(amount)

    def refund(self, amount: float) -> None:
        self._refill()
        self._tokens = min(self.capacity, self._tokens + amount)


@dataclass(frozen=True, slots=True)
class Limits:
    """Effective limits; None means unlimited."""

    requests_per_minute: float | None
    images_per_minute: float | None
    concurrency: int
    burst_seconds: float = 1.0
    jitter_s: float = DEFAULT_JITTER_S

    def as_dict(self) -> dict:
        return {
            "requests_per_minute": self.requests_per_minute,
            "images_per_minute": self.images_per_minute,
            "concurrency": self.concurrency,
            "burst_seconds": self.burst_seconds,
            "jitter_s": self.jitter_s,
        }


class Slot:
    """One admitted attempt; `refund_images` gives back its image tokens."""

    def __init__(self, limiter: "RateLimiter", images: int) -> None:
        self._limiter = limiter
        self._images = images
        self.waited_s = 0.0

    def refund_images(self) -> None:
        if self._limiter.images is not None and self._images:
            self._limiter.images.refund(self._images)
            self._images = 0


class RateLimiter:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.requests, self.images = (
            TokenBucket(per_minute, limits.burst_seconds, limits.jitter_s) if per_minute else None
            for per_minute in (limits.requests_per_minute, limits.images_per_minute)
        )
        self._in_flight = asyncio.Semaphore(limits.concurrency) if limits.concurrency > 0 else None
        self._lock = asyncio.Lock()

    def max_images_per_request(self) -> int | None:
        """A request may carry no more images than one burst of the images bucket."""
        return int(self.images.capacity) if self.images is not None else None

    async def _take_tokens(self, images: int) -> None:
        # Both buckets at once: holding one bucket's token while waiting for the other would
        # let requests bunch up when they finally leave.
        wanted = [(bucket, amount) for bucket, amount in ((self.requests, 1), (self.images, images))
                  if bucket is not None and amount]
        if not wanted:
            return
        async with self._lock:
            while (wait := max(bucket.wait_time(amount) for bucket, amount in wanted)) > 0:
                await asyncio.sleep(wait)
            for bucket, amount in wanted:
                bucket.take(amount)

    @contextlib.asynccontextmanager
    async def slot(self, images: int) -> AsyncIterator[Slot]:
        # In-flight slot first, tokens second, send right after: tokens taken while waiting for
        # a slot would let a backlog leave at once and break the per-window bound at the vendor.
        started = time.monotonic()
        if self._in_flight is not None:
            await self._in_flight.acquire()
        try:
            await self._take_tokens(images)
            slot = Slot(self, images)
            slot.waited_s = time.monotonic() - started
            yield slot
        finally:
            if self._in_flight is not None:
                self._in_flight.release()
