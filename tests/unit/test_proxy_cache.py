"""The content-addressed cache and in-flight de-duplication: the same image never costs twice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.api_proxy.cache import EmbeddingCache
from services.common.types import ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import proxied
from tests.fakes.vendors import Fault, expected_vector


def run(coro):
    return asyncio.run(coro)


def test_put_get_roundtrip_and_keys_are_separate_per_model_and_dim(tmp_path):
    sha = "ab" * 32
    a = EmbeddingCache(tmp_path, "cohere", "embed-v4.0", 4)
    a.put(sha, np.array([1, 2, 3, 4], dtype=np.float32))
    np.testing.assert_array_equal(a.get(sha), [1, 2, 3, 4])
    assert EmbeddingCache(tmp_path, "cohere", "embed-v4.0", 8).get(sha) is None
    assert EmbeddingCache(tmp_path, "voyage", "embed-v4.0", 4).get(sha) is None
    with pytest.raises(ValueError):
        a.get("../../etc/passwd")


def test_truncated_or_non_finite_entries_are_misses(tmp_path):
    cache = EmbeddingCache(tmp_path, "jina", "jina-embeddings-v4", 4)
    sha = "cd" * 32
    cache.put(sha, np.array([1, 2, 3, 4], dtype=np.float32))
    path = cache._path(sha)
    path.write_bytes(path.read_bytes()[:8])
    assert cache.get(sha) is None
    cache.put(sha, np.array([1, np.nan, 3, 4], dtype=np.float32))
    assert cache.get(sha) is None


def test_a_rerun_is_answered_from_disk_without_calling_the_vendor(monkeypatch, tmp_path):
    images = make_images(5, start=30)
    batch = [ImageItem(str(i), d) for i, d in enumerate(images)]

    async def first_then_second():
        async with proxied("cohere", monkeypatch, no_cache=False, cache_dir=tmp_path) as (fake, model):
            first = await model.embed(batch)
            calls = len(fake.received)
        # A new process (new model) over the same directory.
        async with proxied("cohere", monkeypatch, no_cache=False, cache_dir=tmp_path) as (fake2, model2):
            second = await model2.embed(batch + [ImageItem("new", make_images(1, start=99)[0])])
            return first, second, calls, fake2, model2.usage()

    first, second, calls, fake2, usage = run(first_then_second())
    assert calls == 1
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.vector, b.vector)
    assert [r.images for r in fake2.received] == [1]  # only the new image was paid for
    assert usage["cache_hits"] == 5 and usage["cache_misses"] == 1


def test_errors_are_not_cached(monkeypatch, tmp_path):
    images = make_images(1, start=31)

    async def scenario():
        async with proxied("voyage", monkeypatch, no_cache=False, cache_dir=tmp_path) as (fake, model):
            fake.add_faults(Fault("nan"))
            bad = await model.embed([ImageItem("a", images[0])])
            good = await model.embed([ImageItem("a", images[0])])
            return bad, good

    (bad,), (good,) = run(scenario())
    assert not bad.ok and good.ok


def test_identical_images_in_flight_are_sent_once(monkeypatch):
    image = make_images(1, start=32)[0]

    async def scenario():
        async with proxied("vertex", monkeypatch, server={"latency_s": 0.1}) as (fake, model):
            one, two = await asyncio.gather(
                model.embed([ImageItem("a", image), ImageItem("b", image)]),
                model.embed([ImageItem("c", image)]),
            )
            return fake, one + two, model.usage()

    fake, results, usage = run(scenario())
    assert len(fake.received) == 1
    assert [r.id for r in results] == ["a", "b", "c"]
    for result in results:
        np.testing.assert_array_equal(result.vector, expected_vector(image, 1408))
    assert usage["deduplicated"] == 2
