"""Build the quickstart dataset: a small, real, instance-labelled set made from the shipped photos.

Gallery: each product's catalog photo plus a close-up detail shot. Queries: the real second
captures listed in catalog.csv, plus synthetic "user-captured" views of the catalog photo (see
synth.py). Two manifests share the images:

    <out>/closed/quickstart-closed.csv   inter / closed: no distractors
    <out>/open/quickstart-open.csv       inter / open:   the gallery also holds the distractors, and
                                         the products in OPEN_SET_HELD_OUT are not in it: their
                                         real photos query as out-of-catalog queries (a shopper
                                         photographing what the shop does not carry), which the
                                         open-set analysis must reject

Each has a dataset.yaml sidecar (services.evaluator.datasets.manifest convention; its root is
<out>, so manifest locations are relative to <out>). <out>/provenance.csv says, per image, which
photos it was made from, under which licences, and with which synthesis parameters.

The build is deterministic for a seed and reused when <out> already holds the same build.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from ..datasets.base import Dataset, DatasetError, GalleryType, ImageRecord, Setup, Split
from ..datasets.manifest import write_manifest
from .catalog import CATALOG_CSV, PHOTOS_DIR, PhotoRow, Role, read_catalog
from .synth import Photo, detail_shot, user_capture

STAMP_NAME = "quickstart-build.json"
PROVENANCE_NAME = "provenance.csv"
IMAGES_DIR = "images"
DATASET_NAME = "quickstart"
DETAIL_JPEG_QUALITY = 90
COPY_JPEG_QUALITY = 85
# The code the output depends on (its hash goes into the fingerprint).
GENERATOR_SOURCES = tuple(Path(__file__).parent / name for name in ("build.py", "synth.py", "catalog.py"))
# Bump when the output layout changes in a way the source hash of this folder would not show.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BuildSize:
    max_side: int  # long side of every written image, in pixels
    small_only: bool  # only the photos catalog.csv marks small=yes


SIZES = {
    "full": BuildSize(max_side=640, small_only=False),
    "small": BuildSize(max_side=320, small_only=True),
}


@dataclass(frozen=True)
class BuiltImage:
    record: ImageRecord
    kind: str  # catalog | detail | real_query | synthetic_query | distractor
    sources: tuple[str, ...]  # shipped photo files it was made from
    params: dict


# Products the open variant's gallery leaves out (their queries stay): real out-of-catalog
# queries for the open-set analysis (docs/analytics.md). Each has a real second capture.
OPEN_SET_HELD_OUT = ("graffiti-wall", "motorcycle", "grand-central", "notebook", "rubber-whale")

# Purposes in the per-image random streams, so adding one never shifts another.
_DETAIL, _QUERY = 1, 2


def build_quickstart_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    queries_per_product: int = 4,
    size: str = "full",
    *,
    photos_dir: Path = PHOTOS_DIR,
    catalog_csv: Path = CATALOG_CSV,
) -> dict[str, Path]:
    """Write (or reuse) the dataset under `out_dir`; return {"closed": manifest, "open": manifest}."""
    if size not in SIZES:
        raise DatasetError(f"quickstart size {size!r} is not one of {', '.join(SIZES)}")
    if queries_per_product < 0:
        raise DatasetError(f"queries_per_product must be >= 0, got {queries_per_product}")
    build_size = SIZES[size]
    out = Path(out_dir)
    rows = [r for r in read_catalog(catalog_csv) if r.in_small or not build_size.small_only]
    missing = [r.file for r in rows if not (photos_dir / r.file).is_file()]
    if missing:
        raise DatasetError(f"{photos_dir}: shipped photos missing: {', '.join(missing)}")

    fingerprint = _fingerprint(rows, photos_dir, catalog_csv, seed, queries_per_product, size)
    manifests = {variant: out / variant / f"{DATASET_NAME}-{variant}.csv" for variant in ("closed", "open")}
    previous = _read_stamp(out)
    if (
        previous
        and previous.get("fingerprint") == fingerprint
        and all((out / p).is_file() for p in previous.get("files", []))
    ):
        return manifests
    if previous:
        _remove_previous(out, previous)

    images = _make_images(rows, photos_dir, out, seed, queries_per_product, build_size)
    source = {
        "generator": "services.evaluator.quickstart.build",
        "seed": str(seed),
        "size": size,
        "queries_per_product": str(queries_per_product),
        "fingerprint": fingerprint,
    }
    description = (
        "Quickstart set built from real photos shipped with vsbench (see provenance.csv): real second "
        "captures and synthetic user-captured views as queries; catalog photo and a detail shot per product."
    )
    for variant, gallery_type in (("closed", GalleryType.CLOSED), ("open", GalleryType.OPEN)):
        if variant == "open":
            records = [
                i.record for i in images
                if not (i.record.split is Split.GALLERY and i.record.product_id in OPEN_SET_HELD_OUT)
            ]
        else:
            records = [i.record for i in images if i.kind != "distractor"]
        dataset = Dataset(
            name=f"{DATASET_NAME}-{variant}",
            setup=Setup.INTER,
            gallery_type=gallery_type,
            records=records,
            root=out,
            description=description,
            source=source,
        )
        write_manifest(dataset, manifests[variant])
    _write_provenance(out / PROVENANCE_NAME, images, {r.file: r for r in rows})

    written = [i.record.location for i in images]
    written += [m.relative_to(out).as_posix() for m in manifests.values()]
    written += [(m.parent / "dataset.yaml").relative_to(out).as_posix() for m in manifests.values()]
    written.append(PROVENANCE_NAME)
    _write_stamp(
        out,
        {
            "fingerprint": fingerprint,
            "seed": seed,
            "size": size,
            "queries_per_product": queries_per_product,
            "files": written,
        },
    )
    return manifests


# ---- making the images --------------------------------------------------------------------


def _make_images(
    rows: list[PhotoRow],
    photos_dir: Path,
    out: Path,
    seed: int,
    queries_per_product: int,
    build_size: BuildSize,
) -> list[BuiltImage]:
    backgrounds = [
        Photo(r.file, _load(photos_dir / r.file, build_size.max_side))
        for r in rows
        if r.role is Role.BACKGROUND
    ]
    products = sorted({r.product_id for r in rows if r.role is Role.CATALOG})

    def one_product(product: str) -> list[BuiltImage]:
        return _product_images(
            product, rows, photos_dir, out, seed, queries_per_product, build_size, backgrounds
        )

    # Each image has its own random stream, so threads change the speed, never the bytes
    # (Pillow and numpy release the GIL in the heavy calls).
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = [image for batch in pool.map(one_product, products) for image in batch]
    for row in (r for r in rows if r.role is Role.DISTRACTOR):
        location = f"{IMAGES_DIR}/distractors/{Path(row.file).stem}.jpg"
        _write_copy(photos_dir / row.file, out / location, build_size.max_side)
        images.append(_built(location, "", Split.GALLERY, "distractor", (row.file,), {}))
    return images


def _product_images(
    product: str,
    rows: list[PhotoRow],
    photos_dir: Path,
    out: Path,
    seed: int,
    queries_per_product: int,
    build_size: BuildSize,
    backgrounds: list[Photo],
) -> list[BuiltImage]:
    """Gallery (catalog photos, a detail shot) and queries (real, synthetic) of one product."""
    images: list[BuiltImage] = []
    catalog = [r for r in rows if r.product_id == product and r.role is Role.CATALOG]
    real_queries = [r for r in rows if r.product_id == product and r.role is Role.QUERY]
    catalog_images = [_load(photos_dir / r.file, build_size.max_side) for r in catalog]
    for number, row in enumerate(catalog, start=1):
        location = f"{IMAGES_DIR}/gallery/{product}_catalog-{number}.jpg"
        _write_copy(photos_dir / row.file, out / location, build_size.max_side)
        images.append(_built(location, product, Split.GALLERY, "catalog", (row.file,), {}))

    detail, params = detail_shot(_rng(seed, product, _DETAIL, 0), catalog_images[0], build_size.max_side)
    location = f"{IMAGES_DIR}/gallery/{product}_detail.jpg"
    _write_jpeg(detail, out / location, DETAIL_JPEG_QUALITY)
    images.append(_built(location, product, Split.GALLERY, "detail", (catalog[0].file,), params))

    for number, row in enumerate(real_queries, start=1):
        location = f"{IMAGES_DIR}/queries/{product}_real-{number}.jpg"
        _write_copy(photos_dir / row.file, out / location, build_size.max_side)
        images.append(_built(location, product, Split.QUERY, "real_query", (row.file,), {}))

    for number in range(1, queries_per_product + 1):
        rng = _rng(seed, product, _QUERY, number)
        which = int(rng.integers(len(catalog)))
        image, quality, params = user_capture(rng, catalog_images[which], backgrounds, build_size.max_side)
        location = f"{IMAGES_DIR}/queries/{product}_synthetic-{number}.jpg"
        _write_jpeg(image, out / location, quality)
        used = [catalog[which].file] + [
            p[key]
            for p in (params["framing"], params["occlusion"] or {})
            for key in ("background", "occluder")
            if key in p
        ]
        images.append(
            _built(location, product, Split.QUERY, "synthetic_query", tuple(dict.fromkeys(used)), params)
        )
    return images


def _built(
    location: str, product: str, split: Split, kind: str, sources: tuple[str, ...], params: dict
) -> BuiltImage:
    image_id = location.removeprefix(f"{IMAGES_DIR}/").rsplit(".", 1)[0]
    return BuiltImage(ImageRecord(image_id, location, product, split), kind, sources, params)


def _rng(seed: int, product: str, purpose: int, number: int) -> np.random.Generator:
    """One independent stream per image: a product's images do not change when others are added."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, zlib.crc32(product.encode()), purpose, number])
    )


