"""Token buckets (on a fake clock: exact arithmetic, no sleeping) and the limiter's slots."""

from __future__ import annotations

import asyncio

import pytest

from services.api_proxy.ratelimit import Limits, RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_never_admits_more_than_the_limit_in_any_minute():
    clock = Clock()
    bucket = TokenBucket(120, burst_seconds=1.0, jitter_s=0.5, clock=clock, start_full=True)
    assert bucket.capacity == 2 and bucket.rate == pytest.approx(118 / 60.5)
    admitted = []
    for _ in range(3 * 60 * 100):  # step 10 ms for 3 minutes, take whenever possible
        if bucket.wait_time(1) == 0:
            bucket.take(1)
            admitted.append(clock.now)
        clock.now += 0.01
    # Any window of 60.5 s (60 s at the vendor plus 0.5 s of jitter) holds at most 120.
    for i, start in enumerate(admitted):
        inside = sum(1 for t in admitted[i:] if t < start + 60.5)
        assert inside <= 120
    assert len(admitted) == pytest.approx(2 + 118 / 60.5 * 180, abs=2)


def test_buckets_start_empty_unless_asked():
    clock = Clock()
    assert TokenBucket(600, clock=clock).wait_time(1) > 0
    assert TokenBucket(600, clock=clock, start_full=True).wait_time(10) == 0


def test_wait_time_is_exact_and_refunds_are_capped():
    clock = Clock()
    bucket = TokenBucket(660, burst_seconds=6, jitter_s=0, clock=clock, start_full=True)  # 66, 9.9/s
    bucket.take(66)
    assert bucket.wait_time(5) == pytest.approx(5 / 9.9)
    bucket.refund(1000)
    assert bucket.wait_time(66) == 0
    with pytest.raises(ValueError, match="exceed"):
        bucket.wait_time(67)


def test_limits_below_one_burst_are_refused():
    with pytest.raises(ValueError):
        TokenBucket(1)
    with pytest.raises(ValueError):
        TokenBucket(100, burst_seconds=60)


def test_slots_bound_requests_in_flight():
    limiter = RateLimiter(Limits(requests_per_minute=None, images_per_minute=None, concurrency=3))
    active = peak = 0

    async def one():
        nonlocal active, peak
        async with limiter.slot(1):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    async def many():
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(many())
    assert peak == 3


def test_images_per_request_never_exceed_one_burst():
    limiter = RateLimiter(Limits(requests_per_minute=1000, images_per_minute=600, concurrency=0))
    assert limiter.max_images_per_request() == 10


def test_refunded_images_can_be_used_again_at_once():
    limiter = RateLimiter(Limits(requests_per_minute=None, images_per_minute=600, concurrency=0))

    async def scenario():
        await asyncio.sleep(limiter.images.wait_time(10))  # buckets start empty
        async with limiter.slot(10) as slot:
            slot.refund_images()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with limiter.slot(10):
            pass
        return loop.time() - started

    assert asyncio.run(scenario()) < 0.1
