"""api_proxy benchmarks against a fake vendor running in its own process (python -m tests.fakes.vendors).

1. Sustained throughput under a limit: images/s the proxy gets through as a ratio of the configured
   images/min limit, while the vendor answers 10% of requests with 429 (goal >= 0.95).
2. Overhead per image: the proxy (image check, base64, JSON, retries, validation) against a same-run
   baseline that posts prebuilt request bodies with a bare httpx client, both unlimited, no faults.

    python bench/proxy.py                 # ~1 minute on 2 cores
    python bench/proxy.py --quick         # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.api_proxy.model import ProxyModel  # noqa: E402
from services.api_proxy.settings import ProxySettings  # noqa: E402
from services.common.types import CallUsage, ImageItem  # noqa: E402
from tests.fakes.images import make_images  # noqa: E402

KEY = "bench-key"


class FakeProcess:
    """The fake vendor in a subprocess, so its CPU time is not charged to the proxy."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.vendors", "--key", KEY, *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake vendor did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line.split()[1]}"

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


async def drive(model: ProxyModel, images: list[bytes], call_size: int) -> tuple[float, float, int]:
    """(wall s, process CPU s, failures) to embed every image through concurrent calls."""
    calls = [
        [ImageItem(f"{start + i}", data) for i, data in enumerate(images[start:start + call_size])]
        for start in range(0, len(images), call_size)
    ]
    cpu, wall = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(model.embed(call) for call in calls))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failures = sum(1 for answer in results for r in answer if not r.ok)
    return wall, cpu, failures


def max_in_any_minute(times: list[float], units: list[float]) -> float:
    import numpy as np

    t, u = np.asarray(times), np.asarray(units)
    cumulative = np.concatenate([[0.0], np.cumsum(u)])
    ends = np.searchsorted(t, t + 60.0, side="left")
    return float(max(cumulative[e] - cumulative[i] for i, e in enumerate(ends)))


async def throughput(ipm: float, dim: int, seconds: float) -> dict:
    """Keep the proxy saturated for `seconds`, then measure on the vendor's clock.

    Sustained rate = images embedded (answered 200) per second between 2 s after the start (the
    free initial burst excluded) and the moment the load stopped (the tail of the last retries
    excluded): the rate the proxy keeps up while it has work queued.
    """
    limit_per_s = ipm / 60
    count = int(limit_per_s * seconds * 1.1) + 400
    images = make_images(count, size=(256, 192), quality=95)
    fake = FakeProcess("--vendor", "cohere", "--dim", str(dim), "--random-429", "0.10", "--seed", "3")
    try:
        os.environ["CO_API_KEY"] = KEY
        # Vendor-default retry policy (1 s initial backoff, full jitter); 8 images per request.
        settings = ProxySettings(provider="cohere", dimension=dim, base_url=fake.url, no_cache=True,
                                 ipm=ipm, rpm=0, concurrency=32, max_batch=8)
        async with ProxyModel.from_settings(settings) as model:
            outstanding, submitted, calls = 0, 0, []
            per_call = CallUsage()  # what the calls themselves report (EmbedResponse.usage)

            async def call(batch: list[ImageItem]) -> int:
                nonlocal outstanding
                try:
                    results, usage = await model.embed_billed(batch)
                    per_call.add(usage)
                    return sum(1 for r in results if not r.ok)
                finally:
                    outstanding -= len(batch)

            started = time.monotonic()
            while time.monotonic() - started < seconds and submitted < count:
                if outstanding < 256:  # enough queued to never starve the limiter
                    batch = [ImageItem(str(submitted + i), d) for i, d in enumerate(images[submitted:submitted + 32])]
                    submitted += len(batch)
                    outstanding += len(batch)
                    calls.append(asyncio.create_task(call(batch)))
                else:
                    await asyncio.sleep(0.005)
            stopped = time.monotonic()
            failures = sum(await asyncio.gather(*calls))
            usage = model.usage()
        timeline = fake.ask("timeline")
        # Arrival stamps come from a Python thread of a busy fake: allow 0.5 s of stamping jitter.
        violations = fake.ask(f"violations {ipm} 1.0 0.5")
    finally:
        fake.close()
    # CLOCK_MONOTONIC is shared by both processes, so the fake's stamps compare with ours.
    times = timeline["times"]
    window = (started + 2.0, stopped)
    embedded = sum(u for t, u in zip(times, timeline["units"]) if window[0] <= t < window[1])
    rate = embedded / (window[1] - window[0])
    return {
        "images": submitted, "ipm_limit": ipm, "load_s": round(stopped - started, 1), "failures": failures,
        "sustained_images_per_s": round(rate, 2),
        "sustained_ratio_to_limit": round(rate / limit_per_s, 3),
        "max_images_in_any_60s_window": max_in_any_minute(times, timeline["units"]),
        "vendor_429": usage["http_429"], "retries": usage["retries"], "requests": usage["requests"],
        # Per-call usage summed over every call must equal the process totals above.
        "per_call_sum": per_call.to_dict(),
        "short_window_violations_seen_by_vendor": violations["violations"],
        "first_violations": violations["first"],
    }


