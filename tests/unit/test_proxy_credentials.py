"""Credentials from the vendors' own variables or mounted files, Google token sources and AWS SigV4
against the fakes, and redaction of anything secret."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from services.api_proxy.credentials import (
    CredentialsError, Redactor, RedactingFilter, google_token_source, read_secret,
)
from services.api_proxy.model import ProxyModel
from services.common.types import ImageItem
from tests.fakes.images import make_images
from tests.fakes.proxy import apply_environ, make_vendor, proxy_settings
from tests.fakes.vendors import FakeVendorServer, expected_vector


def run(coro):
    return asyncio.run(coro)


def embed_once(name, vendor, settings_overrides=None):
    image = make_images(1, start=5)[0]

    async def scenario():
        with FakeVendorServer(vendor) as fake:
            async with ProxyModel.from_settings(proxy_settings(name, fake, **(settings_overrides or {}))) as model:
                (result,) = await model.embed([ImageItem("x", image)])
                return fake, model, result

    fake, model, result = run(scenario())
    assert result.ok, (result.error, fake.rejections)
    assert (result.vector == expected_vector(image, vendor.dim)).all()
    return fake, model


def test_read_secret_prefers_the_file_then_the_first_variable_set(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    env = {"CO_API_KEY": "", "COHERE_API_KEY": "second"}
    assert read_secret(("CO_API_KEY", "COHERE_API_KEY"), env, None) == ("second", "$COHERE_API_KEY")
    assert read_secret(("CO_API_KEY",), env, secret) == ("from-file", f"file {secret}")
    with pytest.raises(CredentialsError, match="CO_API_KEY, COHERE_API_KEY") as error:
        read_secret(("CO_API_KEY", "COHERE_API_KEY"), {"CO_API_KEY": " "}, None)
    assert "second" not in str(error.value)


def test_cohere_accepts_cohere_api_key(monkeypatch):
    vendor = make_vendor("cohere")
    apply_environ(monkeypatch, {"COHERE_API_KEY": vendor.key})
    monkeypatch.delenv("CO_API_KEY", raising=False)
    _, model = embed_once("cohere", vendor)
    assert model.info().details["credentials"] == "Authorization from $COHERE_API_KEY"


def test_mounted_secret_file_is_used_and_named_not_shown(monkeypatch, tmp_path):
    vendor = make_vendor("jina", key="jina_file_key_0123456789")
    apply_environ(monkeypatch, {"JINA_API_KEY": "jina_env_key_is_ignored"})
    secret = tmp_path / "jina-key"
    secret.write_text(vendor.key + "\n")
    _, model = embed_once("jina", vendor, {"api_key_file": secret})
    assert str(secret) in model.info().details["credentials"]
    assert vendor.key not in json.dumps(model.info().to_dict())


def test_a_missing_key_fails_at_start_naming_the_variables(monkeypatch):
    apply_environ(monkeypatch, {})
    monkeypatch.delenv("VOYAGE_API_KEY", raising=False)
    with FakeVendorServer(make_vendor("voyage")) as fake:
        with pytest.raises(CredentialsError, match="VOYAGE_API_KEY"):
            ProxyModel.from_settings(proxy_settings("voyage", fake))


def test_vertex_needs_a_project(monkeypatch):
    apply_environ(monkeypatch, {"GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.x"})
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("CLOUDSDK_CORE_PROJECT", raising=False)
    with FakeVendorServer(make_vendor("vertex")) as fake:
        with pytest.raises(ValueError, match="project"):
            ProxyModel.from_settings(proxy_settings("vertex", fake))


def test_vertex_refreshes_an_authorized_user_adc_token(monkeypatch, tmp_path):
    vendor = make_vendor("vertex")
    with FakeVendorServer(vendor) as token_server:
        adc = tmp_path / "adc.json"
        adc.write_text(json.dumps({
            "type": "authorized_user", "client_id": "cid", "client_secret": "csecret-0123456789",
            "refresh_token": "test-refresh-token", "token_uri": f"{token_server.url}/token",
        }))
        apply_environ(monkeypatch, {"GOOGLE_APPLICATION_CREDENTIALS": str(adc),
                                    "GOOGLE_CLOUD_PROJECT": vendor.project})
        monkeypatch.delenv("GOOGLE_OAUTH_ACCESS_TOKEN", raising=False)
        _, model = embed_once("vertex", vendor)
    assert vendor.refresh_grants == [{"grant_type": "refresh_token", "client_id": "cid",
                                      "client_secret": "csecret-0123456789", "refresh_token": "test-refresh-token"}]
    # The issued token and the refresh secrets are all known to the redactor.
    issued = [t for t in vendor.valid_tokens if t != vendor.key]
    assert issued and all(model.redactor(f"x {t} y") == "x [REDACTED] y" for t in issued)
    assert "[REDACTED]" in model.redactor("csecret-0123456789")
    assert "authorized_user" in model.info().details["credentials"]


def test_vertex_uses_the_metadata_server_when_one_is_configured(monkeypatch):
    vendor = make_vendor("vertex")
    with FakeVendorServer(vendor) as metadata:
        apply_environ(monkeypatch, {"GCE_METADATA_HOST": f"127.0.0.1:{metadata.port}",
                                    "GOOGLE_CLOUD_PROJECT": vendor.project, "HOME": "/nonexistent"})
        monkeypatch.delenv("GOOGLE_OAUTH_ACCESS_TOKEN", raising=False)
        _, model = embed_once("vertex", vendor)
    assert "metadata server" in model.info().details["credentials"]


def test_google_sources_never_probe_the_metadata_server_off_google(monkeypatch, tmp_path):
    monkeypatch.setattr("services.api_proxy.credentials._on_google_hardware", lambda: False)
    with pytest.raises(CredentialsError, match="GOOGLE_OAUTH_ACCESS_TOKEN"):
        google_token_source({"HOME": str(tmp_path)}, None)


def test_titan_signs_with_a_session_token(monkeypatch):
    vendor = make_vendor("titan", session_token="FwoGZXIvYXdzEXAMPLESESSION")
    apply_environ(monkeypatch, {"AWS_ACCESS_KEY_ID": vendor.key, "AWS_SECRET_ACCESS_KEY": vendor.secret,
                                "AWS_SESSION_TOKEN": vendor.session_token, "AWS_REGION": vendor.region})
    fake, model = embed_once("titan", vendor)
    headers = fake.headers_seen[0]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "[REDACTED]" in model.redactor(vendor.secret) and "[REDACTED]" in model.redactor(vendor.session_token)
    assert "env" in model.info().details["credentials"]


def test_titan_with_a_wrong_secret_is_refused_by_the_signature_check(monkeypatch):
    vendor = make_vendor("titan")
    apply_environ(monkeypatch, {"AWS_ACCESS_KEY_ID": vendor.key, "AWS_SECRET_ACCESS_KEY": "not-the-secret-123",
                                "AWS_REGION": vendor.region})

    async def scenario():
        with FakeVendorServer(vendor) as fake:
            async with ProxyModel.from_settings(proxy_settings("titan", fake)) as model:
                return await model.embed([ImageItem("x", make_images(1)[0])])

    (result,) = run(scenario())
    assert "HTTP 403" in result.error.message and "signature" in result.error.message


def test_titan_without_aws_credentials_fails_at_start(monkeypatch):
    apply_environ(monkeypatch, {})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with FakeVendorServer(make_vendor("titan")) as fake:
        with pytest.raises(CredentialsError, match="AWS"):
            ProxyModel.from_settings(proxy_settings("titan", fake))


def test_redactor_scrubs_known_secrets_and_credential_shapes():
    redactor = Redactor()
    redactor.add("sk-live-0123456789abcdef")
    text = ("key sk-live-0123456789abcdef failed; Authorization: Bearer abcdefgh12345678; "
            "api_key=zzzzzzzzzzzz; AIzaSyA0123456789012345678901234567; token ya29.a0AfH6SMBxyz")
    scrubbed = redactor(text)
    for secret in ("sk-live-0123456789abcdef", "abcdefgh12345678", "zzzzzzzzzzzz", "AIzaSyA01234567890",
                   "ya29.a0AfH6SMBxyz"):
        assert secret not in scrubbed
    assert scrubbed.startswith("key [REDACTED] failed")


def test_log_records_are_redacted(caplog):
    redactor = Redactor()
    redactor.add("super-secret-value")
    logger = logging.getLogger("test_proxy_redaction")
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter(redactor))
    caplog.handler.addFilter(RedactingFilter(redactor))
    with caplog.at_level(logging.INFO, logger="test_proxy_redaction"):
        logger.info("calling with %s", "super-secret-value")
    assert "super-secret-value" not in caplog.text and "[REDACTED]" in caplog.text
