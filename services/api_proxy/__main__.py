"""python -m services.api_proxy --provider cohere --model embed-v4.0 [--port 0] ...

Serves the vsbench `Embedder` gRPC service in front of one commercial embedding API and prints
`READY <host>:<port>` on stdout once the port is bound. Vendor keys come only from the vendors'
environment variables or --api-key-file; never from a flag (flags show in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from services.api_proxy.credentials import RedactingFilter
from services.api_proxy.providers.registry import PROVIDERS
from services.common.errors import VsbenchError
from services.api_proxy.settings import ProxySettings

# flag -> (settings field, type, help)
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--provider": ("provider", str, f"one of: {', '.join(PROVIDERS)}"),
    "--model": ("model", str, "vendor model id (default: the provider's first)"),
    "--dimension": ("dimension", int, "output dimension"),
    "--input-role": ("input_role", str, "document | query | none: the vendor's role field for every image"),
    "--rpm": ("rpm", float, "requests/min (default: the vendor's published limit; 0 = unlimited)"),
    "--ipm": ("ipm", float, "images/min (default: the vendor's published limit; 0 = unlimited)"),
    "--concurrency": ("concurrency", int, "vendor requests in flight (0 = unlimited)"),
    "--burst-seconds": ("burst_seconds", float, "burst allowance in seconds of the per-minute limits"),
    "--jitter": ("jitter_s", float, "seconds of vendor-side arrival jitter the limits leave room for"),
    "--max-batch": ("max_batch", int, "images per vendor request (at most the vendor's limit)"),
    "--host": ("host", str, "address to bind"),
    "--port": ("port", int, "port to bind (0 picks a free one)"),
    "--base-url": ("base_url", str, "vendor base URL (tests, regional endpoints, gateways)"),
    "--cache-dir": ("cache_dir", Path, "embedding cache directory"),
    "--auth-token-file": ("auth_token_file", Path, "require this bearer token from gRPC clients"),
    "--api-key-file": ("api_key_file", Path, "mounted secret file holding the vendor key/token"),
    "--project": ("project", str, "Vertex: Google Cloud project"),
    "--location": ("location", str, "Vertex: location"),
    "--region": ("region", str, "Bedrock: AWS region"),
    "--price-table": ("price_table", Path, "JSON/YAML prices overriding the built-in table"),
    "--timeout": ("timeout_s", float, "seconds per vendor request"),
    "--max-attempts": ("max_attempts", int, "attempts per vendor request"),
    "--backoff-initial": ("backoff_initial_s", float, "first retry backoff (seconds)"),
    "--backoff-max": ("backoff_max_s", float, "largest retry backoff (seconds)"),
    "--max-retry-after": ("max_retry_after_s", float, "give up when a vendor asks to wait longer"),
    "--metrics-port": ("metrics_port", int, "serve Prometheus metrics on this port"),
    "--tls-cert": ("tls_cert", Path, "server certificate (PEM)"),
    "--tls-key": ("tls_key", Path, "server key (PEM)"),
    "--tls-client-ca": ("tls_client_ca", Path, "require client certs signed by this CA"),
    "--max-message-mb": ("max_message_mb", int, "gRPC message size limit"),
    "--max-request-items": ("max_request_items", int, "items one gRPC Embed request may carry"),
    "--max-pending-images": ("max_pending_images", int, "waiting images before RESOURCE_EXHAUSTED"),
    "--max-input-pixels": ("max_input_pixels", int, "refuse larger images (decompression bombs)"),
    "--grace-seconds": ("grace_seconds", float, "drain time on SIGTERM"),
}


def parse_settings(argv: list[str] | None = None) -> tuple[ProxySettings, str]:
    parser = argparse.ArgumentParser(prog="python -m services.api_proxy", description=__doc__.split("\n\n")[0])
    for flag, (dest, kind, help_text) in _FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument("--no-cache", dest="no_cache", action="store_true", default=None, help="disable the cache")
    parser.add_argument("--log-level", default="INFO")
    args = vars(parser.parse_args(argv))
    log_level = args.pop("log_level")
    # Only flags actually given override the environment (VSBENCH_PROXY_*) and defaults.
    return ProxySettings(**{key: value for key, value in args.items() if value is not None}), log_level


async def _serve(settings: ProxySettings, model) -> None:
    from services.common.grpc_server import serve_until_signal

    def ready(running) -> None:
        print(f"READY {settings.host}:{running.port}", flush=True)

    await serve_until_signal(model, settings, on_ready=ready)


def main(argv: list[str] | None = None) -> int:
    try:
        settings, log_level = parse_settings(argv)
    except ValidationError as exc:
        print(f"api_proxy: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    from services.api_proxy.model import ProxyModel

    try:
        model = ProxyModel.from_settings(settings)
    except VsbenchError as exc:  # credentials, provider, model, price table: one line, no traceback
        print(f"api_proxy: {exc}", file=sys.stderr)
        return 2
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(model.redactor))
    logging.getLogger(__name__).info(
        "%s: dim %d, %s, vendor batch %d, limits %s, credentials %s", model.name, model.info().dim,
        model.provider.describe_role(), model.vendor_batch, model.limits.as_dict(),
        model.info().details["credentials"],
    )
    try:
        asyncio.run(_serve(settings, model))
    except VsbenchError as exc:  # port taken, unreadable TLS/token file: no traceback
        print(f"api_proxy: {model.redactor(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
