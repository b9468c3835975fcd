"""Stanford Online Products: one split from its Ebay_<split>.txt index, intra-retrieval, closed.

``Ebay_test.txt`` is space separated with the header ``image_id class_id super_class_id path``;
``path`` is relative to the Stanford_Online_Products folder (``bicycle_final/111085122871_0.JPG``).
The product id is ``class_id``; the image id is ``path`` (unique, where ``image_id`` may not be
across splits).
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    Dataset,
    DatasetError,
    GalleryType,
    ImageRecord,
    Setup,
    Split,
    check_relative_location,
    validate_records,
)
from .problems import Problems, require_file

SOP_FOLDER = "Stanford_Online_Products"
SOP_SPLIT_FILES = {"test": "Ebay_test.txt", "train": "Ebay_train.txt"}
SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")


def _sop_root(root: Path, index_name: str) -> Path:
    """Accept the Stanford_Online_Products folder itself or the folder holding it."""
    if not (root / index_name).is_file() and (root / SOP_FOLDER / index_name).is_file():
        return root / SOP_FOLDER
    return root


def load_sop(root: str | os.PathLike, *, split: str = "test", name: str | None = None) -> Dataset:
    if split not in SOP_SPLIT_FILES:
        raise DatasetError(f"SOP split must be one of {', '.join(SOP_SPLIT_FILES)}, got {split!r}")
    index_name = SOP_SPLIT_FILES[split]
    top = _sop_root(Path(root), index_name)
    index = top / index_name
    require_file(index, f"SOP index (give the {SOP_FOLDER} folder)")
    lines = index.read_text(encoding="utf-8").splitlines()
    header = tuple(lines[0].split()) if lines else ()
    if header != SOP_HEADER:
        found = lines[0] if lines else ""
        raise DatasetError(
            f"{index_name} line 1: expected the header {' '.join(SOP_HEADER)!r}, found {found!r}"
        )

    problems = Problems(index_name)
    records: list[ImageRecord] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        where = f"{index_name} line {number}"
        if len(fields) != len(SOP_HEADER):
            problems.add(f"{where}: expected {len(SOP_HEADER)} fields, found {len(fields)}")
            continue
        _, class_id, super_class_id, path = fields
        if not (class_id.isdigit() and super_class_id.isdigit()):
            problems.add(
                f"{where}: class_id and super_class_id must be integers, got {class_id!r} {super_class_id!r}"
            )
            continue
        try:
            check_relative_location(path, where)
        except DatasetError as exc:
            problems.add(str(exc))
            continue
        if path in first_seen:
            problems.add(f"{index_name} lines {first_seen[path]} and {number}: duplicate path {path!r}")
            continue
        first_seen[path] = number
        records.append(ImageRecord(path, path, class_id, Split.GALLERY))
    if not records and not problems:
        problems.add(f"{index_name}: no images listed")
    problems.raise_if_any()
    validate_records(records, Setup.INTRA, where=index_name)
    return Dataset(
        name=name or ("sop" if split == "test" else f"sop-{split}"),
        setup=Setup.INTRA,
        gallery_type=GalleryType.CLOSED,
        records=records,
        root=top,
        description=f"Stanford Online Products, {split} split ({index_name}), intra-retrieval",
        source={"format": "sop", "root": str(top), "index": index_name, "split": split},
    )
