"""The GPU check of the production issue, as one prepared script for a lent GPU machine.

1. The embedder serving a torch model of a real architecture (DINOv2 ViT-L/14, randomly
   initialised from its config: no downloads) on CUDA, images/s through gRPC vs in-process on the
   same images in the same run (bench/embedder.py).
2. Exact search at 1M x 1024, 1,000 queries, k = 100 and 1000 (issue 13, ILIAS scale):
   a. exact_topk on the GPU in float32 (gallery streamed from host memory) as a ratio to a float32
      GEMM with the gallery already on the device;
   b. a float16 DeviceGallery resident on the device, searched, as a ratio to the same float16
      GEMM, and how its top-k agree with (a) (float16 is exact for the float16 vectors only);
   c. DeviceShards, one float16 shard per GPU, against (b), when more than one GPU is visible
      (skipped, and said so, on one).

    python bench/gpu_check.py --device cuda --out gpu-check.json     # on the GPU machine
    python bench/gpu_check.py --device cuda --skip-embedder          # section 2 alone
    python bench/gpu_check.py --device cpu --tiny                    # smoke run anywhere (~30 s on 2 cores)

Expected time on one H200, estimated (not yet measured): 3-5 minutes, about half of it the
embedder (model build and save, server start, 3 rounds); random data ~15 s; each search section
under a minute (rounds x ks searches, the host's top-k merges dominating at k = 1000). It must stay
under the device machine's 10-minute command limit: stderr logs the elapsed time after each
section, so a slow one shows where. Prints one markdown block for docs/performance.md with the
card's name, and writes all numbers to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STARTED = time.perf_counter()
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def random_dinov2(directory: Path, tiny: bool) -> None:
    """A DINOv2 checkpoint folder (weights + processor config) with random weights."""
    import transformers

    size = (
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        if tiny
        else dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    )
    transformers.Dinov2Model(transformers.Dinov2Config(image_size=518, patch_size=14, **size)).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        "do_convert_rgb": True,
    }))


def embedder_check(args, weights: Path, out: Path) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "embedder.py"), "--model", "dinov2-large", "--weights", str(weights),
               "--device", args.device, "--images", str(args.images), "--batch", str(args.batch),
               "--rounds", str(args.rounds), "--json", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def search_data(args) -> tuple[np.ndarray, np.ndarray]:
    """Unit gallery rows and queries near some of them (each query has a clear neighbourhood)."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[rng.choice(args.gallery, args.queries, replace=False)] + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries, gallery


def agreement(a, b) -> dict:
    """How far two top-k results agree: shared ids per query, identical ranked lists, score gap."""
    k = a.indices.shape[1]
    shared = [np.intersect1d(x, y).size / k for x, y in zip(a.indices, b.indices)]
    return {"ids_shared": float(np.mean(shared)),
            "rankings_identical": float(np.mean((a.indices == b.indices).all(1))),
            "max_score_gap": float(np.abs(a.scores - b.scores).max())}


def search_check(args, queries: np.ndarray, gallery: np.ndarray) -> dict:
    """(a) float32 exact_topk (gallery streamed from host memory) vs a float32 GEMM with the gallery
    on the device; (b) a float16 DeviceGallery searched vs the same float16 GEMM on the device, and
    how its ids agree with (a); (c) DeviceShards over every GPU vs the one-device float16 search."""
    import torch

    from services.evaluator.device_gallery import DeviceGallery
    from services.evaluator.search import _CudaScorer, exact_topk
    from services.evaluator.sharded_search import DeviceShards

    device, cuda = args.device, args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.rounds):
            sync()
            started = time.perf_counter()
            out = fn()
            sync()
            best = min(best, time.perf_counter() - started)
        return best, out

    def timed_gemm(product, q, g) -> float:  # the operands die with this call: device memory back
        return timed(lambda: product(q, g))[0]

    result: dict = {"gallery": args.gallery, "dim": args.dim, "queries": args.queries, "ks": args.ks}
    q32 = torch.from_numpy(queries).to(device)
    g32 = torch.from_numpy(gallery).to(device)
    result["gemm_fp32_s"] = timed_gemm(lambda a, b: a @ b.T, q32, g32)
    del g32
    fp32, fp16 = {}, {}
    for k in args.ks:
        result[f"fp32_k{k}_s"], fp32[k] = timed(
            lambda: exact_topk(queries, gallery, k, engine="torch", device=device))
    log("fp32 done")

    sync()
    started = time.perf_counter()
    resident = DeviceGallery(gallery, device, dtype="float16")
    sync()
    result["fp16_upload_s"] = time.perf_counter() - started
    result["fp16_gib"] = resident.nbytes / 2**30
    scorer = _CudaScorer(device, "float16")  # the scorer's own GEMM, on one float16 block
    result["fp16_gemm_kernel"] = "cuBLAS float16, float32 out" if scorer.mixed_gemm else "widened to float32"
    g16 = torch.cat(resident.blocks) if len(resident.blocks) > 1 else resident.blocks[0]
    q16 = scorer.queries(queries)
    result["gemm_fp16_s"] = timed_gemm(scorer._scores, q16, g16)
    del g16
    for k in args.ks:
        result[f"fp16_k{k}_s"], fp16[k] = timed(lambda: resident.search(queries, k))
        result[f"fp16_vs_fp32_k{k}"] = agreement(fp16[k], fp32[k])
    log("fp16 done")

    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if cuda else ["cpu", "cpu"]
    if len(devices) < 2:
        result["multi"] = f"skipped: {len(devices)} device"
    else:
        resident.close()  # room for the shard on device 0
        shards = DeviceShards(gallery, devices, dtype="float16")
        result["multi"] = {"devices": devices}
        for k in args.ks:
            seconds, top = timed(lambda: shards.search(queries, k))
            result["multi"][f"k{k}_s"] = seconds
            result["multi"][f"vs_one_device_k{k}"] = agreement(top, fp16[k])
        shards.close()
        log("multi-device done")
    resident.close()
    return result