async def overhead(images: list[bytes], dim: int, repeats: int = 3) -> dict:
    """Median over `repeats` alternating runs of the bare client and the proxy, same fake, no limits."""
    import statistics

    import httpx

    from services.api_proxy.credentials import HeaderKeyAuth
    from services.api_proxy.images import prepare
    from services.api_proxy.providers.cohere import CohereProvider

    fake = FakeProcess("--vendor", "cohere", "--dim", str(dim))
    batch = 8
    n = len(images)
    baseline: list[tuple[float, float]] = []
    proxied: list[tuple[float, float]] = []
    try:
        provider = CohereProvider(CohereProvider.models["embed-v4.0"], dim, fake.url, HeaderKeyAuth(KEY, "bench"))
        spec = provider.spec.images
        bodies = [provider.build([prepare(d, spec) for d in images[i:i + batch]]).body
                  for i in range(0, n, batch)]
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        os.environ["CO_API_KEY"] = KEY
        settings = ProxySettings(provider="cohere", dimension=dim, base_url=fake.url, no_cache=True,
                                 ipm=0, rpm=0, concurrency=16, max_batch=batch)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as client, \
                ProxyModel.from_settings(settings) as model:
            gate = asyncio.Semaphore(16)

            async def post(body: bytes) -> int:
                async with gate:
                    response = await client.post(f"{fake.url}/v2/embed", content=body, headers=headers)
                    return len(response.json()["embeddings"]["float"])

            await post(bodies[0])  # warm both connection pools and lazy imports
            await model.embed([ImageItem("warm", make_images(1, start=10**6)[0])])
            for _ in range(repeats):
                cpu, wall = time.process_time(), time.perf_counter()
                counts = await asyncio.gather(*(post(body) for body in bodies))
                baseline.append((time.perf_counter() - wall, time.process_time() - cpu))
                assert sum(counts) == n
                proxy_wall, proxy_cpu, failures = await drive(model, images, call_size=32)
                assert failures == 0
                proxied.append((proxy_wall, proxy_cpu))
    finally:
        fake.close()
    base_wall = statistics.median(w for w, _ in baseline)
    base_cpu = statistics.median(c for _, c in baseline)
    proxy_wall = statistics.median(w for w, _ in proxied)
    proxy_cpu = statistics.median(c for _, c in proxied)
    return {
        "images": n, "dim": dim, "vendor_batch": batch, "repeats": repeats,
        "baseline_images_per_s": round(n / base_wall, 1), "proxy_images_per_s": round(n / proxy_wall, 1),
        "throughput_ratio_proxy_vs_baseline": round(base_wall / proxy_wall, 3),
        "baseline_cpu_us_per_image": round(base_cpu / n * 1e6),
        "proxy_cpu_us_per_image": round(proxy_cpu / n * 1e6),
        "cpu_ratio_proxy_vs_baseline": round(proxy_cpu / base_cpu, 2),
        "proxy_overhead_cpu_us_per_image": round((proxy_cpu - base_cpu) / n * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ipm", type=float, default=3000.0, help="images/min limit for the throughput run")
    parser.add_argument("--dim", type=int, default=1536)
    args = parser.parse_args()
    # Long enough that the 60 s window check has something to check.
    first = asyncio.run(throughput(args.ipm, args.dim, seconds=12 if args.quick else 75))
    print("throughput under limit, 10% injected 429:", json.dumps(first, indent=1))
    images = make_images(240 if args.quick else 600, size=(256, 192), quality=95, start=10**5)
    second = asyncio.run(overhead(images, args.dim))
    print("overhead per image:", json.dumps(second, indent=1))
    goal = (first["sustained_ratio_to_limit"] >= 0.95 and first["failures"] == 0
            and first["max_images_in_any_60s_window"] <= args.ipm)
    print(f"RESULT sustained/limit={first['sustained_ratio_to_limit']} (goal >= 0.95: {'met' if goal else 'MISSED'}), "
          f"proxy overhead {second['proxy_overhead_cpu_us_per_image']} us CPU/image, "
          f"throughput vs bare client {second['throughput_ratio_proxy_vs_baseline']}")


if __name__ == "__main__":
    main()
