"""The GPU check of the production issue, as one prepared script for a lent GPU machine.

1. The embedder serving a torch model of a real architecture (DINOv2 ViT-L/14, randomly
   initialised from its config: no downloads) on CUDA, images/s through gRPC vs in-process on the
   same images in the same run (bench/embedder.py).
2. The evaluator's exact search on the GPU at 1M x 1024 (exact_topk, torch engine), as a ratio to
   a plain GPU GEMM measured in the same run.

    python bench/gpu_check.py --device cuda --out gpu-check.json     # on the GPU machine
    python bench/gpu_check.py --device cpu --tiny                    # smoke run anywhere

Prints one markdown block for docs/performance.md with the card's name.
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


def search_check(args) -> dict:
    import torch

    from services.evaluator.search import exact_topk

    device = args.device
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.gallery, 1024), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[rng.choice(args.gallery, args.queries, replace=False)] + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(args.rounds):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        return best

    g_dev = torch.from_numpy(gallery).to(device)
    q_dev = torch.from_numpy(queries).to(device)
    gemm_s = timed(lambda: q_dev @ g_dev.T)
    del g_dev
    topk_s = timed(lambda: exact_topk(queries, gallery, args.k, engine="torch", device=device))
    return {
        "gallery": args.gallery, "dim": 1024, "queries": args.queries, "k": args.k,
        "gemm_resident_queries_per_s": args.queries / gemm_s,
        "exact_topk_queries_per_s": args.queries / topk_s,
        "ratio_to_resident_gemm": gemm_s / topk_s,
        "note": "exact_topk streams the gallery from host memory in blocks (includes the transfer); "
                "the GEMM baseline has the gallery already on the device",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model and gallery: a smoke run on CPU")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args()
    if args.tiny:
        args.images, args.gallery, args.queries, args.rounds = min(args.images, 64), 20_000, 100, 1

    import torch

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "dinov2-large-random"
        weights.mkdir()
        random_dinov2(weights, args.tiny)
        embed = embedder_check(args, weights, Path(tmp) / "embedder.json")
    search = search_check(args)
    result = {"card": card, "torch": torch.__version__, "embedder": embed, "search": search}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n### GPU check on {card} (torch {torch.__version__})\n")
    print(f"- embedder DINOv2-L/14 (random weights), batch {args.batch}, {embed['images']} images: in-process "
          f"{np.median(embed['inprocess_images_per_s']):.1f} images/s, gRPC server "
          f"{np.median(embed['server_images_per_s']):.1f} images/s, ratio {embed['ratio']:.2f}")
    print(f"- exact search {search['gallery']:,} x 1024, {search['queries']} queries, k={search['k']}: "
          f"{search['exact_topk_queries_per_s']:.0f} queries/s, {search['ratio_to_resident_gemm']:.0%} of the "
          f"device-resident GEMM rate ({search['gemm_resident_queries_per_s']:.0f} queries/s)")


if __name__ == "__main__":
    main()
