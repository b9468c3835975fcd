"""Small JPEG thumbnails for the failure galleries, never copies of the full images.

An `ImageResolver` maps (dataset name, image id) to a local file, the encoded image bytes, or None.
The default one looks in the dataset root the pipeline records in each result
(`data["dataset"]["source"]["root"]`) for a file named like the image id; `dataset_resolver` goes
through loaded `Dataset` objects (what `vsbench report` passes). Anything that cannot be found or
decoded gets the placeholder thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from services.evaluator.results import RunResult, path_segment

if TYPE_CHECKING:
    from services.evaluator.datasets.base import Dataset

log = logging.getLogger(__name__)

ImageResolver = Callable[[str, str], "Path | bytes | None"]
PLACEHOLDER = "thumbs/missing.jpg"


def default_resolver(runs: Iterable[RunResult]) -> ImageResolver:
    """root/<image_id> under each dataset's recorded root, if that file exists inside the root."""
    roots: dict[str, Path] = {}
    for run in runs:
        source = run.data.get("dataset", {}).get("source") or {}
        root = source.get("root") if isinstance(source, dict) else None
        if root and run.dataset not in roots:
            roots[run.dataset] = Path(root)

    def resolve(dataset: str, image_id: str) -> Path | None:
        root = roots.get(dataset)
        if root is None or not image_id:
            return None
        try:
            candidate = (root / image_id).resolve()
            if not candidate.is_relative_to(root.resolve()) or not candidate.is_file():
                return None
        except (OSError, ValueError):
            return None
        return candidate

    return resolve


def dataset_resolver(datasets: Iterable["Dataset"]) -> ImageResolver:
    """Image ids resolved through loaded datasets: the record's file when it is one, else the bytes
    the dataset's own reader returns (tar shards and other storage)."""
    index = {d.name: (d, {r.image_id: r for r in d.records}) for d in datasets}

    def resolve(dataset: str, image_id: str) -> Path | bytes | None:
        entry = index.get(dataset)
        record = entry[1].get(image_id) if entry else None
        if record is None:
            return None
        try:
            path = entry[0].path_of(record)
            if path.is_file():
                return path
        except Exception:  # noqa: BLE001 - fall back to the dataset's reader
            pass
        try:
            return entry[0].read(record)
        except Exception as exc:  # noqa: BLE001 - an unreadable image becomes the placeholder
            log.warning("cannot read %s/%s: %s", dataset, image_id, exc)
            return None

    return resolve


class ThumbnailStore:
    """Writes each (dataset, image) thumbnail once under <site>/thumbs/ and returns its path
    relative to the site root at once; the JPEGs are made on worker threads (Pillow decodes
    without the GIL) and `close()` waits for them. An image that cannot be decoded gets a copy of
    the placeholder at its path, so no page ever points at a missing file."""

    def __init__(
        self,
        site_dir: Path,
        resolver: ImageResolver,
        size: int = 96,
        quality: int = 80,
        workers: int | None = None,
    ):
        self.site_dir = site_dir
        self.resolver = resolver
        self.size = size
        self.quality = quality
        self._done: dict[tuple[str, str], str] = {}
        self._futures: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
        self.missing = 0
        self.resolver_errors = 0
        self._placeholder = self._write_placeholder()

    @property
    def made(self) -> int:
        return sum(1 for f in self._futures if f.done() and f.result())

    def _write_placeholder(self) -> bytes:
        from PIL import Image, ImageDraw

        path = self.site_dir / PLACEHOLDER
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (self.size, self.size), (226, 229, 234))
        draw = ImageDraw.Draw(image)
        inset = self.size // 4
        draw.line((inset, inset, self.size - inset, self.size - inset), fill=(150, 156, 166), width=3)
        draw.line((inset, self.size - inset, self.size - inset, inset), fill=(150, 156, 166), width=3)
        image.save(path, "JPEG", quality=self.quality)
        return path.read_bytes()

    def url(self, dataset: str, image_id: str) -> str:
        key = (dataset, image_id)
        if key not in self._done:
            self._done[key] = self._schedule(dataset, image_id)
        return self._done[key]

    def is_placeholder(self, url: str) -> bool:
        return url == PLACEHOLDER

    def _schedule(self, dataset: str, image_id: str) -> str:
        try:
            source = self.resolver(dataset, image_id)
        except Exception as exc:  # noqa: BLE001 - a resolver bug must not lose the whole site
            self.resolver_errors += 1
            if self.resolver_errors <= 3:  # the same bug repeats for every image: say it a few times
                log.warning("image resolver failed for %s/%s: %r", dataset, image_id, exc)
            source = None
        if source is None:
            self.missing += 1
            return PLACEHOLDER
        digest = hashlib.sha1(f"{dataset}\0{image_id}".encode()).hexdigest()[:20]
        relative = f"thumbs/{path_segment(dataset)}/{digest}.jpg"
        if not isinstance(source, bytes):
            source = Path(source)
        self._futures.append(self._pool.submit(self._make, source, self.site_dir / relative))
        return relative

    def _make(self, source: Path | bytes, target: Path) -> bool:
        from PIL import Image, ImageOps

        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.draft("RGB", (self.size * 2, self.size * 2))  # JPEG: decode at reduced scale
                thumb = ImageOps.exif_transpose(image).convert("RGB")
                thumb.thumbnail((self.size, self.size))
                thumb.save(target, "JPEG", quality=self.quality)
            return True
        except Exception as exc:  # noqa: BLE001 - unreadable/corrupt images get the placeholder
            log.warning("no thumbnail for %s: %s", target.name if isinstance(source, bytes) else source, exc)
            target.write_bytes(self._placeholder)
            return False

    def close(self) -> None:
        """Wait for every thumbnail; raises only for errors writing the site itself."""
        self._pool.shutdown(wait=True)
        for future in self._futures:
            future.result()
