"""ILIAS ground truth as the official evaluation reads it: ``image_ids/positive_ids.txt``.

Each line is ``id,scale,clutter``; the object (instance) is the first path component of the id.
Every listed positive of an object is relevant to each of its queries (image or text) and counts
in |gt|, whether or not its features are present. The optional taxonomy (the official repository's
``misc/taxonomy.json``: coarse -> mid -> fine -> [objects]) gives the category breakdowns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from services.evaluator.datasets.base import DatasetError
from services.evaluator.datasets.problems import Problems, require_file

IDS_DIR = "image_ids"
POSITIVES_FILE = "positive_ids.txt"
TAXONOMY_FILE = "taxonomy.json"


@dataclass(frozen=True)
class Positive:
    image_id: str
    scale: float
    clutter: int


@dataclass(frozen=True)
class IliasGroundTruth:
    """Per object, its listed positives (sorted by id, as the official loader sorts them)."""

    positives: dict[str, tuple[Positive, ...]]
    source: str

    def object_of(self, image_id: str) -> str:
        return image_id.split("/", 1)[0]

    def positive_ids(self, obj: str) -> frozenset[str]:
        return frozenset(p.image_id for p in self.positives.get(obj, ()))


def read_ground_truth(dataset_dir: str | os.PathLike) -> IliasGroundTruth:
    """Reads ``<dataset_dir>/image_ids/positive_ids.txt``; errors name the line."""
    path = Path(dataset_dir) / IDS_DIR / POSITIVES_FILE
    require_file(path, "ILIAS positives list (get image_ids/ with `vsbench datasets fetch ilias`)")
    problems = Problems(path.name)
    by_object: dict[str, list[Positive]] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        where = f"{path.name} line {number}"
        if len(fields) != 3 or "/" not in fields[0]:
            problems.add(f"{where}: expected <object>/<path>,scale,clutter, got {line.strip()!r}")
            continue
        image_id, scale_text, clutter_text = fields
        try:
            positive = Positive(image_id, float(scale_text), int(clutter_text))
        except ValueError:
            problems.add(f"{where}: scale must be a number and clutter an integer, got {line.strip()!r}")
            continue
        if image_id in seen:
            problems.add(f"{path.name} lines {seen[image_id]} and {number}: duplicate id {image_id!r}")
            continue
        seen[image_id] = number
        by_object.setdefault(image_id.split("/", 1)[0], []).append(positive)
    problems.raise_if_any()
    if not by_object:
        raise DatasetError(f"{path}: no positives listed")
    return IliasGroundTruth(
        positives={obj: tuple(sorted(ps, key=lambda p: p.image_id)) for obj, ps in sorted(by_object.items())},
        source=str(path),
    )


def read_taxonomy(path: str | os.PathLike) -> dict[str, str]:
    """object -> ``coarse-mid`` (the official subcategory key; the category is the part before '-')."""
    file = Path(path)
    require_file(file, "ILIAS taxonomy (misc/taxonomy.json of ilias-vrg/ilias)")
    try:
        tree = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: not valid JSON ({exc})") from None
    mapping: dict[str, str] = {}
    if not isinstance(tree, dict):
        raise DatasetError(f"{file}: expected {{coarse: {{mid: {{fine: [objects]}}}}}}")
    for coarse, mids in tree.items():
        for mid, fines in (mids or {}).items() if isinstance(mids, dict) else ():
            for objects in (fines or {}).values() if isinstance(fines, dict) else ():
                for obj in objects if isinstance(objects, list) else ():
                    mapping[str(obj)] = f"{coarse}-{mid}"
    if not mapping:
        raise DatasetError(f"{file}: no objects found (expected {{coarse: {{mid: {{fine: [objects]}}}}}})")
    return mapping
