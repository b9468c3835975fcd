"""Container health check: asks a server's standard gRPC health service whether it is SERVING.

    python -m services.common.healthcheck HOST:PORT [--service NAME] [--tls-ca F] [--timeout S]

Exit status 0 iff the answer is SERVING, 1 otherwise (not serving, unknown service, unreachable,
timed out, bad arguments), as Docker's HEALTHCHECK expects (it reserves 2). Without HOST:PORT the
address comes from VSBENCH_HEALTHCHECK_ADDRESS (default 127.0.0.1:50051), so one image-level
HEALTHCHECK line serves every port a container is configured for. Health and reflection stay
open when a server requires a bearer token, so no token is needed here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "VSBENCH_HEALTHCHECK_ADDRESS"
TLS_CA_ENV = "VSBENCH_HEALTHCHECK_TLS_CA"

UNHEALTHY = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit 2, which Docker reserves
        self.print_usage(sys.stderr)
        print(f"healthcheck: {message}", file=sys.stderr)
        raise SystemExit(UNHEALTHY)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 iff a gRPC server's standard health service answers SERVING, else 1.",
    )
    parser.add_argument("address", nargs="?",
                        help=f"HOST:PORT (default: ${ADDRESS_ENV} or {DEFAULT_ADDRESS})")
    parser.add_argument("--service", default="",
                        help="health service name to ask about; '' = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--tls-ca", type=Path, help=f"connect with TLS, trusting this CA (or ${TLS_CA_ENV})")
    parser.add_argument("--tls-cert", type=Path, help="client certificate, for servers that require one")
    parser.add_argument("--tls-key", type=Path, help="client key, with --tls-cert")
    parser.add_argument("--server-name", help="TLS name to verify when HOST is not in the certificate")
    return parser


def _channel(args: argparse.Namespace, address: str):
    import grpc

    if args.tls_ca is None:
        if args.tls_cert or args.tls_key or args.server_name:
            raise ValueError("--tls-cert, --tls-key and --server-name need --tls-ca")
        return grpc.insecure_channel(address)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(healthy, what to print) for parsed arguments."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    if args.tls_ca is None and os.environ.get(TLS_CA_ENV):
        args.tls_ca = Path(os.environ[TLS_CA_ENV])
    if args.timeout <= 0:
        return False, f"--timeout must be positive, got {args.timeout}"
    try:
        channel = _channel(args, address)
    except (OSError, ValueError) as exc:
        return False, f"{address}: {exc}"
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details() or ""
            return False, f"{address}: {code.name if code else 'UNKNOWN'} {detail}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    what = f"{address} service={args.service!r}: {status}"
    return response.status == health_pb2.HealthCheckResponse.SERVING, what


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    healthy, what = check(args)
    print(what, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
