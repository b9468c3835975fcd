"""Embedder throughput: the gRPC server against the same model called in process, same run.

1. Decode throughput per core: bytes -> RGB (services.embedder.images), and bytes -> model input
   (decode + the model's preprocessing), on one thread.
2. Server / in-process ratio (goal >= 0.9): images/s through `python -m services.embedder` (a
   subprocess on loopback, requests of --batch images, --in-flight requests outstanding) against
   `embed_sync` on the same backend in this process (decode pool overlapped with the forward
   pass, chunks of --batch), on the same images. Rounds alternate between the two so drifting
   machine load hits both; the ratio is of medians.

    python bench/embedder.py                      # efficientnet-lite0, 192 images, ~2-3 min on 2 cores
    python bench/embedder.py --quick              # smoke run
    python bench/embedder.py --images-dir DIR     # your own photos instead of generated ones
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import wire  # noqa: E402
from services.common.grpc_server import channel_options  # noqa: E402
from services.common.types import ImageItem  # noqa: E402
from services.embedder.batching import embed_sync  # noqa: E402
from services.embedder.images import decode_image  # noqa: E402


def photo_like(seed: int, size: tuple[int, int] = (448, 336)) -> bytes:
    """A textured JPEG of ~70 KB, the size of a typical product-photo upload after resizing."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = rng.integers(30, 220, size=3) + (xx / width)[..., None] * rng.integers(-90, 90, size=3)
    pixels = pixels + rng.normal(0, 18, (height, width, 3))
    pixels += 40 * np.sin(xx / rng.uniform(3, 12))[..., None] * np.cos(yy / rng.uniform(3, 12))[..., None]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load_images(args: argparse.Namespace) -> list[bytes]:
    if args.images_dir:
        files = sorted(
            p
            for p in Path(args.images_dir).iterdir()
            if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
        )
        if not files:
            raise SystemExit(f"no images in {args.images_dir}")
        return [files[i % len(files)].read_bytes() for i in range(args.images)]
    return [photo_like(seed) for seed in range(args.images)]


def decode_rate(images: list[bytes], preprocess=None, min_seconds: float = 2.0) -> float:
    """Images/s on one thread (= per core: decoding holds one core, Pillow releases the GIL)."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        for data in images:
            image = decode_image(data)
            if preprocess is not None:
                preprocess(image)
            done += 1
    return done / (time.perf_counter() - started)


class ServerProcess:
    def __init__(self, args: argparse.Namespace) -> None:
        command = [
            sys.executable,
            "-m",
            "services.embedder",
            "--model",
            args.model,
            "--port",
            "0",
            "--max-batch",
            str(args.batch),
            "--max-request-items",
            str(args.batch),
            "--max-queue",
            str(args.batch * (args.in_flight + 1)),
            "--decode-workers",
            str(args.decode_workers),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--log-level",
            "WARNING",
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.weights:
            command += ["--weights", str(args.weights)]
        command += ["--device", args.device]
        self.metrics_port = free_port()
        command += ["--metrics-port", str(self.metrics_port)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.address = line.split()[1]

    def forward_stats(self) -> tuple[float, float]:
        """(forward passes, items) so far, from the server's Prometheus batch-size histogram."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        values = {"count": 0.0, "sum": 0.0}
        for line in text.splitlines():
            for key in values:
                if line.startswith(f"vsbench_batch_size_{key}{{"):
                    values[key] += float(line.rsplit(" ", 1)[1])
        return values["count"], values["sum"]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_server_round(stub, items: list[ImageItem], batch: int, in_flight: int) -> tuple[float, dict, float]:
    requests = [wire.request_to_pb(items[i : i + batch]) for i in range(0, len(items), batch)]
    vectors: dict[str, np.ndarray] = {}
    lock = threading.Lock()

    def send(message):
        results = wire.response_from_pb(stub.Embed(message, timeout=600))
        with lock:
            vectors.update({r.id: r.vector for r in results if r.ok})

    started, cpu_started = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(send, requests))
    elapsed = time.perf_counter() - started
    client_cpu_ms = (time.process_time() - cpu_started) * 1000 / len(items)
    if len(vectors) != len(items):
        raise RuntimeError(f"server embedded {len(vectors)} of {len(items)} images")
    return len(items) / elapsed, vectors, client_cpu_ms


