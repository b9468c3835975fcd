"""Exact search over a gallery larger than memory: 5M x 1024 float16 memory-mapped from an .npy.

    python bench/scale.py                          # 5,000,000 x 1024 float16 (~10 GB file), 1,000 queries, k=1000
    python bench/scale.py --rows 500000 --keep     # smaller; keep the file for the next run
    python bench/scale.py --dir /data --json out.json
    python bench/scale.py --via-cli --keep         # the same gallery through `vsbench score --gallery DIR`

The gallery file is generated once, streaming (random L2-normalised rows, float16), in --dir (it
checks free space first and shrinks N to what fits, saying so). The search runs in a child
process so its memory is its own: a sampler thread reads RssAnon (anonymous memory: the heap, not
the file's pages mapped from the page cache) from /proc/self/status every 20 ms.

The baseline is the same product without the search around it, measured in the same child and
paired in time: after every --every gallery blocks the search pauses (in its progress callback,
pause not counted) while one gallery block is read from the same memmap, converted float16 ->
float32 into a buffer and multiplied by the queries with numpy's and with torch's GEMM. Each
segment's ratio is (faster bare time per row x the segment's rows) / the segment's search time;
the median over segments is reported (load from other jobs changes during a minutes-long run).

--via-cli runs the user's path instead: the gallery becomes an embedding directory (the .npy
hard-linked as embeddings.npy, plus items.parquet with 5M ILIAS-like ids and labels), 1,000 queries
another, and `vsbench score --gallery DIR --queries DIR --map-k K` runs as its own process, its
anonymous memory sampled from /proc/PID/status every 20 ms by this process. Its wall time (process
start, reading and checking 5M ids, search, metrics, writing 1M ranked ids) is compared with the
bare block product (as above, fp16 -> fp32 + GEMM, the faster library) measured on blocks spread
over the file just before and just after it, extrapolated to the whole gallery.
"""

from __future__ import annotations

import os

# As the vsbench CLI runs (services/evaluator/cli/__init__.py): OpenBLAS's threads sleep right
# after a GEMM instead of polling through the selection that follows it. Before numpy loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMORY_GOAL = 3 * 2**30
RATIO_GOAL = 0.6
_BLOCK = 65536


