"""What every parity test shares: the real photos, a vsbench backend served over real gRPC on
loopback, cosine checks, a Hugging Face hub cache written to disk, and the measured figures.

A parity test builds one model at its real architecture with random weights (fixed seed), saves
it where the vsbench backend loads from in its normal way, and compares
  (a) the reference library's documented preprocessing + forward, with
  (b) the vectors vsbench's embedder returns over gRPC for the same photo files.
It also shows the comparison can fail: a plausible preprocessing slip (the wrong resample, say)
must fall below the parity bar on the same weights, or random weights would prove nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from services.common.grpc_server import BackgroundServer
from services.common.settings import ServerSettings
from services.common.types import ImageItem, ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.batching import BatchingEmbedder
from services.evaluator.clients.grpc import GrpcEmbeddingClient

PHOTOS = Path(__file__).resolve().parents[2] / "services" / "evaluator" / "quickstart" / "photos"
PHOTO_COUNT = 4
PARITY_MIN_COS = 0.9999  # float32, reference library vs vsbench over gRPC
BF16_MIN_COS = 0.99  # bf16 vs fp32 of the same model (reported; asserted loosely)
SEED = 0


def photo_paths() -> list[Path]:
    # Every 10th photo: different scenes and sizes, not near-duplicates of one another.
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() == ".jpg")[::10][:PHOTO_COUNT]
    assert len(paths) == PHOTO_COUNT, f"the quickstart's photos are missing from {PHOTOS}"
    return paths


def load_photo(path: Path) -> Image.Image:
    """How a reference user opens a photo. EXIF orientation is applied because the embedder applies
    it too (services/embedder/images.py); both then see the same pixels."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def embed_over_grpc(
    backend: ModelBackend, paths: list[Path], max_batch: int = 2
) -> tuple[np.ndarray, ModelInfo]:
    """The photo files' bytes through a real embedder server on loopback; rows in `paths` order.
    max_batch < len(paths) so that the server forms more than one batch."""
    embedder = BatchingEmbedder(backend, max_batch=max_batch, max_wait_ms=20, decode_workers=1)
    items = [ImageItem(p.name, p.read_bytes()) for p in paths]
    with (
        BackgroundServer(embedder, ServerSettings(port=0)) as server,
        GrpcEmbeddingClient(server.address) as client,
    ):
        info = client.info()
        results = {r.id: r for r in client.embed(items)}
    failed = {key: str(r.error) for key, r in results.items() if not r.ok}
    assert not failed, failed
    return np.stack([np.asarray(results[p.name].vector, dtype=np.float32) for p in paths]), info


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def distinct_photos(vectors: np.ndarray) -> float:
    """Largest cosine between two different photos: the random model must tell them apart."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1.0)
    return float(similarity.max())


@dataclass
class Measured:
    parity: float  # min cosine, reference vs vsbench over gRPC, float32
    bf16: float  # min cosine, bf16 vs fp32 reference
    slip: float  # min cosine, reference vs the reference with a preprocessing slip
    slip_what: str
    architecture: str


MEASURED: dict[str, Measured] = {}


def check_and_record(
    model: str,
    *,
    reference: np.ndarray,
    served: np.ndarray,
    bf16: np.ndarray,
    slipped: np.ndarray,
    slip_what: str,
    architecture: str,
) -> Measured:
    """Assert parity, bf16 closeness and that the slip is caught; keep the figures for the summary."""
    measured = Measured(
        parity=float(cosines(reference, served).min()),
        bf16=float(cosines(reference, bf16).min()),
        slip=float(cosines(reference, slipped).min()),
        slip_what=slip_what,
        architecture=architecture,
    )
    MEASURED[model] = measured
    print(f"{model}: {measured}")
    assert np.isfinite(served).all() and np.isfinite(reference).all()
    assert distinct_photos(reference) < 0.999, "the random model maps different photos to one vector"
    assert measured.parity >= PARITY_MIN_COS, f"{model}: parity {measured.parity:.6f} < {PARITY_MIN_COS}"
    assert measured.bf16 >= BF16_MIN_COS, f"{model}: bf16 vs fp32 {measured.bf16:.5f} < {BF16_MIN_COS}"
    assert measured.slip < PARITY_MIN_COS, (
        f"{model}: the parity check cannot see a slip ({slip_what}: {measured.slip:.6f})"
    )
    return measured


def summary_lines() -> list[str]:
    lines = [
        f"{'model':28} {'parity fp32':>12} {'bf16 vs fp32':>13} {'slip caught':>12}  slip / architecture"
    ]
    for name, m in sorted(MEASURED.items()):
        lines.append(
            f"{name:28} {m.parity:12.7f} {m.bf16:13.5f} {m.slip:12.6f}  {m.slip_what} / {m.architecture}"
        )
    return lines


def write_hub_cache(
    cache_root: Path, repo_id: str, files: dict[str, bytes | Path], commit: str = "0" * 40
) -> Path:
    """A Hugging Face hub cache entry as huggingface_hub lays it out (refs/main -> snapshots/<commit>),
    so that offline lookups (try_to_load_from_cache, snapshot_download(local_files_only=True)) find
    `files`; returns the snapshot directory."""
    repo_dir = cache_root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, content in files.items():
        target = snapshot / name
        if isinstance(content, Path):
            target.symlink_to(content.resolve())
        else:
            target.write_bytes(content)
    return snapshot


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))
