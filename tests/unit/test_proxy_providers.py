"""Every provider against its fake vendor: exact requests, answers mapped to the right images,
batch limits, chosen dimensions, and every kind of bad answer turned into an error."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from services.api_proxy.providers.registry import PROVIDERS
from services.common.types import ErrorCode, ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import DEFAULT_DIMS, OTHER_DIMS, PROVIDER_NAMES, make_vendor, proxied
from tests.fakes.vendors import Fault, expected_vector

# Vendor batch each provider must use when nothing else limits it.
VENDOR_BATCH = {"cohere": 96, "vertex": 1, "gemini": 6, "voyage": 128, "jina": 32, "titan": 1}


def items(images: list[bytes], prefix: str = "img") -> list[ImageItem]:
    return [ImageItem(f"{prefix}{i}", data) for i, data in enumerate(images)]


def run(coro):
    return asyncio.run(coro)


def test_registry_names_every_provider():
    assert set(PROVIDERS) == set(PROVIDER_NAMES)


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_each_image_gets_its_own_vector_in_request_order(name, monkeypatch):
    images = make_images(13, start=100)

    async def scenario():
        async with proxied(name, monkeypatch) as (fake, model):
            results = await model.embed(items(images))
            return fake, model, results

    fake, model, results = run(scenario())
    assert fake.rejections == []
    assert [r.id for r in results] == [f"img{i}" for i in range(13)]
    for result, image in zip(results, images):
        assert result.ok, result.error
        assert result.vector.dtype == np.float32
        np.testing.assert_allclose(result.vector, expected_vector(image, DEFAULT_DIMS[name]), rtol=1e-6)
    # The vendor received each image exactly once, in the vendor's batch size.
    assert sorted(fake.images_embedded) == sorted(images)
    sizes = [r.images for r in fake.received]
    assert max(sizes) <= VENDOR_BATCH[name]
    assert len(sizes) == -(-13 // VENDOR_BATCH[name])
    info = model.info()
    assert info.name.startswith(f"{name}/") and info.dim == DEFAULT_DIMS[name]
    assert info.details["vendor_batch"] == str(VENDOR_BATCH[name])


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_chosen_dimension_is_sent_and_checked(name, monkeypatch):
    dim = OTHER_DIMS[name]
    images = make_images(3, start=7)

    async def scenario():
        async with proxied(name, monkeypatch, dim=dim) as (fake, model):
            return fake, model.info(), await model.embed(items(images))

    fake, info, results = run(scenario())
    assert fake.rejections == []
    assert info.dim == dim
    assert all(r.ok and r.vector.shape == (dim,) for r in results)


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_a_dimension_the_vendor_does_not_offer_is_refused_at_start(name, monkeypatch):
    from services.api_proxy.model import ProxyModel
    from tests.fakes.proxy import apply_environ, proxy_settings, vendor_environ
    from tests.fakes.vendors import FakeVendorServer

    vendor = make_vendor(name)
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor) as fake:
        with pytest.raises(ValueError, match="does not offer dimension 4099"):
            ProxyModel.from_settings(proxy_settings(name, fake, dimension=4099))


BAD_ANSWERS = [
    (Fault("malformed"), "not JSON"),
    (Fault("dims"), "expected ("),
    (Fault("nan"), "NaN"),
    (Fault("null"), "non-numbers"),
]


@pytest.mark.parametrize("name", PROVIDER_NAMES)
@pytest.mark.parametrize("fault,message", BAD_ANSWERS, ids=[f.kind for f, _ in BAD_ANSWERS])
def test_bad_answers_become_invalid_output_never_silent(name, fault, message, monkeypatch):
    images = make_images(2, start=40)

    async def scenario():
        async with proxied(name, monkeypatch, max_batch=2) as (fake, model):
            fake.add_faults(fault)
            return await model.embed(items(images)), model.usage()

    results, usage = run(scenario())
    failed = [r for r in results if not r.ok]
    assert failed, "a corrupted answer must not pass as vectors"
    for result in failed:
        assert result.error.code == ErrorCode.INVALID_OUTPUT
        assert message in result.error.message
    # Every item is accounted for; the ones the vendor answered correctly still carry vectors.
    assert len(results) == 2 and all(r.ok or r.error for r in results)
    assert usage["items_failed"] == len(failed)


@pytest.mark.parametrize("name", ["cohere", "gemini", "voyage", "jina", "vertex"])
def test_wrong_vector_count_fails_the_whole_request(name, monkeypatch):
    # Batches of 2 where the vendor allows it; Vertex (one per call) gets 2 vectors for 1 image.
    images = make_images(2, start=60)

    async def scenario():
        async with proxied(name, monkeypatch, max_batch=2) as (fake, model):
            fake.add_faults(Fault("count"))
            return await model.embed(items(images))

    results = run(scenario())
    failed = [r for r in results if not r.ok]
    assert failed
    assert all(r.error.code == ErrorCode.INVALID_OUTPUT and "vectors for" in r.error.message for r in failed)


def test_titan_answer_without_a_single_embedding_is_an_error(monkeypatch):
    async def scenario():
        async with proxied("titan", monkeypatch) as (fake, model):
            fake.add_faults(Fault("count"))
            return await model.embed(items(make_images(1)))

    (result,) = run(scenario())
    assert result.error.code == ErrorCode.INVALID_OUTPUT and "embedding" in result.error.message


def test_gemini_sends_one_image_part_per_content(monkeypatch):
    images = make_images(5, start=3)

    async def scenario():
        async with proxied("gemini", monkeypatch) as (fake, model):
            await model.embed(items(images))
            return fake

    fake = run(scenario())
    assert [r.images for r in fake.received] == [5]
    assert sorted(fake.images_embedded) == sorted(images)
    assert "x-goog-api-key" in fake.headers_seen[0] and "authorization" not in fake.headers_seen[0]


def test_voyage_answers_out_of_order_are_put_back_by_index(monkeypatch):
    images = make_images(6, start=11)
    vendor = make_vendor("voyage", shuffle=True)

    async def scenario():
        async with proxied("voyage", monkeypatch, vendor=vendor) as (fake, model):
            return await model.embed(items(images)), model.usage()

    results, usage = run(scenario())
    for result, image in zip(results, images):
        np.testing.assert_allclose(result.vector, expected_vector(image, 1024), rtol=1e-6)
    assert usage["billed_units"]["tokens"] > 0 and usage["billed_units"]["image_pixels"] == 6 * 64 * 48


def test_voyage_multimodal_3_sends_no_output_dimension(monkeypatch):
    vendor = make_vendor("voyage", model="voyage-multimodal-3")

    async def scenario():
        async with proxied("voyage", monkeypatch, vendor=vendor, model="voyage-multimodal-3") as (fake, model):
            return fake, await model.embed(items(make_images(2)))

    fake, results = run(scenario())
    assert fake.rejections == [] and all(r.ok for r in results)


@pytest.mark.parametrize("role, input_type", [(None, "search_document"), ("document", "search_document"),
                                              ("query", "search_query")])
def test_cohere_request_body_is_exactly_the_documented_shape(role, input_type):
    """Read back what went over the wire, independently of the fake's own checks."""
    from services.api_proxy.providers.cohere import CohereProvider
    from services.api_proxy.credentials import HeaderKeyAuth
    from services.api_proxy.images import prepare

    provider = CohereProvider(CohereProvider.models["embed-v4.0"], 512, "https://api.cohere.com",
                              HeaderKeyAuth("k", "t"), role)
    image = make_images(1)[0]
    call = provider.build([prepare(image, provider.spec.images)])
    assert call.url == "https://api.cohere.com/v2/embed" and call.method == "POST"
    body = json.loads(call.body)
    assert body == {
        "model": "embed-v4.0", "input_type": input_type, "embedding_types": ["float"], "output_dimension": 512,
        "inputs": [{"content": [{"type": "image_url", "image_url": {
            "url": "data:image/jpeg;base64," + base64.b64encode(image).decode()}}]}],
    }


def test_unknown_model_names_the_known_ones(monkeypatch):
    from services.api_proxy.providers.registry import provider_class

    with pytest.raises(ValueError, match="voyage-multimodal-3.5"):
        provider_class("voyage").spec_for("voyage-2")
