"""python -m services.embedder --model NAME [--port 0] ...: load a model and serve it over gRPC.

    python -m services.embedder --model efficientnet-lite0                 # a registered model
    python -m services.embedder --model histogram --options '{"bins": 4}'  # ... its options overridden
    python -m services.embedder --kind onnx --model mine \
        --options '{"weights": "m.onnx", "preprocessing": {"crop_size": 224}}'  # defined by kind + options

Prints `READY <host>:<port>` on stdout once the port is bound and the model is warm (tests and
orchestration scripts wait for that line), then serves until SIGTERM/SIGINT and drains. A model
that cannot be loaded (unknown name, invalid option, missing weights or library) is one line on
stderr and exit status 1; anything else that fails is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pydantic import ValidationError

from services.common.errors import VsbenchError
from services.common.grpc_server import RunningServer, serve_until_signal
from services.embedder.settings import EmbedderSettings

if TYPE_CHECKING:
    from services.embedder.batching import BatchingEmbedder

log = logging.getLogger("services.embedder")

# flag -> settings field; only flags given on the command line override env/defaults.
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model", "model", str, "registry name (with --kind: the name to serve the model under)"),
    ("--kind", "kind", str, "define the model by backend kind + --options instead (--list-kinds)"),
    ("--options", "options", "json-object", "JSON object of the kind's options (or overrides of --model's)"),
    ("--weights", "weights", str, "weights path or hub id"),
    ("--device", "device", str, "cpu | cuda | cuda:N"),
    ("--threads", "threads", int, "model library intra-op threads"),
    ("--host", "host", str, "address to bind"),
    ("--port", "port", int, "port (0 picks a free one)"),
    ("--max-batch", "max_batch", int, "items per forward pass"),
    ("--max-wait-ms", "max_wait_ms", float, "batching delay"),
    ("--decode-workers", "decode_workers", int, "decode threads"),
    ("--max-queue", "max_queue", int, "items in flight before RESOURCE_EXHAUSTED"),
    ("--max-request-items", "max_request_items", int, "largest request"),
    ("--max-pixels", "max_pixels", int, "per-image pixel limit"),
    ("--max-image-bytes", "max_image_bytes", int, "per-image encoded size limit"),
    ("--max-aspect-ratio", "max_aspect_ratio", float, "per-image limit on longer side / shorter side"),
    ("--max-message-mb", "max_message_mb", int, "gRPC message size limit"),
    ("--grace-seconds", "grace_seconds", float, "drain time on SIGTERM"),
    ("--metrics-port", "metrics_port", int, "Prometheus metrics port"),
    ("--tls-cert", "tls_cert", Path, "PEM certificate chain"),
    ("--tls-key", "tls_key", Path, "PEM private key"),
    ("--tls-client-ca", "tls_client_ca", Path, "require client certs signed by this CA"),
    ("--auth-token-file", "auth_token_file", Path, "file holding the bearer token"),
    ("--backend", "backend", str, "local | triton (preprocess here, forward on Triton)"),
    ("--triton-url", "triton_url", str, "Triton gRPC host:port (--backend triton)"),
    ("--triton-model", "triton_model", str, "model name in the Triton repository"),
    ("--triton-timeout", "triton_timeout_s", float, "per-request timeout to Triton, seconds"),
)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"bins\": 4}'")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.embedder", description=__doc__.split("\n")[0])
    for flag, dest, kind, help_text in _FLAGS:
        parse = _json_object if kind == "json-object" else kind
        parser.add_argument(flag, dest=dest, type=parse, default=None, help=help_text)
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="report ready without running one dummy batch first",
    )
    parser.add_argument("--list", action="store_true", help="list the registered models and exit")
    parser.add_argument(
        "--list-kinds", action="store_true", help="list backend kinds and their options, exit"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> EmbedderSettings:
    given: dict[str, Any] = {
        dest: getattr(args, dest) for _, dest, _, _ in _FLAGS if getattr(args, dest) is not None
    }
    if args.warmup is not None:
        given["warmup"] = args.warmup
    return EmbedderSettings(**given)


def served_name(settings: EmbedderSettings) -> str:
    """The model name served: --model, or with --kind and no --model the kind itself."""
    if settings.kind and "model" not in settings.model_fields_set:
        return settings.kind
    return settings.model


def build_embedder(settings: EmbedderSettings) -> "BatchingEmbedder":
    from services.embedder.backends.errors import BackendLoadError
    from services.embedder.backends.registry import build_backend, load_backend
    from services.embedder.batching import BatchingEmbedder

    if settings.backend == "triton" and (settings.kind or settings.options):
        raise BackendLoadError("--backend triton serves registered models: --kind and --options do not apply")
    if settings.kind:
        options = dict(settings.options)
        if settings.weights is not None:
            options.setdefault("weights", settings.weights)
        backend = build_backend(
            settings.kind,
            options,
            name=served_name(settings),
            device=settings.device,
            threads=settings.threads,
            max_batch=settings.max_batch,
        )
    elif settings.backend == "triton":
        from services.embedder.backends.triton_loader import load_triton_backend

        backend = load_triton_backend(
            settings.model,
            str(settings.triton_url),
            triton_model=settings.triton_model,
            weights=settings.weights,
            max_batch=settings.max_batch,
            timeout_s=settings.triton_timeout_s,
        )
    else:
        backend = load_backend(
            settings.model,
            weights=settings.weights,
            device=settings.device,
            threads=settings.threads,
            max_batch=settings.max_batch,
            **settings.options,
        )
    return BatchingEmbedder(
        backend,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        decode_workers=settings.decode_workers,
        max_queue=settings.max_queue,
        max_request_items=settings.max_request_items,
        limits=settings.decode_limits(),
        warmup=settings.warmup,
    )


async def serve(embedder: "BatchingEmbedder", settings: EmbedderSettings) -> None:
    def ready(running: RunningServer) -> None:
        info = embedder.info()
        log.info(
            "model %s dim=%d revision=%s fingerprint=%s preprocessing: %s",
            info.name,
            info.dim,
            info.revision,
            info.fingerprint,
            info.preprocessing,
        )
        print(f"READY {settings.host}:{running.port}", flush=True)

    await serve_until_signal(embedder, settings, on_ready=ready)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.list:
        from services.embedder.backends.registry import list_specs

        for spec in list_specs():
            print(json.dumps(spec.to_dict()))
        return 0
    if args.list_kinds:
        from services.embedder.backends.registry import list_kinds

        for kind in list_kinds():
            print(json.dumps(kind.to_dict(), default=str))
        return 0
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        embedder = build_embedder(settings)
    except VsbenchError as exc:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"cannot load model: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        asyncio.run(serve(embedder, settings))
    except VsbenchError as exc:  # port taken, unreadable TLS/token file: no traceback
        log.error("cannot serve %r: %s", settings.model, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
