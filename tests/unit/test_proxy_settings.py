"""Settings resolution (flags, VSBENCH_PROXY_*, VSBENCH_<PROVIDER>_BASE_URL), limits, prices, usage."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.api_proxy.__main__ import parse_settings
from services.api_proxy.model import ProxyModel
from services.api_proxy.settings import ProxySettings
from services.api_proxy.usage import load_price_table
from services.common.types import ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import apply_environ, make_vendor, proxied, vendor_environ
from tests.fakes.vendors import FakeVendorServer


def test_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("VSBENCH_PROXY_RPM", "77")
    monkeypatch.setenv("VSBENCH_PROXY_PORT", "6000")
    settings, level = parse_settings(["--provider", "voyage", "--model", "voyage-multimodal-3", "--port", "0",
                                      "--ipm", "50", "--cache-dir", "/tmp/c", "--log-level", "debug"])
    assert (settings.provider, settings.model, settings.port, settings.ipm, settings.rpm) == (
        "voyage", "voyage-multimodal-3", 0, 50, 77)
    assert str(settings.cache_dir) == "/tmp/c" and level == "debug"


def test_base_url_comes_from_the_flag_then_the_provider_variable():
    environ = {"VSBENCH_JINA_BASE_URL": "https://gateway.example/jina"}
    assert ProxySettings(provider="jina").resolved_base_url(environ) == "https://gateway.example/jina"
    assert ProxySettings(provider="jina", base_url="http://x").resolved_base_url(environ) == "http://x"
    assert ProxySettings(provider="cohere").resolved_base_url(environ) is None


def test_provider_base_url_variable_reaches_the_vendor(monkeypatch):
    vendor = make_vendor("jina")
    apply_environ(monkeypatch, vendor_environ(vendor))
    with FakeVendorServer(vendor) as fake:
        monkeypatch.setenv("VSBENCH_JINA_BASE_URL", fake.url)

        async def scenario():
            settings = ProxySettings(provider="jina", no_cache=True)
            async with ProxyModel.from_settings(settings) as model:
                return model.info(), await model.embed([ImageItem("a", make_images(1)[0])])

        info, (result,) = asyncio.run(scenario())
    assert result.ok and info.details["endpoint"] == fake.url


def test_default_limits_come_from_the_vendor_and_zero_lifts_them(monkeypatch):
    vendor = make_vendor("cohere")
    apply_environ(monkeypatch, vendor_environ(vendor))
    defaults = ProxyModel.from_settings(ProxySettings(provider="cohere", no_cache=True))
    assert defaults.limits.requests_per_minute == 2000 and defaults.limits.images_per_minute == 400
    # 400 images/min with a 1 s burst: no request may carry more than 6 images.
    assert defaults.vendor_batch == 6
    lifted = ProxyModel.from_settings(ProxySettings(provider="cohere", no_cache=True, rpm=0, ipm=0, concurrency=0))
    assert lifted.limits.requests_per_minute is None and lifted.limits.concurrency == 0
    assert lifted.vendor_batch == 96


def test_price_table_overrides_and_cost_follows_billed_units(monkeypatch, tmp_path):
    table = tmp_path / "prices.yaml"
    table.write_text("voyage/voyage-multimodal-3.5:\n  unit: tokens\n  usd_per_unit: 0.000001\n")
    assert load_price_table(table)["voyage/voyage-multimodal-3.5"].usd_per_unit == 1e-6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x/y": {"unit": "images"}}))
    with pytest.raises(ValueError, match="usd_per_unit"):
        load_price_table(bad)

    async def scenario():
        async with proxied("voyage", monkeypatch, price_table=table) as (fake, model):
            await model.embed([ImageItem(str(i), d) for i, d in enumerate(make_images(4))])
            return model.usage()

    usage = asyncio.run(scenario())
    tokens = usage["billed_units"]["tokens"]
    assert tokens == (4 * 64 * 48) // 560
    assert usage["estimated_cost_usd"] == pytest.approx(tokens * 1e-6)
    assert usage["cost_basis"] == "vendor-billed tokens"


def test_lifetime_usage_snapshot_counts_everything_the_process_did(monkeypatch):
    async def scenario():
        async with proxied("titan", monkeypatch) as (fake, model):
            images = make_images(3)
            await model.embed([ImageItem(str(i), d) for i, d in enumerate(images + [b"junk"])])
            return model.usage(), model.info_details()

    usage, details = asyncio.run(scenario())
    assert usage["schema"] == "vsbench.proxy.usage/1"
    assert (usage["requests"], usage["requests_ok"], usage["images_embedded"], usage["items_failed"]) == (3, 3, 3, 1)
    assert usage["errors"] == {"INVALID_IMAGE": 1}
    assert usage["estimated_cost_usd"] == pytest.approx(3 * 0.00006)
    assert json.loads(details["lifetime_usage"]) == usage


@pytest.mark.parametrize("name, text", [
    ("list.json", "[1, 2]"),
    ("broken.yaml", "a: [unclosed\n"),
    ("scalar.yml", "just text\n"),
])
def test_malformed_price_tables_are_a_clear_value_error(tmp_path, name, text):
    table = tmp_path / name
    table.write_text(text)
    with pytest.raises(ValueError, match="price table"):
        load_price_table(table)


def test_server_limits_and_mtls_have_flags(tmp_path):
    settings, _ = parse_settings([
        "--tls-client-ca", str(tmp_path / "ca.pem"), "--max-message-mb", "8", "--max-request-items", "9",
        "--max-pending-images", "10", "--max-input-pixels", "11",
    ])
    assert settings.tls_client_ca == tmp_path / "ca.pem"
    assert (settings.max_message_mb, settings.max_request_items, settings.max_pending_images,
            settings.max_input_pixels) == (8, 9, 10, 11)


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--dimension", "0"], ["--rpm", "-1"]])
def test_invalid_flags_exit_2_with_a_message_not_a_traceback(argv, capsys):
    from services.api_proxy.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "Traceback" not in err
