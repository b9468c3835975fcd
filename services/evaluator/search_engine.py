"""Which library computes exact search's float32 GEMM: a short calibration, cached per machine.

numpy's OpenBLAS and torch's MKL differ by 20-40 % on the same CPU, in either direction depending
on the vendor (MKL favours Intel). "auto" therefore times both on a search-shaped product once and
remembers the faster one in $XDG_CACHE_HOME/vsbench/search-engine.json (default ~/.cache), keyed by
the library versions, thread count and CPU model, so a new machine or upgrade calibrates again.
The cache is a convenience: when it cannot be read or written the result is kept in this process.
With a GPU visible to torch, "auto" is torch (on the GPU) without calibrating.

Resolving "auto" does not import torch (about a second of a `vsbench score` that takes a few) unless
it has to: the cache key reads torch's version from its package metadata, and CUDA is asked only
when the machine has a GPU device node for it to find.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "numpy")
CACHE_NAME = "search-engine.json"
# 256 queries x 8192 gallery rows x 1024-d: ~4 GFLOP, tens of ms per product on a laptop core.
_CALIBRATION_SHAPE = (256, 8192, 1024)
_CALIBRATION_ROUNDS = 3
_memo: dict[str, str] = {}


def cache_file(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "vsbench" / CACHE_NAME


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threads() -> str:
    """The GEMM thread setting: what the BLAS libraries read from the environment, else the CPUs
    this process may run on (their default)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def machine_key() -> str:
    """What the calibration depends on: library versions, threads and the CPU."""
    return (
        f"numpy={np.__version__};torch={_torch_version()};threads={_threads()};"
        f"cpus={os.cpu_count()};cpu={_cpu_model()}"
    )


def gpu_device_present() -> bool:
    """Whether a GPU torch could use may exist: NVIDIA's device nodes or driver, or ROCm's /dev/kfd.
    Without one, torch.cuda.is_available() is False and importing torch to ask is wasted time."""
    dev = Path("/dev")
    return (
        any(dev.glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia").exists() or (dev / "kfd").exists()
    )


def measure_gemm_seconds(shape: tuple[int, int, int] = _CALIBRATION_SHAPE, rounds: int = _CALIBRATION_ROUNDS) -> dict[str, float]:
    """Fastest of `rounds` interleaved (Q x D) @ (D x N) float32 products per library."""
    import torch

    n_q, n_g, dim = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n_q, dim), dtype=np.float32)
    b = rng.standard_normal((n_g, dim), dtype=np.float32)
    out = np.empty((n_q, n_g), dtype=np.float32)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    runs: dict[str, Callable[[], object]] = {
        "numpy": lambda: np.matmul(a, b.T, out=out),
        "torch": lambda: torch.matmul(ta, tb.T, out=tout),
    }
    seconds = {name: float("inf") for name in runs}
    for name, run in runs.items():  # warm-up: thread pools, page faults
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


def calibrated_engine(path: Path | None = None, measure: Callable[[], dict[str, float]] = measure_gemm_seconds) -> str:
    """The faster CPU GEMM engine on this machine, from the cache or measured (then cached)."""
    key = machine_key()
    if key in _memo:
        return _memo[key]
    path = cache_file() if path is None else path
    cached: dict = {}
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        engine = cached.get(key, {}).get("engine")
        if engine in ("numpy", "torch"):
            _memo[key] = engine
            return engine
    except (OSError, ValueError, AttributeError):
        cached = {} if not isinstance(cached, dict) else cached
    seconds = measure()
    engine = min(seconds, key=seconds.__getitem__)
    _memo[key] = engine
    entry = {"engine": engine, "gemm_seconds": {n: round(s, 5) for n, s in seconds.items()},
             "shape_q_n_d": list(_CALIBRATION_SHAPE), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps({**cached, key: entry}, indent=1), encoding="utf-8")
        os.replace(scratch, path)
    except OSError as exc:  # a read-only home (containers): keep the answer in this process only
        log.debug("search engine calibration not cached at %s: %s", path, exc)
    log.info("search engine calibration: %s (GEMM seconds %s)", engine, entry["gemm_seconds"])
    return engine


def resolve_engine(engine: str = "auto") -> str:
    """"numpy" or "torch" for an engine name; "auto" picks as the module docstring says."""
    if engine not in ENGINES:
        raise ValueError(f"unknown search engine {engine!r}: use auto, torch or numpy")
    has_torch = importlib.util.find_spec("torch") is not None
    if engine == "torch" and not has_torch:
        raise RuntimeError("search engine 'torch' requested but torch is not installed")
    if engine != "auto":
        return engine
    if not has_torch:
        return "numpy"
    if gpu_device_present():
        import torch

        if torch.cuda.is_available():
            return "torch"
    return calibrated_engine()
