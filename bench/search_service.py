"""The search service's figures (docs/performance.md, "Search service"):

1. ANN vs exact: recall@10 of the HNSW answers against exact search of the same collection, on the
   quickstart catalog (real photos, efficientnet-lite0) and on a synthetic N x 768 catalog; the
   smallest `ef` reaching recall@10 >= 0.99 is reported.
2. Throughput under C concurrent clients on loopback (default 16): queries/s and p50 / p99 latency,
   split into embed and search time (the service reports both per answer), for vector queries and
   image queries with the histogram model, then efficientnet-lite0.

    python bench/search_service.py --out bench-search.json                  # everything, N = 200k
    python bench/search_service.py --synthetic 1000000 --skip-service       # the 1M x 768 catalog

Synthetic catalog: random unit rows; each query is a catalog row plus Gaussian noise (cosine ~0.8 to
its row), like a shopper's photo of a catalog item. Random rows have no cluster structure, which
makes them harder for HNSW than real embeddings: the ef found here is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.search.index import CollectionMeta, IndexParams, open_index  # noqa: E402

EFS = (16, 32, 64, 128, 256, 512)
TARGET = 0.99


def unit_rows(rng: np.random.Generator, n: int, dim: int, intrinsic: int, block: int = 65536) -> np.ndarray:
    """n unit rows in `dim` dimensions lying near an `intrinsic`-dimensional subspace (0: uniform
    on the sphere, no structure at all)."""
    out = np.empty((n, dim), dtype=np.float32)
    basis = rng.standard_normal((intrinsic, dim), dtype=np.float32) / np.sqrt(intrinsic) if intrinsic else None
    for start in range(0, n, block):
        size = min(block, n - start)
        if basis is None:
            part = rng.standard_normal((size, dim), dtype=np.float32)
        else:
            part = rng.standard_normal((size, intrinsic), dtype=np.float32) @ basis
            part += rng.standard_normal((size, dim), dtype=np.float32) * (0.1 / np.sqrt(dim))
        out[start : start + size] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def exact_top(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ gallery.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
        out[start : start + 256] = np.take_along_axis(part, order, 1)
    return out


def ann_sweep(index, queries: np.ndarray, exact: list[set[str]], k: int = 10, efs=EFS) -> list[dict]:
    rows = []
    for ef in efs:
        started = time.perf_counter()
        found = [{h.image_id for h in index.search(q, k, ef=ef)} for q in queries]
        elapsed = time.perf_counter() - started
        recall = float(np.mean([len(f & e) / k for f, e in zip(found, exact)]))
        rows.append({"ef": ef, "recall@10": round(recall, 4), "ms_per_query": round(1000 * elapsed / len(queries), 3)})
        print(f"  ef={ef}: recall@10 {recall:.4f}, {1000 * elapsed / len(queries):.2f} ms/query", flush=True)
    return rows


def chosen_ef(rows: list[dict]) -> int | None:
    return next((r["ef"] for r in rows if r["recall@10"] >= TARGET), None)


def synthetic(n: int, dim: int, n_queries: int, params: IndexParams, intrinsic: int, efs=EFS) -> dict:
    rng = np.random.default_rng(0)
    print(f"synthetic catalog {n} x {dim} (intrinsic dimension {intrinsic or dim})", flush=True)
    gallery = unit_rows(rng, n, dim, intrinsic)
    picks = rng.choice(n, n_queries, replace=False)
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * (0.75 / np.sqrt(dim))
    queries = gallery[picks] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top(gallery, queries, 10)
    exact = [{str(i) for i in row} for row in truth]
    with tempfile.TemporaryDirectory(prefix="vsbench-ann-") as folder:
        index = open_index("synthetic", store=folder)
        index.create(CollectionMeta(fingerprint="sha256:synthetic", model={}, dim=dim, params=params))
        started = time.perf_counter()
        for start in range(0, n, 20_000):
            rows = gallery[start : start + 20_000]
            ids = [str(i) for i in range(start, start + len(rows))]
            index.upsert(ids, rows, [{"product_id": i} for i in ids])
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        index.optimize()
        build_s = time.perf_counter() - started
        print(f"  upsert {upsert_s:.0f}s, HNSW build {build_s:.0f}s", flush=True)
        rows = ann_sweep(index, queries, exact, efs=efs)
        index.close()
    return {"n": n, "dim": dim, "intrinsic_dim": intrinsic or dim, "queries": n_queries, "params": vars(params) if hasattr(params, "__dict__") else str(params),
            "upsert_s": round(upsert_s, 1), "hnsw_build_s": round(build_s, 1), "sweep": rows, "chosen_ef": chosen_ef(rows)}


def quickstart_ann(root: Path, embedder_address: str) -> dict:
    from services.evaluator.clients.grpc import GrpcEmbeddingClient
    from services.evaluator.datasets.registry import load_dataset
    from services.evaluator.quickstart.build import build_quickstart_dataset
    from services.search.build import build_index
    from services.search.engine import SearchEngine

    dataset = load_dataset("manifest", build_quickstart_dataset(root / "dataset")["open"])
    params = IndexParams(indexing_threshold_kb=1, full_scan_threshold_kb=1)
    index = open_index("quickstart-ann", store=root / "ann-store")
    with GrpcEmbeddingClient(embedder_address) as client:
        build_index(dataset, client, index, params=params)
        engine = SearchEngine(client, index)
        engine.check()
        queries = np.stack([engine.embed(dataset.read(q)) for q in dataset.queries()])
    exact = [{h.image_id for h in index.search(q, 10, exact=True)} for q in queries]
    print(f"quickstart catalog: {index.count()} images, {len(queries)} query photos", flush=True)
    rows = ann_sweep(index, queries, exact)
    index.close()
    return {"n": len(dataset.gallery()), "queries": len(queries), "sweep": rows, "chosen_ef": chosen_ef(rows)}


def load(service_address: str, requests: list, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own channel, sending requests back to back for `seconds`."""
    from services.search.client import SearchClient

    latencies: list[float] = []
    embed: list[float] = []
    search: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(offset: int) -> None:
        with SearchClient(service_address) as client:
            i = offset
            while not stop.is_set():
                kind, payload = requests[i % len(requests)]
                started = time.perf_counter()
                try:
                    answer = client.search_image(payload, k=10) if kind == "image" else client.search_vector(payload, k=10)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(exc))
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    embed.append(answer.embed_seconds)
                    search.append(answer.search_seconds)
                i += 1

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(min(2.0, seconds / 5))  # warm-up, discarded
    with lock:
        latencies.clear(), embed.clear(), search.clear()
    started = time.perf_counter()
    time.sleep(seconds)
    with lock:
        done = list(latencies), list(embed), list(search)
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    lat, emb, sea = (np.asarray(x) * 1000 for x in done)
    return {
        "clients": clients, "seconds": round(elapsed, 1), "queries": len(lat), "errors": len(errors),
        "qps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "embed_p50_ms": round(float(np.percentile(emb, 50)), 2), "embed_p99_ms": round(float(np.percentile(emb, 99)), 2),
        "search_p50_ms": round(float(np.percentile(sea, 50)), 3), "search_p99_ms": round(float(np.percentile(sea, 99)), 3),
    }


