"""The curation table: which shipped photo plays which part, and where it came from.

catalog.csv columns: file (in photos/), product_id ("" unless role is catalog or query), role,
source (package and version), original_path (inside that package), licence, copyright,
small ("yes" if the small build uses it).
"""

from __future__ import annotations

import csv
import enum
from dataclasses import dataclass
from pathlib import Path

from ..datasets.base import DatasetError

HERE = Path(__file__).resolve().parent
CATALOG_CSV = HERE / "catalog.csv"
PHOTOS_DIR = HERE / "photos"

COLUMNS = ("file", "product_id", "role", "source", "original_path", "licence", "copyright", "small")


class Role(str, enum.Enum):
    CATALOG = "catalog"  # a product's reference photo: goes to the gallery
    QUERY = "query"  # a second, real capture of a product: a real query
    DISTRACTOR = "distractor"  # no product: only in the open gallery
    BACKGROUND = "background"  # clutter behind pasted queries and occluders; never in a gallery


@dataclass(frozen=True, slots=True)
class PhotoRow:
    file: str
    product_id: str
    role: Role
    source: str
    original_path: str
    licence: str
    copyright: str
    in_small: bool


def read_catalog(path: Path = CATALOG_CSV) -> list[PhotoRow]:
    """Parse and check the table; every problem names its line."""
    problems: list[str] = []
    rows: list[PhotoRow] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DatasetError(f"{path}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        seen: set[str] = set()
        for line, raw in enumerate(reader, start=2):
            where = f"{path.name} line {line}"
            try:
                role = Role(raw["role"])
            except ValueError:
                problems.append(f"{where}: unknown role {raw['role']!r}")
                continue
            has_product = role in (Role.CATALOG, Role.QUERY)
            if has_product != bool(raw["product_id"]):
                problems.append(
                    f"{where}: role {role.value} {'needs' if has_product else 'takes no'} product_id"
                )
            if not raw["licence"] or not raw["source"] or not raw["original_path"]:
                problems.append(f"{where}: source, original_path and licence are required")
            if raw["file"] in seen or "/" in raw["file"] or not raw["file"]:
                problems.append(f"{where}: file {raw['file']!r} is empty, repeated or not a plain name")
            if raw["small"] not in ("yes", "no"):
                problems.append(f"{where}: small must be yes or no")
            seen.add(raw["file"])
            rows.append(
                PhotoRow(
                    file=raw["file"],
                    product_id=raw["product_id"],
                    role=role,
                    source=raw["source"],
                    original_path=raw["original_path"],
                    licence=raw["licence"],
                    copyright=raw["copyright"],
                    in_small=raw["small"] == "yes",
                )
            )
    catalogued = {r.product_id for r in rows if r.role is Role.CATALOG}
    for row in rows:
        if row.role is Role.QUERY and row.product_id not in catalogued:
            problems.append(
                f"{path.name}: query photo {row.file} has product {row.product_id!r} with no catalog photo"
            )
    if not any(r.role is Role.BACKGROUND for r in rows):
        problems.append(f"{path.name}: no background photo (needed to synthesise queries)")
    if problems:
        raise DatasetError("\n".join(problems))
    return rows
