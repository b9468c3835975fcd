"""Overload as back-pressure: N evaluator clients share one embedder server on loopback.

Each client is a real GrpcEmbeddingClient (a thread here; the clients do little CPU work) that
streams its own images with the default window (4 batches of 32 in flight), so 32 clients ask
for 4,096 items at once from a server that admits 512. Refused batches come back as
EmbedResponse.rejected and are resent after the server's retry-after with jitter.

First one lone client embeds --baseline-images on the same server (the goodput a single caller
gets with no contention, measured in the same run). Printed: whether every client finished with every image exactly once, goodput (delivered images
per second of wall time), server work per delivered image (forward-passed items from the
server's Prometheus batch-size histogram / images delivered; goal <= 1.1), rejections, and the
p50/p99 time the server took per stream batch (histogram_quantile over its latency histogram,
so within one bucket).

    python bench/overload.py                          # 32 clients x 96 images, efficientnet-lite0
    python bench/overload.py --model histogram        # the batching machinery alone, fast
    python bench/overload.py --clients 8 --images 32  # smoke run
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.embedder import photo_like  # noqa: E402
from services.common.types import ImageItem  # noqa: E402
from services.evaluator.clients.grpc import GrpcEmbeddingClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.metrics_port = free_port()
        command = [
            sys.executable, "-m", "services.embedder", "--model", args.model, "--host", "127.0.0.1",
            "--port", "0", "--max-queue", str(args.max_queue), "--max-batch", str(args.max_batch),
            "--metrics-port", str(self.metrics_port), "--log-level", "WARNING",
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.address = line.split()[1]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
            return answer.read().decode()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def metric_sum(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def histogram_quantile(text: str, name: str, label: str, quantile: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the quantile."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and label in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = quantile * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return lower_bound


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--images", type=int, default=96, help="images per client")
    parser.add_argument("--max-queue", type=int, default=512, help="server admission (its default)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="server intra-op threads")
    parser.add_argument(
        "--baseline-images", type=int, default=256,
        help="images one lone client sends first, on the same server: the goodput baseline (0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()

    pictures = [photo_like(seed) for seed in range(64)]
    server = Server(args)
    try:
        baseline_rate = None
        if args.baseline_images:
            lone = [ImageItem(f"lone-{i}", pictures[i % len(pictures)]) for i in range(args.baseline_images)]
            with GrpcEmbeddingClient(server.address) as client:
                started = time.perf_counter()
                assert sum(1 for e in client.embed(iter(lone)) if e.ok) == len(lone)
                baseline_rate = len(lone) / (time.perf_counter() - started)
        before = server.metrics()
        failures: list[str] = []
        lock = threading.Lock()

        def one_client(index: int) -> tuple[Counter, int, int]:
            source = (
                ImageItem(f"c{index}-{i}", pictures[(index * 7 + i) % len(pictures)])
                for i in range(args.images)
            )
            try:
                with GrpcEmbeddingClient(server.address) as client:
                    delivered = Counter(e.id for e in client.embed(source))
                    return delivered, client.rejections, client.retries
            except Exception as exc:  # noqa: BLE001 - reported, the other clients go on
                with lock:
                    failures.append(f"client {index}: {type(exc).__name__}: {exc}")
                return Counter(), 0, 0

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            outcomes = list(pool.map(one_client, range(args.clients)))
        wall = time.perf_counter() - started
        after = server.metrics()
    finally:
        server.close()

    delivered = sum(sum(c.values()) for c, _, _ in outcomes)
    exactly_once = all(
        c == Counter({f"c{index}-{i}": 1 for i in range(args.images)})
        for index, (c, _, _) in enumerate(outcomes)
    )
    forwarded = metric_sum(after, "vsbench_batch_size_sum{") - metric_sum(before, "vsbench_batch_size_sum{")
    label = 'method="EmbedStream"'

    def latency(quantile: float) -> float:
        return round(histogram_quantile(after, "vsbench_request_latency_seconds", label, quantile), 3)

    result = {
        "model": args.model,
        "clients": args.clients,
        "images_requested": args.clients * args.images,
        "clients_finished": args.clients - len(failures),
        "images_delivered": delivered,
        "every_image_exactly_once": exactly_once,
        "wall_s": round(wall, 2),
        "goodput_images_per_s": round(delivered / wall, 1),
        "one_client_images_per_s": None if baseline_rate is None else round(baseline_rate, 1),
        "goodput_ratio_to_one_client": None if baseline_rate is None else round(delivered / wall / baseline_rate, 3),
        "server_work_per_delivered_image": round(forwarded / max(delivered, 1), 3),
        "batches_rejected_and_resent": sum(r for _, r, _ in outcomes),
        "stream_restarts": sum(r for _, _, r in outcomes),
        "server_batch_latency_p50_s": latency(0.5),
        "server_batch_latency_p99_s": latency(0.99),
        "failures": failures,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34} {value}")
    sys.exit(0 if exactly_once and not failures and forwarded <= 1.1 * delivered else 1)


if __name__ == "__main__":
    main()
