"""Retries and faults through real HTTP: 429 with and without Retry-After (seconds and HTTP date),
5xx, timeouts, dropped connections, final 4xx errors with the vendor's words, redacted."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.api_proxy.http import parse_retry_after
from services.common.types import ErrorCode, ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import proxied
from tests.fakes.vendors import Fault, expected_vector, http_date


def run(coro):
    return asyncio.run(coro)


def one_item(seed: int = 0) -> list[ImageItem]:
    return [ImageItem("a", make_images(1, start=seed)[0])]


def embed_with(name, monkeypatch, faults, **overrides):
    async def scenario():
        async with proxied(name, monkeypatch, **overrides) as (fake, model):
            fake.add_faults(*faults)
            started = time.monotonic()
            results = await model.embed(one_item())
            return fake, results, model.usage(), time.monotonic() - started

    return run(scenario())


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    assert 9 <= parse_retry_after(http_date(10), now=now) <= 11
    assert parse_retry_after(http_date(-30)) == 0.0


@pytest.mark.parametrize("name", ["cohere", "vertex", "titan"])
@pytest.mark.parametrize("fault", [
    Fault("429"), Fault("status", status=500), Fault("status", status=503), Fault("drop"),
], ids=["429", "500", "503", "drop"])
def test_transient_faults_are_retried_until_success(name, fault, monkeypatch):
    fake, results, usage, _ = embed_with(name, monkeypatch, [fault, fault])
    (result,) = results
    assert result.ok
    assert [r.fault for r in fake.received] == [fault.kind, fault.kind, ""]
    assert usage["retries"] == 2 and usage["requests"] == 3 and usage["requests_ok"] == 1
    assert usage["http_429"] == (2 if fault.kind == "429" else 0)


def test_retry_after_seconds_is_honoured_on_the_vendor_clock(monkeypatch):
    fake, results, usage, _ = embed_with("cohere", monkeypatch, [Fault("429", retry_after="1")])
    assert results[0].ok
    first, second = fake.received
    assert second.at - first.at >= 0.95  # backoff alone would be ~1 ms


def test_retry_after_http_date_is_honoured(monkeypatch):
    fake, results, _, _ = embed_with("voyage", monkeypatch, [Fault("429", retry_after=http_date(2))])
    assert results[0].ok
    first, second = fake.received
    # HTTP dates have 1 s resolution: "2 s from now" is 1 to 2 s away.
    assert second.at - first.at >= 0.9


def test_google_retry_info_in_the_body_counts_as_retry_after(monkeypatch):
    from services.api_proxy.providers._google import retry_info_delay
    import httpx

    response = httpx.Response(429, json={"error": {"code": 429, "message": "quota", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}})
    assert retry_info_delay(response) == 1.5
    assert retry_info_delay(httpx.Response(429, text="nope")) is None


def test_retry_after_longer_than_the_limit_ends_the_call(monkeypatch):
    fake, results, usage, elapsed = embed_with(
        "cohere", monkeypatch, [Fault("429", retry_after="3600")], max_retry_after_s=5)
    assert results[0].error.code == ErrorCode.UPSTREAM_ERROR
    assert "3600s" in results[0].error.message and len(fake.received) == 1
    assert elapsed < 2


def test_slow_answers_time_out_and_are_retried(monkeypatch):
    fake, results, usage, _ = embed_with(
        "jina", monkeypatch, [Fault("slow", seconds=1.0)], timeout_s=0.3)
    assert results[0].ok
    assert usage["timeouts"] == 1 and usage["retries"] == 1


def test_attempts_are_bounded_and_the_last_error_is_reported(monkeypatch):
    fake, results, usage, _ = embed_with(
        "gemini", monkeypatch, [Fault("status", status=503, message="backend unavailable")] * 10, max_attempts=3)
    (result,) = results
    assert result.error.code == ErrorCode.UPSTREAM_ERROR
    assert "HTTP 503" in result.error.message and "backend unavailable" in result.error.message
    assert "after 3 attempts" in result.error.message
    assert len(fake.received) == 3 and usage["retries"] == 2


def test_a_final_4xx_is_not_retried_and_carries_the_vendor_message_redacted(monkeypatch):
    key = "test-key"  # the Cohere fake's key; a vendor echoing it must not leak it
    fault = Fault("status", status=403, message=f"key {key} is not allowed to use embed-v4.0")
    fake, results, usage, _ = embed_with("cohere", monkeypatch, [fault])
    (result,) = results
    assert len(fake.received) == 1 and usage["retries"] == 0
    assert result.error.code == ErrorCode.UPSTREAM_ERROR
    assert "HTTP 403" in result.error.message and "not allowed to use embed-v4.0" in result.error.message
    assert key not in result.error.message and "[REDACTED]" in result.error.message


def test_a_bad_request_for_a_batch_is_split_to_find_the_bad_image(monkeypatch):
    images = make_images(4, start=20)

    async def scenario():
        async with proxied("cohere", monkeypatch, server={"poison": {images[2]}}) as (fake, model):
            return fake, await model.embed([ImageItem(str(i), d) for i, d in enumerate(images)])

    fake, results = run(scenario())
    # 4 refused -> halves [0,1] ok and [2,3] refused -> [2] refused, [3] ok.
    assert sorted(r.images for r in fake.received) == [1, 1, 2, 2, 4]
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error.code == ErrorCode.UPSTREAM_ERROR
    assert "could not process one of the inputs" in results[2].error.message
    for result in results:
        if result.ok:
            assert (result.vector == expected_vector(images[int(result.id)], 1536)).all()


def test_a_wrong_key_is_reported_without_the_key(monkeypatch):
    from tests.fakes.proxy import apply_environ, make_vendor, proxy_settings
    from tests.fakes.vendors import FakeVendorServer
    from services.api_proxy.model import ProxyModel

    vendor = make_vendor("voyage")
    apply_environ(monkeypatch, {"VOYAGE_API_KEY": "pa-wrong-key-0123456789"})

    async def scenario():
        with FakeVendorServer(vendor) as fake:
            async with ProxyModel.from_settings(proxy_settings("voyage", fake)) as model:
                return await model.embed(one_item())

    (result,) = run(scenario())
    assert "HTTP 401" in result.error.message and "invalid api token" in result.error.message
    assert "pa-wrong-key-0123456789" not in result.error.message
