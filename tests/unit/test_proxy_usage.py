"""Usage per call (`embed_billed`): each call reports what IT cost, against a fake vendor over HTTP.

Cohere's built-in price is $0.00047 per image; Gemini has no built-in price.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.types import CallUsage, ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import proxied
from tests.fakes.vendors import Fault

COHERE_PRICE = 0.00047


def items(images: list[bytes], prefix: str = "i") -> list[ImageItem]:
    return [ImageItem(f"{prefix}{n}", data) for n, data in enumerate(images)]


def figures(usage: CallUsage) -> tuple[int, int, int, int, int]:
    return usage.billed_images, usage.cached_images, usage.requests, usage.retries, usage.rate_limited


async def wait_until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_two_consecutive_calls_each_count_only_their_own_images(monkeypatch):
    images = make_images(5, start=300)

    async def scenario():
        async with proxied("cohere", monkeypatch) as (fake, model):
            first = await model.embed_billed(items(images[:3]))
            second = await model.embed_billed(items(images[3:]))
            return fake, first, second

    fake, (results1, usage1), (results2, usage2) = asyncio.run(scenario())
    assert all(r.ok for r in results1 + results2)
    assert figures(usage1) == (3, 0, 1, 0, 0)
    assert figures(usage2) == (2, 0, 1, 0, 0)
    assert usage1.cost_usd == pytest.approx(3 * COHERE_PRICE)
    assert usage2.cost_usd == pytest.approx(2 * COHERE_PRICE)
    assert len(fake.received) == 2


def test_a_repeated_image_is_cached_not_billed(monkeypatch, tmp_path):
    a, b, c = make_images(3, start=310)

    async def scenario():
        async with proxied("cohere", monkeypatch, no_cache=False, cache_dir=tmp_path) as (fake, model):
            first = await model.embed_billed(items([a, b]))
            second = await model.embed_billed(items([a, c]))
            rerun = await model.embed_billed(items([a, b, c]))
            return fake, first, second, rerun

    fake, (_, first), (results, second), (_, rerun) = asyncio.run(scenario())
    assert all(r.ok for r in results)
    assert figures(first) == (2, 0, 1, 0, 0)
    assert figures(second) == (1, 1, 1, 0, 0) and second.cost_usd == pytest.approx(COHERE_PRICE)
    # Everything from the cache: no vendor request, nothing billed, a known cost of 0.
    assert figures(rerun) == (0, 3, 0, 0, 0) and rerun.cost_usd == 0.0
    assert sorted(fake.images_embedded) == sorted([a, b, c])


def test_the_same_image_twice_in_one_call_is_billed_once(monkeypatch):
    a, b = make_images(2, start=320)

    async def scenario():
        async with proxied("cohere", monkeypatch) as (fake, model):
            return fake, await model.embed_billed(items([a, b, a]))

    fake, (results, usage) = asyncio.run(scenario())
    assert all(r.ok for r in results)
    assert figures(usage) == (2, 1, 1, 0, 0)
    assert fake.images_embedded == [a, b]


def test_a_429_then_success_counts_one_rate_limit_one_retry_two_requests(monkeypatch):
    images = make_images(2, start=330)

    async def scenario():
        server = {"faults": [Fault("429", retry_after="0")]}
        async with proxied("cohere", monkeypatch, server=server) as (fake, model):
            return await model.embed_billed(items(images))

    results, usage = asyncio.run(scenario())
    assert all(r.ok for r in results)
    assert figures(usage) == (2, 0, 2, 1, 1)
    assert usage.cost_usd == pytest.approx(2 * COHERE_PRICE)


def test_failed_requests_are_counted_but_not_billed(monkeypatch):
    images = make_images(2, start=340)

    async def scenario():
        server = {"faults": [Fault("status", status=401, message="bad key")]}
        async with proxied("cohere", monkeypatch, server=server) as (fake, model):
            return await model.embed_billed(items(images))

    results, usage = asyncio.run(scenario())
    assert not any(r.ok for r in results)
    assert figures(usage) == (0, 0, 1, 0, 0) and usage.cost_usd == 0.0


def test_unknown_price_gives_cost_none(monkeypatch):
    images = make_images(3, start=350)

    async def scenario():
        async with proxied("gemini", monkeypatch, dim=768) as (fake, model):
            return await model.embed_billed(items(images))

    results, usage = asyncio.run(scenario())
    assert all(r.ok for r in results)
    assert usage.billed_images == 3 and usage.cost_usd is None


def test_a_price_in_tokens_uses_the_tokens_the_vendor_billed(monkeypatch):
    images = make_images(4, start=360)  # 64x48 pixels each: Voyage bills pixels / 560 tokens

    async def scenario():
        async with proxied("voyage", monkeypatch) as (fake, model):
            return await model.embed_billed(items(images))

    _, usage = asyncio.run(scenario())
    assert usage.billed_images == 4
    assert usage.cost_usd == pytest.approx((4 * 64 * 48 // 560) * 0.12e-6)


def test_concurrent_calls_sharing_an_image_bill_it_once_to_the_sender(monkeypatch):
    x, y, z = make_images(3, start=370)
    hold = threading.Event()

    async def scenario():
        async with proxied("cohere", monkeypatch, server={"hold": hold}) as (fake, model):
            first = asyncio.create_task(model.embed_billed(items([x, y], "a")))
            await wait_until(lambda: len(fake.received) == 1, "the first call's request reached the vendor")
            second = asyncio.create_task(model.embed_billed(items([x, z], "b")))
            await wait_until(lambda: model.usage()["deduplicated"] == 1, "the second call joined x in flight")
            hold.set()
            return fake, await first, await second

    fake, (results1, usage1), (results2, usage2) = asyncio.run(scenario())
    assert all(r.ok for r in results1 + results2)
    assert figures(usage1) == (2, 0, 1, 0, 0)
    assert figures(usage2) == (1, 1, 1, 0, 0)
    assert usage1.billed_images + usage2.billed_images == len(fake.images_embedded) == 3


def test_a_cancelled_sender_passes_its_bill_to_the_call_that_receives_the_image(monkeypatch):
    x = make_images(1, start=380)[0]
    hold = threading.Event()

    async def scenario():
        async with proxied("cohere", monkeypatch, server={"hold": hold}) as (fake, model):
            sender = asyncio.create_task(model.embed_billed(items([x], "a")))
            await wait_until(lambda: len(fake.received) == 1, "the sender's request reached the vendor")
            joiner = asyncio.create_task(model.embed_billed(items([x], "b")))
            await wait_until(lambda: model.usage()["deduplicated"] == 1, "the joiner waits on x")
            sender.cancel()  # e.g. the gRPC client went away
            with pytest.raises(asyncio.CancelledError):
                await sender
            hold.set()
            return fake, await joiner

    fake, (results, usage) = asyncio.run(scenario())
    assert results[0].ok
    # The vendor billed x once; the only call that got it pays for it and its request.
    assert figures(usage) == (1, 0, 1, 0, 0) and usage.cost_usd == pytest.approx(COHERE_PRICE)
    assert len(fake.received) == 1
