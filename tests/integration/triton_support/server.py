"""A real NVIDIA Triton Inference Server for the tests, from PyPI's nvidia-pytriton wheel.

nvidia-pytriton 0.7.0 bundles tritonserver 2.51 (CPU capable) with only the python backend. It
pins numpy<2 and protobuf 6, which the project's own venv cannot have (its gRPC stubs need
protobuf 7), so it lives in a venv of its own under <repo>/.cache/ (git-ignored), created on
first use and reused while its marker file names the same requirements.

We start the bundled `tritonserver` binary directly (not pytriton's `Triton().bind()`), so the
repository that `vsbench export triton` wrote is what Triton loads, config.pbtxt included
(max_batch_size, dims, names, dynamic batching, instance group). The only change:
`as_python_backend` swaps `platform: "onnxruntime_onnx"` for the python backend running the same
model.onnx in onnxruntime (onnx_model.py), because the onnxruntime backend is not in the wheel.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_VENV = REPO_ROOT / ".cache" / "pytriton-venv"
# What the server's interpreter needs: the server itself, and onnxruntime for onnx_model.py.
# onnxruntime 1.32 is the newest that installs beside pytriton's numpy<2 pin (checked).
REQUIREMENTS = ("nvidia-pytriton==0.7.0", "onnxruntime==1.32.0", "numpy<2")
MARKER = ".vsbench-requirements"
# Below pytest's 600 s per-test timeout, so a stuck pip fails with its own message.
INSTALL_TIMEOUT_S = 480
READY_LINE = re.compile(r"Started GRPCInferenceService at ([0-9.]+):(\d+)")


class TritonSetupError(RuntimeError):
    """The Triton venv cannot be built or the server cannot start; the message says why."""


@dataclass(frozen=True)
class TritonEnv:
    venv: Path
    python: Path
    tritonserver: Path
    backends: Path
    libs: Path
    python_libdir: Path
    created_in_s: float  # 0 when an existing venv was reused


def _run(command: list[str], timeout: float, what: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TritonSetupError(f"{what} took longer than {timeout:.0f}s: {' '.join(command)}") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise TritonSetupError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")
    return done.stdout


def ensure_triton_env(venv: Path | None = None, requirements: tuple[str, ...] = REQUIREMENTS) -> TritonEnv:
    """The pytriton venv, created (pip from PyPI) if absent or made for other requirements.

    Idempotent and safe against two test processes building it at once (a file lock); a failed
    install raises TritonSetupError with pip's output, so the test fails instead of skipping.
    """
    venv = Path(venv or os.environ.get("VSBENCH_PYTRITON_VENV") or DEFAULT_VENV)
    venv.parent.mkdir(parents=True, exist_ok=True)
    wanted = "\n".join(requirements) + "\n"
    created_in = 0.0
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / MARKER
        if not (marker.is_file() and marker.read_text() == wanted):
            started = time.monotonic()
            shutil.rmtree(venv, ignore_errors=True)
            # The base interpreter, not this venv's: the new venv must not see our site-packages.
            # No pip inside (ensurepip costs ~10 s): this venv's pip installs into it instead.
            base = getattr(sys, "_base_executable", sys.executable)
            _run([base, "-m", "venv", "--without-pip", str(venv)], 120, "creating the pytriton venv")
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "--python",
                    str(venv / "bin" / "python"),
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--quiet",
                    *requirements,
                ],
                INSTALL_TIMEOUT_S,
                f"pip install {' '.join(requirements)} (PyPI) into {venv}",
            )
            marker.write_text(wanted)
            created_in = time.monotonic() - started
        return _describe(venv, created_in)


def _describe(venv: Path, created_in: float) -> TritonEnv:
    python = venv / "bin" / "python"
    probe = _run(
        [
            str(python),
            "-c",
            "import sys, sysconfig, pytriton, os; "
            "print(os.path.dirname(pytriton.__file__)); print(sysconfig.get_config_var('LIBDIR')); "
            "print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        120,
        "locating tritonserver in the pytriton venv",
    ).split("\n")
    package, libdir, version = Path(probe[0]), Path(probe[1]), probe[2]
    dist = package / "tritonserver"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonSetupError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    # Triton looks for the stub next to libtriton_python.so; the wheel keeps one per Python version
    # elsewhere, so assemble a backend directory once (what pytriton does in its workspace).
    backends = venv / "triton-backends"
    python_backend = backends / "python"
    if not (python_backend / "triton_python_backend_stub").is_file():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(
            dist / "backends" / "python", python_backend, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
    return TritonEnv(
        venv=venv,
        python=python,
        tritonserver=dist / "bin" / "tritonserver",
        backends=backends,
        libs=package.parent / "nvidia_pytriton.libs",
        python_libdir=libdir,
        created_in_s=created_in,
    )


def as_python_backend(model_dir: Path, dest_repository: Path) -> Path:
    """Copy an exported model folder into `dest_repository`, served by the python backend
    running its model.onnx (see the module docstring); every other config line stays."""
    target = dest_repository / model_dir.name
    shutil.copytree(model_dir, target)
    config = target / "config.pbtxt"
    text = config.read_text()
    swapped, count = re.subn(r'^platform: "onnxruntime_onnx"$', 'backend: "python"', text, flags=re.M)
    if count != 1:
        raise TritonSetupError(f"{config}: expected one onnxruntime_onnx platform line")
    config.write_text(swapped)
    shutil.copy2(Path(__file__).with_name("onnx_model.py"), target / "1" / "model.py")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TritonServer:
    """tritonserver on 127.0.0.1 serving `repository` over gRPC only; `url` is host:port."""

    def __init__(self, env: TritonEnv, repository: Path, startup_timeout_s: float = 120) -> None:
        self.env = env
        self.repository = repository
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=400)
        self.started_in_s = 0.0
        self._ready = threading.Event()

    def command(self) -> list[str]:
        return [
            str(self.env.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.env.backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub embeds Python: the interpreter's own libpython first (a pyenv build otherwise
        # picks up the system one and fails on '_thread.RLock' ... '_recursion_count'), then the
        # wheel's vendored libraries; the venv's bin first on PATH so the stub finds its packages.
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (str(self.env.python_libdir), str(self.env.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = f"{self.env.venv / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["OMP_NUM_THREADS"] = "1"
        return env

    def start(self) -> "TritonServer":
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.environment(),
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = started + self.startup_timeout_s
        while not self._ready.wait(0.1):
            if self.process.poll() is not None:
                raise TritonSetupError(
                    f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TritonSetupError(
                    f"tritonserver not ready in {self.startup_timeout_s}s:\n{self.log_tail()}"
                )
        self.started_in_s = time.monotonic() - started
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            if READY_LINE.search(line):
                self._ready.set()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self.log)[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # Triton drains and unloads its models on SIGTERM
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running_triton(env: TritonEnv, repository: Path) -> Iterator[TritonServer]:
    server = TritonServer(env, repository).start()
    try:
        yield server
    finally:
        server.stop()
