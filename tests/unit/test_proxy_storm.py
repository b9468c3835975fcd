"""Fault storm: every image ends with its own vector or a reported error, none lost or duplicated,
and the fake vendor's own clock shows the configured rates were never exceeded."""

from __future__ import annotations

import asyncio
import collections

import numpy as np
import pytest

from services.common.types import ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import DEFAULT_DIMS, proxied
from tests.fakes.vendors import Fault, expected_vector

STORM = [
    Fault("429"), Fault("429", retry_after="0"), Fault("status", status=500), Fault("status", status=503),
    Fault("drop"), Fault("slow", seconds=0.8), Fault("malformed"), Fault("count"), Fault("dims"),
    Fault("nan"), Fault("429", retry_after="0.2"), Fault("status", status=502),
]


def storm(name: str, monkeypatch, *, images: int, calls: int, rpm: float, ipm: float, **overrides):
    unique = make_images(images, start=500)
    # Duplicates across and within calls, plus undecodable items.
    pool = unique + unique[:5] + [b"\xff\xd8 truncated", b""]
    per_call = len(pool) // calls + 1
    batches = [
        [ImageItem(f"c{c}-{i}", data) for i, data in enumerate(pool[c::calls])] for c in range(calls)
    ]
    assert sum(len(b) for b in batches) == len(pool) and per_call

    async def scenario():
        async with proxied(
            name, monkeypatch, rpm=rpm, ipm=ipm, concurrency=6, timeout_s=0.3, max_attempts=10,
            server={"random_429": 0.15, "seed": 7, "faults": list(STORM)}, **overrides,
        ) as (fake, model):
            results = await asyncio.gather(*(model.embed(batch) for batch in batches))
            return fake, results, model.usage()

    fake, results, usage = asyncio.run(scenario())
    dim = DEFAULT_DIMS[name]
    seen = collections.Counter()
    outcomes = collections.Counter()
    for batch, answer in zip(batches, results):
        assert [r.id for r in answer] == [item.id for item in batch]  # none lost, none reordered
        for item, result in zip(batch, answer):
            seen[item.id] += 1
            if result.ok:
                outcomes["vector"] += 1
                np.testing.assert_allclose(result.vector, expected_vector(item.data, dim), rtol=1e-6)
            else:
                outcomes[result.error.code.name] += 1
                assert result.error.message
    assert set(seen.values()) == {1} and len(seen) == len(pool)
    # Every fault in the script was met, the random 429s too.
    assert not fake.faults
    assert usage["http_429"] >= 3 and usage["retries"] >= 8
    # Each distinct image was embedded by the vendor at most once (dedup + cache of in-flight work).
    embedded = collections.Counter(fake.images_embedded)
    assert max(embedded.values()) == 1
    # Retryable faults all recovered (10 attempts outlast the 8 scripted ones); corrupted answers
    # failed only their own request's items (batch of <= 4) and duplicates waiting on them.
    assert outcomes["UPSTREAM_ERROR"] == 0 and outcomes["INVALID_IMAGE"] == 2
    assert 2 <= outcomes["INVALID_OUTPUT"] <= 4 + 4 + 1 + 1 + 5
    assert sum(outcomes.values()) == len(pool)
    assert usage["items_failed"] == len(pool) - outcomes["vector"]
    # The rates, measured where they matter: on arrival at the vendor.
    assert fake.rate_violations(rpm) == []
    assert fake.rate_violations(ipm, images=True) == []
    return fake, usage


@pytest.mark.slow
def test_fault_storm_with_batches(monkeypatch):
    fake, usage = storm("cohere", monkeypatch, images=60, calls=5, rpm=600, ipm=2400, max_batch=4)
    assert max(r.images for r in fake.received) <= 4


@pytest.mark.slow
def test_fault_storm_one_image_per_request(monkeypatch):
    fake, usage = storm("vertex", monkeypatch, images=30, calls=4, rpm=1200, ipm=1200)
    assert {r.images for r in fake.received} == {1}


def test_the_rate_check_catches_a_client_that_ignores_the_limit(monkeypatch):
    """The fake's clock check has teeth: an unlimited proxy is caught at a 600/min limit."""
    images = [ImageItem(str(i), d) for i, d in enumerate(make_images(40, start=900))]

    async def scenario():
        async with proxied("vertex", monkeypatch, rpm=0, ipm=0, concurrency=8) as (fake, model):
            await model.embed(images)
            return fake

    fake = asyncio.run(scenario())
    assert fake.rate_violations(600)