def generate(path: Path, rows: int, dim: int, seed: int = 5) -> None:
    """Random unit rows as float16, written block by block through a memmap (bounded memory)."""
    scratch = path.with_name(path.name + ".partial")
    out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float16, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, rows, _BLOCK):
        part = rng.standard_normal((min(_BLOCK, rows - start), dim), dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        out[start : start + part.shape[0]] = part
        if start // _BLOCK % 16 == 15:
            out.flush()
            print(f"  generated {start + part.shape[0]:,} / {rows:,} rows ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    out.flush()
    del out
    scratch.replace(path)


_CHILD = r"""
import json, sys, threading, time
import numpy as np
from services.evaluator.search import DEFAULT_TILE_BYTES, exact_topk, resolve_engine

path, n_q, k, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = resolve_engine("auto")
import torch  # loaded (by the calibration too) before the memory baseline: libraries, not search

def rss():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

gallery = np.load(path, mmap_mode="r")
n, dim = gallery.shape
rng = np.random.default_rng(1)
q = rng.standard_normal((n_q, dim), dtype=np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
rows = max(k + 1, min(DEFAULT_TILE_BYTES // (4 * n_q), DEFAULT_TILE_BYTES // (4 * dim)))
cast = np.empty((rows, dim), dtype=np.float32)
out = np.empty((n_q, rows), dtype=np.float32)
tq, tcast, tout = torch.from_numpy(q), torch.from_numpy(cast), torch.from_numpy(out)
# the cast on all cores, as the search does it: the baseline gets every trick the search gets
from concurrent.futures import ThreadPoolExecutor
import os
pool = ThreadPoolExecutor(len(os.sched_getaffinity(0)))
step = -(-rows // len(os.sched_getaffinity(0)))

def bare_seconds_per_row(start):
    # the same product as the search, nothing around it: fp16 block -> fp32 buffer -> GEMM,
    # with numpy's and torch's GEMM; the faster counts
    block = gallery[start : start + rows]
    m = len(block)
    seconds = {}
    for name in ("numpy", "torch"):
        t0 = time.perf_counter()
        list(pool.map(lambda i: np.copyto(cast[i : i + step], block[i : i + step]), range(0, m, step)))
        if name == "numpy":
            np.matmul(q, cast[:m].T, out=out[:, :m])
        else:
            torch.matmul(tq, tcast[:m].T, out=tout[:, :m])
        seconds[name] = (time.perf_counter() - t0) / m
    return seconds

# Paired in time: every `every` gallery blocks the search pauses (in its progress callback) for
# one bare block product; each segment's search time is compared with the bare rate measured at
# its end, so load from elsewhere changing during a minutes-long run hits both alike.
segments = []
state = {"blocks": 0, "rows": 0, "paused": 0.0, "segment_start": None}
def progress(block_rows):
    state["blocks"] += 1
    state["rows"] += block_rows
    if state["blocks"] % every == 0:
        now = time.perf_counter()
        search_s = now - state["segment_start"]
        bare = bare_seconds_per_row(min(state["done"], n - rows))
        segments.append({"rows": state["rows"], "search_s": search_s, "bare_s_per_row": bare})
        state["rows"] = 0
        state["paused"] += time.perf_counter() - now
        state["segment_start"] = time.perf_counter()
    state["done"] = state.get("done", 0) + block_rows

before = rss()
peak = dict(before)
done = False
def sample():
    while not done:
        for key, value in rss().items():
            peak[key] = max(peak[key], value)
        time.sleep(0.02)
watcher = threading.Thread(target=sample, daemon=True)
watcher.start()
t0 = time.perf_counter()
state["segment_start"] = t0
top = exact_topk(q, gallery, k, progress=progress)
search_s = time.perf_counter() - t0 - state["paused"]
done = True
watcher.join()
print(json.dumps({"engine": engine, "rows": n, "dim": dim, "queries": n_q, "k": k, "block_rows": rows,
                  "search_s": search_s, "before": before, "peak": peak, "segments": segments,
                  "found": int((top.indices >= 0).sum())}))
"""


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the gallery .npy goes")
    parser.add_argument("--keep", action="store_true", help="keep the gallery file (reused by the next run)")
    parser.add_argument("--every", type=int, default=8, help="a bare block product after every this many gallery blocks")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--via-cli", action="store_true", help="time `vsbench score --gallery DIR` instead")
    args = parser.parse_args(argv)

    rows, dim = args.rows, args.dim
    path = args.dir / f"vsbench-scale-{rows}x{dim}-f16.npy"
    if not path.exists():
        free = shutil.disk_usage(args.dir).free
        need = rows * dim * 2 + 2**20
        if need > free - 2 * 2**30:  # leave 2 GiB for everyone else
            rows = max(_BLOCK, int((free - 2 * 2**30) // (dim * 2)) // _BLOCK * _BLOCK)
            print(f"only {gib(free)} free in {args.dir}: gallery shrunk to {rows:,} rows (asked {args.rows:,})")
            path = args.dir / f"vsbench-scale-{rows}x{dim}-f16.npy"
    if path.exists():
        print(f"reusing {path} ({gib(path.stat().st_size)})")
    else:
        print(f"generating {path}: {rows:,} x {dim} float16 ({gib(rows * dim * 2)})")
        generate(path, rows, dim)
    if args.via_cli:
        try:
            return via_cli(args, path)
        finally:
            if not args.keep:
                path.unlink(missing_ok=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", _CHILD, str(path), str(args.queries), str(args.k), str(args.every)]
        started = time.perf_counter()
        child = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    result = json.loads(child.stdout)
    segments = result["segments"]
    ratios = [min(seg["bare_s_per_row"].values()) * seg["rows"] / seg["search_s"] for seg in segments]
    bare_total = sum(min(seg["bare_s_per_row"].values()) * seg["rows"] for seg in segments)
    searched = sum(seg["search_s"] for seg in segments)
    ratio = float(np.median(ratios))
    peak_anon = result["peak"]["RssAnon"]
    result.update({"segment_ratios": [round(r, 3) for r in ratios], "ratio_median": ratio,
                   "ratio_overall": bare_total / searched, "child_wall_s": wall})
    print(f"{result['rows']:,} x {dim} float16 gallery (memory-mapped), {args.queries:,} queries, k={args.k}, "
          f"engine {result['engine']}, gallery blocks of {result['block_rows']:,} rows")
    print(f"  search: {result['search_s']:.1f} s ({args.queries / result['search_s']:.2f} queries/s, "
          f"{result['rows'] * args.queries * dim * 2 / result['search_s'] / 1e9:.0f} GFLOP/s)")
    print(f"  bare GEMM (fp16 -> fp32 per block counted, faster of numpy/torch), measured after every "
          f"{args.every} blocks: ratio bare time / search time per segment {[round(r, 2) for r in ratios]}")
    print(f"  ratio: median {ratio:.3f}, overall {result['ratio_overall']:.3f}; goal >= {RATIO_GOAL}: "
          f"{'meets' if ratio >= RATIO_GOAL else 'MISSES'}")
    print(f"  peak anonymous memory {gib(peak_anon)} (before the search {gib(result['before']['RssAnon'])}; "
          f"file-backed pages peak {gib(result['peak']['RssFile'])}); goal <= {gib(MEMORY_GOAL)}: "
          f"{'meets' if peak_anon <= MEMORY_GOAL else 'MISSES'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


_BARE = r"""
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np, torch
path, n_q, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gallery = np.load(path, mmap_mode="r")
n, dim = gallery.shape
rows = 65536
q = np.random.default_rng(1).standard_normal((n_q, dim), dtype=np.float32)
cast = np.empty((rows, dim), dtype=np.float32)
out = np.empty((n_q, rows), dtype=np.float32)
tq, tcast, tout = torch.from_numpy(q), torch.from_numpy(cast), torch.from_numpy(out)
cores = len(os.sched_getaffinity(0))
pool = ThreadPoolExecutor(cores)
step = -(-rows // cores)
per_row = []
for start in np.linspace(0, n - rows, samples).astype(int):
    block = gallery[start : start + rows]
    best = float("inf")
    for name in ("numpy", "torch"):
        t0 = time.perf_counter()
        list(pool.map(lambda i: np.copyto(cast[i : i + step], block[i : i + step]), range(0, rows, step)))
        if name == "numpy":
            np.matmul(q, cast.T, out=out)
        else:
            torch.matmul(tq, tcast.T, out=tout)
        best = min(best, time.perf_counter() - t0)
    per_row.append(best / rows)
print(json.dumps({"seconds_per_row": per_row, "rows": n}))
"""


def _ids_and_labels(rows: int, products: int = 1000, per_product: int = 5):
    """ILIAS-like ids (30 characters) and labels: the first products x per_product rows are
    catalog images of `products` products, every other row a distractor."""
    import pyarrow as pa

    ids = pa.array([f"distractors/{i // 10000:05d}/{i:09d}.jpg" for i in range(rows)], pa.string())
    labelled = products * per_product
    labels = pa.array([f"product_{i // per_product:05d}" if i < labelled else "" for i in range(rows)], pa.string())
    return ids, labels


def via_cli(args, path: Path) -> int:
    """`vsbench score` over the gallery as an embedding directory; see the module docstring."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from services.evaluator.embedding_files import write_split

    gallery = np.load(path, mmap_mode="r")
    rows, dim = gallery.shape
    work = Path(tempfile.mkdtemp(prefix="vsbench-scale-cli-", dir=args.dir))
    try:
        gallery_dir = work / "gallery"
        gallery_dir.mkdir()
        os.link(path, gallery_dir / "embeddings.npy")
        ids, labels = _ids_and_labels(rows)
        pq.write_table(pa.table({"id": ids, "label": labels}), gallery_dir / "items.parquet")
        del ids, labels
        rng = np.random.default_rng(2)
        queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
        q_labels = [f"product_{i % 1000:05d}" for i in range(args.queries)]
        write_split(work / "queries", queries, [f"query/{i:05d}.jpg" for i in range(args.queries)], q_labels)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        bare = [sys.executable, "-c", _BARE, str(path), str(args.queries), "8"]
        before = json.loads(subprocess.run(bare, check=True, capture_output=True, text=True, env=env).stdout)
        script = Path(sys.executable).with_name("vsbench")
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "services.evaluator.cli"]
        command += ["score", "--gallery", str(gallery_dir), "--queries", str(work / "queries"), "--k", "1,5",
                    "--map-k", str(args.k), "--out", str(work / "run.json")]
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = {"RssAnon": 0, "RssFile": 0}
        while child.poll() is None:
            try:
                for line in open(f"/proc/{child.pid}/status"):
                    key, _, value = line.partition(":")
                    if key in peak:
                        peak[key] = max(peak[key], int(value.split()[0]) * 1024)
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - started
        out, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"vsbench score failed: {err}")
        after = json.loads(subprocess.run(bare, check=True, capture_output=True, text=True, env=env).stdout)
        record = json.loads((work / "run.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_row = float(np.median(before["seconds_per_row"] + after["seconds_per_row"]))
    bare_s = per_row * rows
    ratio = bare_s / wall
    result = {"rows": rows, "dim": dim, "queries": args.queries, "k": args.k, "vsbench_wall_s": wall,
              "bare_gemm_s_estimate": bare_s, "ratio": ratio, "peak": peak,
              "bare_s_per_row_before": before["seconds_per_row"], "bare_s_per_row_after": after["seconds_per_row"],
              "record_timings": record["timings"], "metrics": record["metrics"]}
    print(f"`vsbench score` over a {rows:,} x {dim} float16 embedding directory (memory-mapped, items.parquet "
          f"of {rows:,} ids), {args.queries:,} queries, mAP@{args.k}")
    print(f"  wall {wall:.1f} s (record: search {record['timings']['search_s']:.1f} s, scoring stage "
          f"{record['timings']['score_total_s']:.1f} s); bare GEMM of the same product {bare_s:.1f} s "
          f"(median of 16 sampled blocks, before and after)")
    print(f"  ratio bare / vsbench {ratio:.3f}; goal >= {RATIO_GOAL}: {'meets' if ratio >= RATIO_GOAL else 'MISSES'}")
    print(f"  peak anonymous memory {gib(peak['RssAnon'])} (file-backed pages peak {gib(peak['RssFile'])}); goal "
          f"<= {gib(MEMORY_GOAL)}: {'meets' if peak['RssAnon'] <= MEMORY_GOAL else 'MISSES'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
