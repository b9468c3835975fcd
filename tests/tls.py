"""Self-signed certificates for TLS tests, made with the openssl CLI (Debian package openssl)."""

import shutil
import subprocess
from pathlib import Path


def self_signed(tmp: Path, name: str, san: str) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "TLS tests make a certificate with the openssl CLI (Debian package openssl)"
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
        check=True, capture_output=True,
    )
    return cert, key