def run_inprocess_round(backend, items: list[ImageItem], batch: int, pool) -> tuple[float, dict]:
    started = time.perf_counter()
    results = embed_sync(backend, items, decode_pool=pool, max_batch=batch)
    elapsed = time.perf_counter() - started
    if not all(r.ok for r in results):
        raise RuntimeError("in-process embedding failed for some images")
    return len(items) / elapsed, {r.id: r.vector for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--weights", default=None, help="model weights folder (e.g. for HF models)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--images-dir")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads (both sides)")
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds = 64, 1

    import grpc

    from services.common.proto.vsbench.v1 import embedding_pb2_grpc as pb_grpc
    from services.embedder.backends.registry import load_backend

    images = load_images(args)
    items = [ImageItem(f"img-{i}", data) for i, data in enumerate(images)]
    mean_kb = sum(map(len, images)) / len(images) / 1024
    print(
        f"model {args.model}, {len(images)} images of {mean_kb:.0f} KB mean, batch {args.batch}, "
        f"{os.cpu_count()} cores, decode workers {args.decode_workers}, threads {args.threads or 'default'}"
    )

    backend = load_backend(args.model, weights=args.weights, device=args.device, threads=args.threads,
                           max_batch=args.batch)
    backend.warmup()
    sample = images[: min(len(images), 32)]
    decode_only = decode_rate(sample)
    decode_and_preprocess = decode_rate(sample, backend.preprocess)
    print(f"decode per core:               {decode_only:8.1f} images/s")
    print(f"decode + preprocess per core:  {decode_and_preprocess:8.1f} images/s")

    server = ServerProcess(args)
    channel = grpc.insecure_channel(server.address, options=channel_options(64))
    stub = pb_grpc.EmbedderStub(channel)
    server_rates, inprocess_rates, client_cpu = [], [], []
    try:
        run_server_round(stub, items[: args.batch], args.batch, 1)  # warm the server's path
        with ThreadPoolExecutor(args.decode_workers, thread_name_prefix="bench-decode") as pool:
            for round_ in range(args.rounds):
                rate, local_vectors = run_inprocess_round(backend, items, args.batch, pool)
                inprocess_rates.append(rate)
                passes_before, items_before = server.forward_stats()
                rate, served_vectors, client_cpu_ms = run_server_round(
                    stub, items, args.batch, args.in_flight
                )
                server_rates.append(rate)
                client_cpu.append(client_cpu_ms)
                passes, forwarded = (
                    a - b for a, b in zip(server.forward_stats(), (passes_before, items_before))
                )
                print(
                    f"round {round_ + 1}: in-process {inprocess_rates[-1]:6.1f} images/s "
                    f"({-(-len(items) // args.batch)} forward passes), gRPC server {server_rates[-1]:6.1f} "
                    f"images/s ({passes:.0f} forward passes, mean batch {forwarded / max(passes, 1):.1f})",
                    flush=True,
                )
        max_diff = max(float(np.abs(local_vectors[k] - served_vectors[k]).max()) for k in local_vectors)
    finally:
        channel.close()
        server.close()

    server_rate, inprocess_rate = statistics.median(server_rates), statistics.median(inprocess_rates)
    ratio = server_rate / inprocess_rate
    print(f"in-process (median):  {inprocess_rate:8.1f} images/s")
    print(f"gRPC server (median): {server_rate:8.1f} images/s")
    print(f"ratio server / in-process: {ratio:.2f}  (goal >= 0.90)")
    print(f"gRPC client CPU (on the same cores): {statistics.median(client_cpu):.2f} ms per image")
    print(f"max |server - in-process| vector difference: {max_diff:.2e}")
    numbers = {
        "model": args.model,
        "images": len(images),
        "mean_kb": round(mean_kb, 1),
        "batch": args.batch,
        "cores": os.cpu_count(),
        "decode_per_core": round(decode_only, 1),
        "decode_preprocess_per_core": round(decode_and_preprocess, 1),
        "inprocess_images_per_s": [round(r, 2) for r in inprocess_rates],
        "server_images_per_s": [round(r, 2) for r in server_rates],
        "ratio": round(ratio, 3),
        "client_cpu_ms_per_image": round(statistics.median(client_cpu), 3),
        "max_vector_diff": max_diff,
    }
    print(json.dumps(numbers))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