def service_figures(root: Path, model: str, clients: int, seconds: float, ef: int | None) -> dict:
    from services.evaluator.clients.grpc import GrpcEmbeddingClient
    from services.evaluator.datasets.registry import load_dataset
    from services.evaluator.quickstart.build import build_quickstart_dataset
    from services.evaluator.servers import ServerProcess, embedder_process
    from services.search.build import build_index

    dataset = load_dataset("manifest", build_quickstart_dataset(root / "dataset")["open"])
    images = [dataset.read(q) for q in dataset.queries()]
    with embedder_process(model, "--max-batch", "16", "--max-wait-ms", "2") as embedder:
        store = root / f"store-{model}"
        index = open_index("quickstart", store=store)
        with GrpcEmbeddingClient(embedder.address) as client:
            build_index(dataset, client, index)
            vectors = [v.vector for v in client.embed([__import__("services.common.types", fromlist=["x"]).ImageItem(str(i), b)
                                                        for i, b in enumerate(images)])]
        index.close()
        extra = ["--ef", str(ef)] if ef else []
        with ServerProcess(["services.search", "--store", str(store), "--collection", "quickstart", "--embedder",
                            embedder.address, "--log-level", "WARNING", *extra], name="search") as service:
            out = {"model": model}
            print(f"{model}: vector queries, {clients} clients", flush=True)
            out["vector"] = load(service.address, [("vector", v) for v in vectors], clients, seconds)
            print(f"  {out['vector']}", flush=True)
            print(f"{model}: image queries, {clients} clients", flush=True)
            out["image"] = load(service.address, [("image", b) for b in images], clients, seconds)
            print(f"  {out['image']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic catalog size (0: skip)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--intrinsic-dim", type=int, default=64, help="0: uniform random rows (HNSW's worst case)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construct", type=int, default=100)
    parser.add_argument("--efs", default=",".join(map(str, EFS)), help="search ef values for the synthetic sweep")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--models", default="histogram,efficientnet-lite0")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="vsbench-search-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_quickstart:
            from services.evaluator.servers import embedder_process

            with embedder_process("efficientnet-lite0") as embedder:
                result["quickstart_ann"] = quickstart_ann(root, embedder.address)
        if args.synthetic:
            params = IndexParams(m=args.m, ef_construct=args.ef_construct, indexing_threshold_kb=1, full_scan_threshold_kb=1)
            result["synthetic_ann"] = synthetic(args.synthetic, args.dim, args.queries, params, args.intrinsic_dim,
                                                [int(e) for e in args.efs.split(",")])
        if not args.skip_service:
            ef = result.get("synthetic_ann", {}).get("chosen_ef")
            result["service"] = [service_figures(root, m.strip(), args.clients, args.seconds, ef)
                                 for m in args.models.split(",") if m.strip()]
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
