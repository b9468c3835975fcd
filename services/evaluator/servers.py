"""Start and stop local service processes (embedder, api_proxy) on loopback.

Used by the quickstart, by tests and benches: a real server process, its port chosen by the OS,
its readiness read from the `READY host:port` line it prints, and a stop that always happens (on
exit, on Ctrl-C, on error) with SIGTERM first so the server drains, then SIGKILL.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from services.common.errors import VsbenchError

READY_PREFIX = "READY "


class ServerStartError(VsbenchError, RuntimeError):
    pass


class ServerProcess:
    """`with ServerProcess(["services.embedder", "--model", "efficientnet-lite0"]) as server: server.address`"""

    def __init__(
        self,
        module_args: Sequence[str],
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 180.0,
        log_path: Path | None = None,
    ) -> None:
        self.module_args = list(module_args)
        self.name = name or " ".join(self.module_args[:3])
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.address: str | None = None
        self._tail: deque[str] = deque(maxlen=40)

    def start(self) -> "ServerProcess":
        args = [sys.executable, "-m", *self.module_args]
        if "--port" not in self.module_args:
            args += ["--port", "0"]
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        ready: queue.Queue[str] = queue.Queue()
        log_file = open(self.log_path, "a", encoding="utf-8") if self.log_path else None

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self._tail.append(line.rstrip())
                if log_file:
                    log_file.write(line)
                    log_file.flush()
                if line.startswith(READY_PREFIX):
                    ready.put(line[len(READY_PREFIX):].strip())
            if log_file:
                log_file.close()
            ready.put("")

        threading.Thread(target=pump, daemon=True, name=f"log-{self.name}").start()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                address = ready.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(f"{self.name} did not become ready in {self.startup_timeout_s:.0f}s:\n"
                                           + "\n".join(self._tail))
                continue
            if not address:
                code = self.process.wait()
                raise ServerStartError(f"{self.name} exited with code {code} before it was ready:\n" + "\n".join(self._tail))
            host, _, port = address.rpartition(":")
            self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
            return self

    def kill(self) -> None:
        """SIGKILL, no drain: for tests of crash recovery."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    @property
    def output_tail(self) -> str:
        return "\n".join(self._tail)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def embedder_process(model: str, *extra: str, **kwargs) -> ServerProcess:
    return ServerProcess(["services.embedder", "--model", model, *extra], name=f"embedder {model}", **kwargs)
