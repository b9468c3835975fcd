"""Products-10K test split, intra-retrieval, closed.

``test_kaggletest.csv`` has the columns name, class, usage (Public/Private); they are read by
position because the header's casing varies between copies. Images lie in ``test/<name>``. The
image id is the file name; the product id is the class.

The seed's 11,200-image test set matches no public count, so an id list can select a subset:
one file name a line (``test/`` prefix, a ``name`` header, blank lines, ``#`` comments and extra
comma-separated columns are tolerated). The list's file name, size and sha256 go into
``dataset.source`` so the results say which subset was scored.
"""

from __future__ import annotations

import csv
import hashlib
import io
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

P10K_TEST_INDEX = "test_kaggletest.csv"
P10K_TEST_DIR = "test"
P10K_USAGES = ("public", "private")


def load_products10k(
    root: str | os.PathLike,
    *,
    ids: str | os.PathLike | None = None,
    usage: str | None = None,
    name: str | None = None,
) -> Dataset:
    """`ids`: optional id-list file selecting a subset; `usage`: keep only Public or Private rows."""
    top = Path(root)
    index = top / P10K_TEST_INDEX
    require_file(index, "Products-10K test index")
    if usage is not None and usage.lower() not in P10K_USAGES:
        raise DatasetError(f"Products-10K usage must be one of {', '.join(P10K_USAGES)}, got {usage!r}")

    problems = Problems(P10K_TEST_INDEX)
    rows = list(csv.reader(io.StringIO(index.read_text(encoding="utf-8-sig"), newline="")))
    records: list[ImageRecord] = []
    first_seen: dict[str, int] = {}
    for number, fields in enumerate(rows, start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        where = f"{P10K_TEST_INDEX} line {number}"
        if len(fields) < 2:
            problems.add(f"{where}: expected name,class[,usage], found {len(fields)} field")
            continue
        image_name, product_id = fields[0].strip(), fields[1].strip()
        if number == 1 and not product_id.lstrip("-").isdigit():
            continue  # the header line, whatever its casing
        if not product_id:
            problems.add(f"{where}: image {image_name!r} has no class")
            continue
        if usage is not None and (len(fields) < 3 or fields[2].strip().lower() != usage.lower()):
            continue
        location = f"{P10K_TEST_DIR}/{image_name}"
        try:
            check_relative_location(image_name, where)
        except DatasetError as exc:
            problems.add(str(exc))
            continue
        if image_name in first_seen:
            lines = f"lines {first_seen[image_name]} and {number}"
            problems.add(f"{P10K_TEST_INDEX} {lines}: duplicate image {image_name!r}")
            continue
        first_seen[image_name] = number
        records.append(ImageRecord(image_name, location, product_id, Split.GALLERY))
    problems.raise_if_any()

    source = {"format": "products10k", "root": str(top), "index": P10K_TEST_INDEX, "split": "test"}
    description = "Products-10K test split, intra-retrieval"
    if usage is not None:
        source["usage"] = usage.lower()
        description += f", {usage.capitalize()} rows only"
    if ids is not None:
        records, subset = _select(records, Path(ids))
        source.update(subset)
        description += f", subset {subset['subset']} ({subset['subset_size']} images)"
    if not records:
        raise DatasetError(f"{P10K_TEST_INDEX}: no images selected")
    validate_records(records, Setup.INTRA, where=P10K_TEST_INDEX)
    return Dataset(
        name=name or "products10k",
        setup=Setup.INTRA,
        gallery_type=GalleryType.CLOSED,
        records=records,
        root=top,
        description=description,
        source=source,
    )


def read_id_list(path: Path) -> list[tuple[int, str]]:
    """(line number, id) pairs from an id-list file; errors name the line."""
    require_file(path, "id list")
    raw = path.read_bytes()
    problems = Problems(path.name)
    entries: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(raw.decode("utf-8-sig").splitlines(), start=1):
        text = line.split(",", 1)[0].strip()
        if not text or text.startswith("#") or (not entries and text.lower() == "name"):
            continue
        text = text.removeprefix(f"{P10K_TEST_DIR}/")
        if text in first_seen:
            problems.add(f"{path.name} lines {first_seen[text]} and {number}: {text!r} listed twice")
            continue
        first_seen[text] = number
        entries.append((number, text))
    problems.raise_if_any()
    if not entries:
        raise DatasetError(f"{path.name}: the id list is empty")
    return entries


def _select(records: list[ImageRecord], id_list: Path) -> tuple[list[ImageRecord], dict[str, str]]:
    entries = read_id_list(id_list)
    by_id = {r.image_id: r for r in records}
    unknown = [(n, i) for n, i in entries if i not in by_id]
    if unknown:
        shown = ", ".join(f"line {n}: {i!r}" for n, i in unknown[:5])
        raise DatasetError(
            f"{id_list.name}: {len(unknown)} of {len(entries)} ids are not in {P10K_TEST_INDEX} ({shown}"
            f"{', ...' if len(unknown) > 5 else ''})"
        )
    wanted = {i for _, i in entries}
    selected = [r for r in records if r.image_id in wanted]  # keep the index's order
    digest = hashlib.sha256(id_list.read_bytes()).hexdigest()
    return selected, {"subset": id_list.name, "subset_size": str(len(selected)), "subset_sha256": digest}
