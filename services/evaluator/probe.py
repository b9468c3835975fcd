"""`vsbench probe`: what a served model actually does, measured on real images, never assumed.

Over any EmbeddingClient (a gRPC server, or a registry model in this process) it measures:

- `dim` and the raw vector norms (min / mean / max), and whether they are all 1 (normalised);
- `determinism_max_abs_diff`: the same images embedded twice, the largest absolute difference
  of any element (0 for a deterministic server);
- `batch_invariance_min_cos`: each image sent alone (a request of one, nothing else in flight) vs
  inside one request of 32 images, the smallest cosine (1 when a vector does not depend on what
  else is in its batch);
- images/s for sequential requests of 1, 32 and 128 images (after one warm-up request);
- parity with a reference implementation when one is registered and installed
  (services.evaluator.probe_references), else "not installed" / "no reference";
- the preprocessing record and fingerprint, as the server describes its model.

Each figure is also judged against a threshold (`ProbeThresholds`); the result's `ok` is False and
`problems` says why when any check fails (the CLI then exits 1). The figures themselves are
always written, so a reader can judge by other thresholds.

A client for a given request size comes from a `ClientFactory(batch_size)`: the measuring
functions below take clients and images and return numbers; `run_probe` only orchestrates.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import VsbenchError
from services.common.types import ImageItem
from services.evaluator.clients.base import EmbeddingClient

SCHEMA = "vsbench.probe"
SCHEMA_VERSION = 1
SCHEMA_ID = f"{SCHEMA}/v{SCHEMA_VERSION}"
INVARIANCE_BATCH = 32
THROUGHPUT_BATCHES = (1, 32, 128)
# Where a probe file sits next to a results folder: <results>/probes/<model>.json (dataset-free).
PROBES_FOLDER = "probes"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "schema" / "probe.schema.json"

ClientFactory = Callable[[int], EmbeddingClient]


class ProbeError(VsbenchError):
    """The probe could not measure (no images, an image the server refused, a dead server)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeThresholds(_Strict):
    """When a figure counts as a problem. Defaults suit float32 serving; bf16 / GPU servers may
    need looser ones (say so in the file: the thresholds are recorded with the figures)."""

    max_abs_diff: float = Field(1e-5, ge=0, description="determinism: largest allowed element difference")
    min_batch_cos: float = Field(0.9999, le=1, description="batch invariance: smallest allowed cosine")
    min_parity_cos: float = Field(0.9999, le=1, description="reference parity: smallest allowed cosine")
    norm_tolerance: float = Field(1e-3, ge=0, description="|norm - 1| allowed when the model says normalized")


class NormStats(_Strict):
    min: float
    mean: float
    max: float


class Throughput(_Strict):
    batch_size: int = Field(description="images per request asked for")
    request_size: int = Field(description="images per request sent (the server's max_batch may cap it)")
    images: int
    seconds: float
    images_per_s: float


class Parity(_Strict):
    status: Literal["ok", "mismatch", "not installed", "no reference", "unavailable"]
    reference: str = Field("", description="what the reference is, in words")
    min_cos: float | None = None
    images: int = 0
    detail: str = ""


class ImagesUsed(_Strict):
    source: str
    count: int
    ids: list[str]


class ProbeResult(_Strict):
    """One probe of one served model: the JSON written by `vsbench probe --out`."""

    schema_id: Literal["vsbench.probe/v1"] = Field(SCHEMA_ID, alias="schema")
    model: str
    fingerprint: str
    target: str = Field(description="'grpc://host:port' or 'in-process:<registry name>'")
    created: str
    info: dict = Field(description="ModelInfo as the server reports it")
    preprocessing: str
    images: ImagesUsed
    dim: int = Field(description="measured vector length")
    norms: NormStats
    normalized_measured: bool
    determinism_max_abs_diff: float
    batch_invariance_min_cos: float
    invariance_batch: int
    throughput: list[Throughput]
    parity: Parity
    thresholds: ProbeThresholds
    problems: list[str]
    ok: bool

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


# --- pure figures -----------------------------------------------------------------------------