def search_lines(s: dict) -> list[str]:
    def rate(seconds: float) -> str:
        return f"{s['queries'] / seconds:.0f} queries/s"

    def per_k(prefix: str, gemm: str) -> str:  # rate, and in brackets the share of the GEMM's
        return "; ".join(f"k={k} {rate(s[f'{prefix}_k{k}_s'])} ({s[gemm] / s[f'{prefix}_k{k}_s']:.0%})"
                         for k in s["ks"])

    def agree(a: dict) -> str:
        return (f"ids shared {a['ids_shared']:.2%}, rankings identical {a['rankings_identical']:.1%}, "
                f"largest score gap {a['max_score_gap']:.1e}")

    lines = [
        f"- exact search {s['gallery']:,} x {s['dim']}, {s['queries']} queries, float32 gallery streamed "
        f"from host memory (`exact_topk`): {per_k('fp32', 'gemm_fp32_s')}; in brackets: of the float32 "
        f"GEMM rate with the gallery on the device ({rate(s['gemm_fp32_s'])})",
        f"- float16 gallery resident on the device (`DeviceGallery`, {s['fp16_gib']:.1f} GiB, uploaded in "
        f"{s['fp16_upload_s']:.1f} s): {per_k('fp16', 'gemm_fp16_s')}; in brackets: of the float16 GEMM rate "
        f"({rate(s['gemm_fp16_s'])}, {s['fp16_gemm_kernel']})",
        "- float16 vs float32 top-k: "
        + "; ".join(f"k={k} {agree(s[f'fp16_vs_fp32_k{k}'])}" for k in s["ks"]),
    ]
    multi = s["multi"]
    if isinstance(multi, str):
        lines.append(f"- several devices by shard (`DeviceShards`): {multi}")
    else:
        per_device = [f"k={k} {rate(multi[f'k{k}_s'])}, {s[f'fp16_k{k}_s'] / multi[f'k{k}_s']:.2f}x one "
                      f"device, vs one device {agree(multi[f'vs_one_device_k{k}'])}" for k in s["ks"]]
        head = f"- several devices by shard (`DeviceShards`, float16, {len(multi['devices'])} devices): "
        lines.append(head + "; ".join(per_device))
    return lines


def log(what: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {what}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model and gallery: a smoke run on CPU")
    parser.add_argument("--skip-embedder", action="store_true", help="the search sections only")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ks", type=lambda text: [int(k) for k in text.split(",")], default=[100, 1000])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args()
    if args.tiny:
        args.images, args.gallery, args.queries, args.rounds = min(args.images, 64), 20_000, 100, 1

    import torch

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    result: dict = {"card": card, "torch": torch.__version__}
    if not args.skip_embedder:
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "dinov2-large-random"
            weights.mkdir()
            random_dinov2(weights, args.tiny)
            result["embedder"] = embedder_check(args, weights, Path(tmp) / "embedder.json")
        log("embedder done")
    queries, gallery = search_data(args)
    log("search data ready")
    result["search"] = search_check(args, queries, gallery)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n### GPU check on {card} (torch {torch.__version__})\n")
    if "embedder" in result:
        embed = result["embedder"]
        print(f"- embedder DINOv2-L/14 (random weights), batch {args.batch}, {embed['images']} images: "
              f"in-process {np.median(embed['inprocess_images_per_s']):.1f} images/s, gRPC server "
              f"{np.median(embed['server_images_per_s']):.1f} images/s, ratio {embed['ratio']:.2f}")
    print("\n".join(search_lines(result["search"])))
    print(f"\n(whole check {time.perf_counter() - STARTED:.0f} s)")


if __name__ == "__main__":
    main()
