"""The container health check CLI against real gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from services.common import grpc_server
from services.common.grpc_server import BackgroundServer
from services.common.healthcheck import main
from services.common.settings import ServerSettings
from services.common.types import Embedding, ImageItem, ModelInfo
from tests.tls import self_signed

REPO = Path(__file__).resolve().parents[2]


class ConstantEmbedder:
    """The smallest AsyncEmbedder: every item gets the same unit vector."""

    def info(self) -> ModelInfo:
        return ModelInfo(name="constant", dim=4, preprocessing="none", normalized=True,
                         revision="test", max_batch=8, backend="test")

    async def embed(self, items: Sequence[ImageItem]) -> list[Embedding]:
        return [Embedding(id=item.id, vector=np.array([1, 0, 0, 0], dtype=np.float32)) for item in items]


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ConstantEmbedder(), ServerSettings(port=0)) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serving_server_is_healthy(server, capsys):
    assert main([server.address]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_named_service_is_healthy(server):
    assert main([server.address, "--service", grpc_server.SERVICE_NAME]) == 0


def test_unknown_service_is_unhealthy(server, capsys):
    assert main([server.address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_nothing_listening_is_unhealthy_within_the_timeout(capsys):
    started = time.monotonic()
    assert main([f"127.0.0.1:{_free_port()}", "--timeout", "1"]) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


def test_bad_arguments_exit_1_not_docker_reserved_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--timeout", "soon"])
    assert exit_info.value.code == 1
    assert main(["127.0.0.1:1", "--timeout", "0"]) == 1
    assert "--timeout must be positive" in capsys.readouterr().err


def test_tls_options_without_a_ca_are_refused(server, capsys):
    assert main([server.address, "--server-name", "x"]) == 1
    assert "need --tls-ca" in capsys.readouterr().err


def test_draining_server_is_unhealthy():
    """On SIGTERM a server flips health to NOT_SERVING before it stops: the check must see that."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(
            grpc_server.start(ConstantEmbedder(), ServerSettings(port=0)), loop
        ).result(timeout=30)
        address = running.address
        assert main([address]) == 0
        asyncio.run_coroutine_threadsafe(running.health.enter_graceful_shutdown(), loop).result(timeout=10)
        assert main([address]) == 1
        asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_module_entry_point_as_docker_runs_it(server):
    """HEALTHCHECK runs `python -m services.common.healthcheck` with the address from the env."""
    command = [sys.executable, "-m", "services.common.healthcheck"]
    env = {**os.environ, "VSBENCH_HEALTHCHECK_ADDRESS": server.address}
    ok = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    env["VSBENCH_HEALTHCHECK_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    down = subprocess.run(command + ["--timeout", "1"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 1


# ---- TLS --------------------------------------------------------------------------------------
def test_tls_server(tmp_path):
    cert, key = self_signed(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")
    settings = ServerSettings(port=0, tls_cert=cert, tls_key=key)
    with BackgroundServer(ConstantEmbedder(), settings) as tls_server:
        address = f"localhost:{tls_server.port}"
        assert main([address, "--tls-ca", str(cert)]) == 0
        # plaintext against a TLS port fails, and so does a CA that did not sign the server
        assert main([address, "--timeout", "2"]) == 1
        other, _ = self_signed(tmp_path, "other", "DNS:other.test")
        assert main([address, "--tls-ca", str(other), "--timeout", "2"]) == 1
        assert main([address, "--tls-ca", str(tmp_path / "missing.crt")]) == 1


def test_tls_server_name_override(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path, "embedder", "DNS:embedder.vsbench.test")
    settings = ServerSettings(port=0, tls_cert=cert, tls_key=key)
    with BackgroundServer(ConstantEmbedder(), settings) as tls_server:
        # inside a container the check dials 127.0.0.1, which the certificate does not name
        assert main([tls_server.address, "--tls-ca", str(cert), "--timeout", "2"]) == 1
        name = "embedder.vsbench.test"
        assert main([tls_server.address, "--tls-ca", str(cert), "--server-name", name]) == 0
        # the CA may also come from the environment, as the images set it
        monkeypatch.setenv("VSBENCH_HEALTHCHECK_TLS_CA", str(cert))
        assert main([tls_server.address, "--server-name", "embedder.vsbench.test"]) == 0


def test_mutual_tls_needs_the_client_certificate(tmp_path):
    cert, key = self_signed(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")
    client_cert, client_key = self_signed(tmp_path, "client", "DNS:client.vsbench.test")
    settings = ServerSettings(port=0, tls_cert=cert, tls_key=key, tls_client_ca=client_cert)
    with BackgroundServer(ConstantEmbedder(), settings) as tls_server:
        address = f"localhost:{tls_server.port}"
        assert main([address, "--tls-ca", str(cert), "--timeout", "2"]) == 1
        assert main([address, "--tls-ca", str(cert), "--tls-cert", str(client_cert),
                     "--tls-key", str(client_key)]) == 0
        assert main([address, "--tls-ca", str(cert), "--tls-cert", str(client_cert)]) == 1