def norm_stats(vectors: np.ndarray) -> NormStats:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    return NormStats(min=float(norms.min()), mean=float(norms.mean()), max=float(norms.max()))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ProbeError(f"the same images gave vectors of shapes {a.shape} and {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest cosine between row i of `a` and row i of `b` (a zero row against a non-zero one: 0)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = np.einsum("ij,ij->i", a64, b64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    same_zero = (norms == 0) & (np.abs(a64).sum(1) == np.abs(b64).sum(1))
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same_zero, 1.0, 0.0))
    return float(cos.min())


# --- measuring over clients -------------------------------------------------------------------


def embed_in_order(client: EmbeddingClient, items: Sequence[ImageItem]) -> np.ndarray:
    """(len(items), dim) float32 in item order; any per-item error is a ProbeError (a probe must
    measure every image it was given)."""
    by_id = {}
    for embedding in client.embed(list(items)):
        if not embedding.ok:
            raise ProbeError(f"the server refused image {embedding.id!r}: {embedding.error}")
        by_id[embedding.id] = np.asarray(embedding.vector, dtype=np.float32)
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise ProbeError(f"no answer for {len(missing)} images (first: {missing[0]!r})")
    return np.stack([by_id[item.id] for item in items])


def measure_determinism(client: EmbeddingClient, items: Sequence[ImageItem]) -> tuple[np.ndarray, float]:
    """The vectors of a first pass, and the largest element difference to a second pass."""
    first = embed_in_order(client, items)
    return first, max_abs_diff(first, embed_in_order(client, items))


def measure_batch_invariance(
    single: EmbeddingClient, batched: EmbeddingClient, items: Sequence[ImageItem]
) -> float:
    """Each item in a request of its own (one at a time) vs all of `items` in one request."""
    alone = np.concatenate([embed_in_order(single, [item]) for item in items])
    together = embed_in_order(batched, items)
    return min_row_cosine(alone, together)


def measure_throughput(
    client: EmbeddingClient, items: Sequence[ImageItem], batch_size: int, request_size: int, min_images: int
) -> Throughput:
    """Sequential requests of `request_size` images (a warm-up request first, not counted)."""
    requests = max(2, math.ceil(min_images / request_size))
    pool = repeat_to(items, request_size * (requests + 1))
    embed_in_order(client, pool[:request_size])
    timed = pool[request_size:]
    start = time.perf_counter()
    for offset in range(0, len(timed), request_size):
        embed_in_order(client, timed[offset : offset + request_size])
    seconds = time.perf_counter() - start
    return Throughput(
        batch_size=batch_size,
        request_size=request_size,
        images=len(timed),
        seconds=round(seconds, 6),
        images_per_s=round(len(timed) / seconds, 3) if seconds > 0 else float("inf"),
    )


def repeat_to(items: Sequence[ImageItem], count: int) -> list[ImageItem]:
    """`count` items cycling through `items`, each with a unique id (a batch may need more
    images than were given)."""
    if not items:
        raise ProbeError("no images to probe with")
    out = []
    for index in range(count):
        item = items[index % len(items)]
        out.append(item if index < len(items) else ImageItem(f"{item.id}#{index // len(items)}", item.data))
    return out


# --- the whole probe --------------------------------------------------------------------------


