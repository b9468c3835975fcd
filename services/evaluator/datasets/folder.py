"""Folder layout: the product id is the folder an image lies in.

```
<root>/gallery/<product id>/<image>       required
<root>/query/<product id>/<image>         present -> inter; absent -> intra (queries = gallery)
<root>/distractors/<image>                present and non-empty -> open gallery
```
Images may lie deeper below a product folder (the product is the first folder). The image id is
the path relative to the root (``gallery/123/a.jpg``). Hidden files and non-image files are skipped.
Symlinked folders are listed, but an image whose real path is outside the root is refused when
read (its READ_ERROR) unless the dataset option ``allow_outside_root: true`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterator

from .base import Dataset, DatasetError, GalleryType, ImageRecord, Setup, Split, validate_records
from .problems import Problems

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
GALLERY_DIR, QUERY_DIR, DISTRACTOR_DIR = "gallery", "query", "distractors"


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def iter_image_files(top: Path) -> Iterator[PurePosixPath]:
    """Image files below `top` as POSIX paths relative to it, sorted by path (the gallery order
    breaks score ties, so it must not depend on the file system)."""
    return iter(sorted(_walk_images(top), key=lambda p: p.parts))


def _walk_images(top: Path) -> Iterator[PurePosixPath]:
    # Symlinked folders are followed (image folders are often linked in), each real folder once.
    visited: set[str] = set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        relative = PurePosixPath(Path(folder).relative_to(top).as_posix())
        for name in files:
            if is_image_name(name):
                yield relative / name


def load_folder(
    root: str | os.PathLike,
    *,
    name: str | None = None,
    description: str = "",
    allow_outside_root: bool = False,
) -> Dataset:
    top = Path(root)
    if not top.is_dir():
        raise DatasetError(f"{top}: dataset folder not found")
    gallery_dir = top / GALLERY_DIR
    if not gallery_dir.is_dir():
        raise DatasetError(
            f"{top}: no {GALLERY_DIR}/ folder (expected {GALLERY_DIR}/<product>/<image>, optional "
            f"{QUERY_DIR}/<product>/<image> and {DISTRACTOR_DIR}/<image>)"
        )
    problems = Problems(str(top))
    records = list(_product_records(top, GALLERY_DIR, Split.GALLERY, problems))
    has_query_dir = (top / QUERY_DIR).is_dir()
    if has_query_dir:
        records += _product_records(top, QUERY_DIR, Split.QUERY, problems)
    distractor_dir = top / DISTRACTOR_DIR
    distractors = []
    if distractor_dir.is_dir():
        distractors = [
            ImageRecord(f"{DISTRACTOR_DIR}/{p}", f"{DISTRACTOR_DIR}/{p}", "", Split.GALLERY)
            for p in iter_image_files(distractor_dir)
        ]
    problems.raise_if_any()
    records += distractors
    setup = Setup.INTER if has_query_dir else Setup.INTRA
    validate_records(records, setup, where=str(top))
    return Dataset(
        name=name or top.resolve().name,
        setup=setup,
        gallery_type=GalleryType.OPEN if distractors else GalleryType.CLOSED,
        records=records,
        root=top,
        description=description,
        source={"format": "folder", "root": str(top)},
        allow_outside_root=allow_outside_root,
    )


def _product_records(top: Path, split_dir: str, split: Split, problems: Problems) -> Iterator[ImageRecord]:
    for relative in iter_image_files(top / split_dir):
        location = f"{split_dir}/{relative}"
        if len(relative.parts) < 2:
            problems.add(
                f"{top / location}: images in {split_dir}/ must lie in {split_dir}/<product id>/ "
                f"(distractors go in {DISTRACTOR_DIR}/)"
            )
            continue
        yield ImageRecord(location, location, relative.parts[0], split)
