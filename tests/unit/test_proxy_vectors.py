"""Degenerate vendor vectors: absurd norms, zeros and non-finite values are per-item INVALID_OUTPUT
errors, checked in float64, and never cached (a rerun asks the vendor again)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.api_proxy.cache import EmbeddingCache
from services.api_proxy.vectors import MAX_NORM, MIN_NORM, check_vector
from services.common.types import ErrorCode, ImageItem, ItemError
from tests.fakes.images import make_images
from tests.fakes.proxy import proxied
from tests.fakes.vendors import Fault, expected_vector

DIM = 8


@pytest.mark.parametrize("value, why", [
    (1e20, "norm 2.83e+20"),   # float32 norm overflows: normalising downstream would give zeros
    (1e-30, "norm 2.83e-30"),  # float32 norm underflows: normalising downstream would give inf
    (1e39, "norm 2.83e+39"),   # finite in float64, inf in float32
    (0.0, "all zeros"),
    (float("nan"), "non-finite"),
    (float("inf"), "non-finite"),
])
def test_degenerate_vectors_are_refused(value, why):
    outcome = check_vector([value] * DIM, DIM, "cohere")
    assert isinstance(outcome, ItemError) and outcome.code == ErrorCode.INVALID_OUTPUT
    assert outcome.message.startswith("cohere: ") and why in outcome.message


def test_norm_bounds_are_inclusive_and_checked_in_float64():
    at_min = np.full(4, MIN_NORM / 2)  # norm exactly MIN_NORM
    at_max = np.full(4, MAX_NORM / 2)
    for values in (at_min, at_max):
        vector = check_vector(values.tolist(), 4, "x")
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32
        assert np.isfinite(np.linalg.norm(vector)) and np.linalg.norm(vector) > 0


def test_ordinary_vectors_pass_unchanged_as_float32():
    values = [0.5, -0.25, 3.0, 0.0]
    vector = check_vector(values, 4, "x")
    np.testing.assert_array_equal(vector, np.array(values, dtype=np.float32))


@pytest.mark.parametrize("fault", [Fault("scale", value=1e20), Fault("scale", value=1e-30), Fault("zero")])
def test_a_refused_vector_is_a_per_item_error_and_never_cached(fault, monkeypatch, tmp_path):
    images = make_images(3, start=400)
    batch = [ImageItem(str(i), d) for i, d in enumerate(images)]

    async def scenario():
        async with proxied("cohere", monkeypatch, dim=256, no_cache=False, cache_dir=tmp_path,
                           server={"faults": [fault]}) as (fake, model):
            first = await model.embed_billed(batch)
            requests_after_first = len(fake.received)
            second = await model.embed_billed(batch)
            return fake, first, requests_after_first, second

    fake, (first, usage1), requests_after_first, (second, usage2) = asyncio.run(scenario())
    # The fault hits the first vector of the batch: only that item fails; its neighbours are fine.
    assert first[0].error is not None and first[0].error.code == ErrorCode.INVALID_OUTPUT
    assert all(r.ok for r in first[1:])
    assert usage1.billed_images == 3  # the vendor billed the 200 answer, bad vector included
    # The rerun asks the vendor again for the refused image only, and now gets a good vector.
    assert len(fake.received) == requests_after_first + 1
    assert fake.received[-1].images == 1
    assert all(r.ok for r in second)
    np.testing.assert_allclose(second[0].vector, expected_vector(images[0], 256), rtol=1e-6)
    assert (usage2.billed_images, usage2.cached_images) == (1, 2)


def test_a_cache_file_holding_a_degenerate_vector_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path, "cohere", "embed-v4.0", 4)
    sha = "ef" * 32
    for bad in ([1e-30] * 4, [0.0] * 4, [1e20] * 4):
        cache.put(sha, np.array(bad, dtype=np.float32))
        assert cache.get(sha) is None
    cache.put(sha, np.array([1, 2, 3, 4], dtype=np.float32))
    np.testing.assert_array_equal(cache.get(sha), [1, 2, 3, 4])