def run_probe(
    connect: ClientFactory,
    images: Sequence[ImageItem],
    *,
    target: str,
    source: str,
    thresholds: ProbeThresholds | None = None,
    throughput_batches: Sequence[int] = THROUGHPUT_BATCHES,
    throughput_images: int = 128,
    reference: Callable | None = None,
) -> ProbeResult:
    """Probe the model behind `connect`. `reference(info, items) -> (N, dim)` is the parity
    reference (None: looked up in services.evaluator.probe_references by model name / backend)."""
    from services.evaluator.probe_references import check_parity

    thresholds = thresholds or ProbeThresholds()
    if not images:
        raise ProbeError(f"no images found in {source}")
    clients: dict[int, EmbeddingClient] = {}

    def client_for(size: int) -> EmbeddingClient:
        if size not in clients:
            clients[size] = connect(size)
        return clients[size]

    try:
        info = client_for(1).info()
        cap = info.max_batch or max(INVARIANCE_BATCH, *throughput_batches)
        vectors, determinism = measure_determinism(client_for(min(INVARIANCE_BATCH, cap)), images)
        group = repeat_to(images, INVARIANCE_BATCH)
        invariance = measure_batch_invariance(client_for(1), client_for(min(INVARIANCE_BATCH, cap)), group)
        throughput = [
            measure_throughput(client_for(min(size, cap)), images, size, min(size, cap), throughput_images)
            for size in throughput_batches
        ]
        parity = check_parity(info, images, vectors, thresholds.min_parity_cos, reference)
    finally:
        for client in clients.values():
            client.close()

    norms = norm_stats(vectors)
    tolerance = thresholds.norm_tolerance
    normalized = abs(norms.min - 1) <= tolerance and abs(norms.max - 1) <= tolerance
    problems = []
    if vectors.shape[1] != info.dim:
        problems.append(f"vectors have {vectors.shape[1]} dims, the server says {info.dim}")
    if info.normalized and not normalized:
        problems.append(f"the server says normalized but norms run {norms.min:.6g}..{norms.max:.6g}")
    if not np.isfinite(vectors).all():
        problems.append("non-finite values in the vectors")
    if determinism > thresholds.max_abs_diff:
        problems.append(
            f"not deterministic: the same images twice differ by up to {determinism:.3g} "
            f"(allowed {thresholds.max_abs_diff:g})"
        )
    if invariance < thresholds.min_batch_cos:
        problems.append(
            f"batch-dependent: an image alone vs in a batch of {INVARIANCE_BATCH} has cosine down to "
            f"{invariance:.6f} (allowed {thresholds.min_batch_cos:g})"
        )
    if parity.status == "mismatch":
        problems.append(f"differs from its reference ({parity.reference}): min cosine {parity.min_cos:.6f}")
    return ProbeResult(
        model=info.name,
        fingerprint=info.fingerprint,
        target=target,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        info=info.to_dict(),
        preprocessing=info.preprocessing,
        images=ImagesUsed(source=source, count=len(images), ids=[item.id for item in images]),
        dim=int(vectors.shape[1]),
        norms=norms,
        normalized_measured=normalized,
        determinism_max_abs_diff=determinism,
        batch_invariance_min_cos=invariance,
        invariance_batch=INVARIANCE_BATCH,
        throughput=throughput,
        parity=parity,
        thresholds=thresholds,
        problems=problems,
        ok=not problems,
    )


def load_images(folder: Path | None, limit: int | None = None) -> tuple[list[ImageItem], str]:
    """The image files of `folder` (sorted, not recursive), or the shipped quickstart photos."""
    from services.evaluator.datasets.folder import IMAGE_SUFFIXES
    from services.evaluator.quickstart.catalog import PHOTOS_DIR

    folder = folder or PHOTOS_DIR
    if not folder.is_dir():
        raise ProbeError(f"--images {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    paths = paths[:limit] if limit else paths
    if not paths:
        raise ProbeError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [ImageItem(path.name, path.read_bytes()) for path in paths], str(folder)


def probe_path(results_dir: Path, model: str) -> Path:
    """Where the report looks for a model's probe: <results>/probes/<model>.json."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
    return results_dir / PROBES_FOLDER / f"{safe}.json"


def read_probe(path: Path) -> ProbeResult:
    """A probe file, refused with one line when it is not one of this schema."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{path}: not a readable probe file ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_ID:
        found = data.get("schema") if isinstance(data, dict) else None
        raise ProbeError(f"{path}: schema {found!r}, expected {SCHEMA_ID!r}")
    return ProbeResult.model_validate(data)


def schema_text() -> str:
    """The JSON Schema of a probe file, as committed in docs/schema/probe.schema.json."""
    import json

    schema = ProbeResult.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://vsbench.dev/schema/{SCHEMA_ID}.json"
    schema["title"] = f"vsbench probe ({SCHEMA_ID})"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m services.evaluator.probe: rewrite the committed schema
    SCHEMA_FILE.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