def _load(path: Path, max_side: int) -> Image.Image:
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.LANCZOS,
        )
    return image


def _write_copy(source: Path, target: Path, max_side: int) -> None:
    """The shipped bytes as they are when they fit; else a downscaled re-encode."""
    with Image.open(source) as opened:
        fits = max(opened.size) <= max_side
    if fits:
        _write_bytes(target, source.read_bytes())
    else:
        _write_jpeg(_load(source, max_side), target, COPY_JPEG_QUALITY)


def _write_jpeg(image: Image.Image, target: Path, quality: int) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    _write_bytes(target, buffer.getvalue())


def _write_bytes(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


# ---- provenance, fingerprint, stamp -------------------------------------------------------


def _write_provenance(path: Path, images: list[BuiltImage], rows: dict[str, PhotoRow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ["image_id", "location", "product_id", "split", "kind", "sources", "licences", "params"]
        )
        for image in images:
            record = image.record
            licences = dict.fromkeys(rows[s].licence for s in image.sources)
            writer.writerow(
                [
                    record.image_id,
                    record.location,
                    record.product_id,
                    record.split.value,
                    image.kind,
                    ";".join(image.sources),
                    " | ".join(licences),
                    json.dumps(image.params, sort_keys=True) if image.params else "",
                ]
            )


def _fingerprint(
    rows: list[PhotoRow], photos_dir: Path, catalog_csv: Path, seed: int, queries_per_product: int, size: str
) -> str:
    """Everything the output depends on: inputs, options, this code, and the image libraries
    (a different Pillow may encode JPEGs differently)."""
    digest = hashlib.sha256()
    facts = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "queries_per_product": queries_per_product,
        "size": size,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    digest.update(json.dumps(facts, sort_keys=True).encode())
    digest.update(catalog_csv.read_bytes())
    for code in GENERATOR_SOURCES:
        digest.update(code.name.encode() + code.read_bytes())
    for row in rows:
        digest.update(row.file.encode() + (photos_dir / row.file).read_bytes())
    return digest.hexdigest()


def _read_stamp(out: Path) -> dict | None:
    try:
        stamp = json.loads((out / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _remove_previous(out: Path, stamp: dict) -> None:
    """Delete only the files an earlier build recorded writing: out_dir may hold other things."""
    for relative in stamp.get("files", []):
        path = out / relative
        if not Path(relative).is_absolute() and ".." not in Path(relative).parts and path.is_file():
            path.unlink()
    (out / STAMP_NAME).unlink(missing_ok=True)


def _write_stamp(out: Path, stamp: dict) -> None:
    """Written last and atomically: an interrupted build has no stamp and is never reused."""
    handle, temporary = tempfile.mkstemp(prefix=f".{STAMP_NAME}.", dir=out)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(stamp, file, indent=1)
    os.replace(temporary, out / STAMP_NAME)
