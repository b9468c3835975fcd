"""python -m services.search --store PATH (or --qdrant-url URL) --collection NAME --embedder HOST:PORT
--host H --port P: serve a catalog indexed by `vsbench index` (docs/search.md).

Prints `READY <host>:<port>` once the collection is checked against the serving model and the port
is bound; serves until SIGTERM/SIGINT and drains. A collection of another model, a missing
collection or an unreachable embedder at start is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from services.common.errors import VsbenchError

log = logging.getLogger("services.search")

_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--collection", "collection", str, "collection built by `vsbench index`"),
    ("--store", "store", Path, "Qdrant Edge folder"),
    ("--qdrant-url", "qdrant_url", str, "Qdrant server URL"),
    ("--embedder", "embedder", str, "host:port of the embedder / api_proxy"),
    ("--embedder-auth-token-file", "embedder_auth_token_file", Path, "bearer token for the embedder"),
    ("--host", "host", str, "address to bind"),
    ("--port", "port", int, "port (0 picks a free one)"),
    ("--default-k", "default_k", int, "products returned when a request says k=0"),
    ("--max-k", "max_k", int, "largest k accepted"),
    ("--ef", "ef", int, "HNSW search candidates"),
    ("--max-image-bytes", "max_image_bytes", int, "largest query image"),
    ("--workers", "workers", int, "queries answered at once"),
    ("--embed-retries", "embed_retries", int, "embedder retries per query before UNAVAILABLE"),
    ("--qdrant-retries", "qdrant_retries", int, "Qdrant retries per call before UNAVAILABLE"),
    ("--model-check-s", "model_check_s", float, "how often to re-check the embedder's model fingerprint"),
    ("--max-message-mb", "max_message_mb", int, "gRPC message size limit"),
    ("--grace-seconds", "grace_seconds", float, "drain time on SIGTERM"),
    ("--metrics-port", "metrics_port", int, "Prometheus metrics port"),
    ("--tls-cert", "tls_cert", Path, "PEM certificate chain"),
    ("--tls-key", "tls_key", Path, "PEM private key"),
    ("--tls-client-ca", "tls_client_ca", Path, "require client certs signed by this CA"),
    ("--auth-token-file", "auth_token_file", Path, "file holding the bearer token clients must send"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.search", description=__doc__.split("\n")[0])
    for flag, dest, kind, help_text in _FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    parser.add_argument("--embedder-tls", dest="embedder_tls", action="store_true", default=None)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services.search.server import build_engine, serve_until_signal
    from services.search.settings import SearchSettings

    given: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _FLAGS if getattr(args, dest) is not None}
    if args.embedder_tls is not None:
        given["embedder_tls"] = True
    try:
        settings = SearchSettings(**given)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    except VsbenchError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        engine = build_engine(settings)
    except VsbenchError as exc:
        print(f"cannot serve: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 1

    def ready(running) -> None:
        meta = engine.meta
        log.info("collection %s: model %s fingerprint %s, threshold %s", settings.collection,
                 meta.model.get("name", "?"), meta.fingerprint, meta.threshold)
        print(f"READY {settings.host}:{running.port}", flush=True)

    try:
        asyncio.run(serve_until_signal(engine, settings, on_ready=ready))
    except VsbenchError as exc:
        log.error("cannot serve %r: %s", settings.collection, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
