"""Input roles (gallery document vs query) sent in each vendor's own field, and the proxy's model
fingerprint: what changes the vectors changes it, nothing secret is in it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from pydantic import ValidationError

from services.api_proxy.model import ProxyModel, fingerprint_parts
from services.api_proxy.settings import ProxySettings
from services.common.types import ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import DEFAULT_DIMS, apply_environ, make_vendor, proxied, proxy_settings, vendor_environ
from tests.fakes.vendors import FakeVendorServer, expected_vector

# (provider, role) -> the value the vendor must receive in its role field (None: field left out).
SENT = {
    ("cohere", "document"): "search_document", ("cohere", "query"): "search_query",
    ("voyage", "document"): "document", ("voyage", "query"): "query", ("voyage", "none"): None,
    ("jina", "document"): "retrieval.passage", ("jina", "query"): "retrieval.query",
    ("gemini", "document"): "RETRIEVAL_DOCUMENT", ("gemini", "query"): "RETRIEVAL_QUERY", ("gemini", "none"): None,
    ("vertex", "none"): None, ("titan", "none"): None,
}
DEFAULT_ROLE = {"cohere": "document", "voyage": "document", "jina": "document", "gemini": "none",
                "vertex": "none", "titan": "none"}


def embed(name: str, monkeypatch, **overrides):
    images = make_images(3, start=500)

    async def scenario():
        async with proxied(name, monkeypatch, **overrides) as (fake, model):
            return fake, model.info(), await model.embed([ImageItem(str(i), d) for i, d in enumerate(images)])

    return images, *asyncio.run(scenario())


@pytest.mark.parametrize("name, role", sorted(SENT))
def test_each_role_is_sent_in_the_vendors_field_and_recorded(name, role, monkeypatch):
    images, fake, info, results = embed(name, monkeypatch, input_role=role)
    assert fake.rejections == []
    assert [r.role for r in fake.received] == [SENT[name, role]] * len(fake.received)
    for result, image in zip(results, images):
        assert result.ok, result.error
        # The fake's query adapter gives other vectors: the proxy returned the ones for this role.
        expected = expected_vector(image, DEFAULT_DIMS[name], "query" if role == "query" else "")
        np.testing.assert_allclose(result.vector, expected, rtol=1e-6)
    assert info.details["input_role"] == role
    assert f"input role {role}" in info.preprocessing


@pytest.mark.parametrize("name", sorted(DEFAULT_ROLE))
def test_without_a_setting_each_provider_uses_its_default_role(name, monkeypatch):
    _, fake, info, _ = embed(name, monkeypatch)
    assert info.details["input_role"] == DEFAULT_ROLE[name]
    assert {r.role for r in fake.received} == {SENT[name, DEFAULT_ROLE[name]]}


@pytest.mark.parametrize("name, role", [("vertex", "query"), ("titan", "document"), ("cohere", "none"),
                                        ("jina", "none")])
def test_a_role_the_vendor_does_not_offer_is_refused_at_start(name, role, monkeypatch):
    vendor = make_vendor(name)
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor) as fake:
        with pytest.raises(ValueError, match=f"{name} offers input roles .* not '{role}'"):
            ProxyModel.from_settings(proxy_settings(name, fake, input_role=role))
    assert fake.received == []


def test_an_unknown_role_name_is_refused_by_the_settings():
    with pytest.raises(ValidationError, match="input_role"):
        ProxySettings(provider="cohere", input_role="passage")


def test_the_cache_keeps_roles_apart(monkeypatch, tmp_path):
    images = make_images(2, start=520)
    batch = [ImageItem(str(i), d) for i, d in enumerate(images)]

    async def run_as(role: str):
        async with proxied("cohere", monkeypatch, no_cache=False, cache_dir=tmp_path, input_role=role) as (f, m):
            results = await m.embed(batch)
            return len(f.received), results

    documents = asyncio.run(run_as("document"))
    queries = asyncio.run(run_as("query"))
    again = asyncio.run(run_as("query"))
    assert documents[0] == 1 and queries[0] == 1 and again[0] == 0  # query vectors were not in the cache
    for image, doc, query, cached in zip(images, documents[1], queries[1], again[1]):
        np.testing.assert_allclose(doc.vector, expected_vector(image, 1536), rtol=1e-6)
        np.testing.assert_allclose(query.vector, expected_vector(image, 1536, "query"), rtol=1e-6)
        np.testing.assert_array_equal(cached.vector, query.vector)


# --- fingerprint ---------------------------------------------------------------------------------


def model_for(name: str, monkeypatch, key: str | None = None, vendor_kwargs: dict | None = None, **settings):
    """A ProxyModel (not started) against a fresh fake; returns its Info."""
    vendor = make_vendor(name, settings.get("dimension"), **({"key": key} if key else {}), **(vendor_kwargs or {}))
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor) as fake:
        model = ProxyModel.from_settings(proxy_settings(name, fake, **settings))
    return model


def test_same_configuration_gives_the_same_fingerprint_whatever_the_key_or_address(monkeypatch):
    one = model_for("cohere", monkeypatch, key="co-key-AAAA-111")
    two = model_for("cohere", monkeypatch, key="co-key-BBBB-222")  # another fake: another port too
    assert one.info().fingerprint == two.info().fingerprint
    assert one.info().fingerprint.startswith("sha256:") and len(one.info().fingerprint) == 7 + 64


def test_what_changes_the_vectors_changes_the_fingerprint(monkeypatch):
    base = model_for("voyage", monkeypatch).info().fingerprint
    others = {
        "model": model_for("voyage", monkeypatch, model="voyage-multimodal-3",
                           vendor_kwargs={"model": "voyage-multimodal-3"}).info().fingerprint,
        "dimension": model_for("voyage", monkeypatch, dimension=512).info().fingerprint,
        "role": model_for("voyage", monkeypatch, input_role="query").info().fingerprint,
        "vendor": model_for("jina", monkeypatch).info().fingerprint,
    }
    assert all(fp != base for fp in others.values()), others
    assert len(set(others.values())) == len(others)


def test_no_key_material_goes_into_the_fingerprint(monkeypatch):
    key = "co-live-SECRET-fingerprint-0042"
    model = model_for("cohere", monkeypatch, key=key)
    parts = json.dumps(fingerprint_parts(model.provider))
    assert key not in parts and "SECRET" not in parts
    assert "127.0.0.1" not in parts  # nor the address: a gateway or region gives the same vectors
    assert json.loads(parts)["input_role"] == {"role": "document", "field": "input_type", "value": "search_document"}
