"""SEAM: a dataset is a list of image records plus how to read each image's bytes.

Every loader (generic manifest, folder layout, SOP, Products-10K, ILIAS, the quickstart set)
returns a `Dataset`; the pipeline never asks which kind it has.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence
from urllib.parse import urlparse

from services.common.errors import VsbenchError

if TYPE_CHECKING:
    from services.evaluator.datasets.columns import DatasetColumns


class Split(str, enum.Enum):
    QUERY = "query"
    GALLERY = "gallery"


class Setup(str, enum.Enum):
    """intra: queries are the gallery's own images (self-match removed); inter: separate splits."""

    INTRA = "intra"
    INTER = "inter"


class GalleryType(str, enum.Enum):
    """closed: every gallery image has a product; open: the gallery also holds distractors."""

    CLOSED = "closed"
    OPEN = "open"


class DatasetError(VsbenchError, ValueError):
    """A dataset that cannot be used as given. The message names the file and line (or record)."""


class OutsideRootError(PermissionError):
    """A record whose file (after following symlinks) lies outside the dataset root. An OSError, so
    it is reported like an unreadable file: that image's READ_ERROR, and the run goes on."""


OUTSIDE_ROOT_HINT = (
    "reading outside the dataset root is off by default (set the dataset option "
    "allow_outside_root: true to allow it)"
)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image. `location` is a POSIX path relative to the dataset root, or a file:// URI.
    `product_id` is "" for a distractor (never relevant to any query)."""

    image_id: str
    location: str
    product_id: str
    split: Split

    @property
    def is_distractor(self) -> bool:
        return self.product_id == ""


@dataclass
class Dataset:
    """Records plus the facts the protocol needs. In an intra dataset every record is in the
    gallery split and the queries are the gallery images that have a product id."""

    name: str
    setup: Setup
    gallery_type: GalleryType
    records: list[ImageRecord]
    root: Path | None = None
    description: str = ""
    # Where the records came from and any subset applied: copied into results.
    source: Mapping[str, str] = field(default_factory=dict)
    # False: `read` refuses any file that is not inside `root` once symlinks are resolved (a
    # file:// location, a symlink out of the tree). True: locations are read wherever they point.
    allow_outside_root: bool = False

    # ---- views -------------------------------------------------------------------------
    def gallery(self) -> list[ImageRecord]:
        return [r for r in self.records if r.split is Split.GALLERY]

    def queries(self) -> list[ImageRecord]:
        if self.setup is Setup.INTRA:
            return [r for r in self.records if r.split is Split.GALLERY and not r.is_distractor]
        return [r for r in self.records if r.split is Split.QUERY]

    def counts(self) -> dict[str, int]:
        return self.columns().counts()

    def columns(self) -> "DatasetColumns":
        """Ids and labels as columns (datasets/columns.py): all that scoring reads of a dataset."""
        import pyarrow as pa

        from services.evaluator.datasets.columns import inter_columns, intra_columns

        gallery = self.gallery()
        gallery_ids = pa.array([r.image_id for r in gallery], type=pa.string())
        gallery_labels = pa.array([r.product_id for r in gallery], type=pa.string())
        if self.setup is Setup.INTRA:
            return intra_columns(gallery_ids, gallery_labels)
        queries = self.queries()
        return inter_columns(
            gallery_ids, gallery_labels,
            pa.array([r.image_id for r in queries], type=pa.string()),
            pa.array([r.product_id for r in queries], type=pa.string()),
        )

    # ---- reading -----------------------------------------------------------------------
    def path_of(self, record: ImageRecord) -> Path:
        """The local file behind a record (relative locations resolve against `root`)."""
        parsed = urlparse(record.location)
        if parsed.scheme == "file":
            return Path(parsed.path)
        if parsed.scheme and len(parsed.scheme) > 1:
            raise DatasetError(f"{record.image_id}: unsupported location scheme {parsed.scheme!r}")
        if self.root is None:
            return Path(record.location)
        return self.root / record.location

    def confined_path(self, record: ImageRecord) -> Path:
        """`path_of(record)` with symlinks resolved, refused (OutsideRootError) when it is not
        inside the dataset root (the current folder for a dataset without one), unless
        `allow_outside_root`. Manifests can be written by others and their bytes may go to a vendor:
        `file:///etc/passwd` or a symlink to ~/.ssh must not be read just because a row names it."""
        path = self.path_of(record)
        if self.allow_outside_root:
            return path
        root = (Path(self.root) if self.root is not None else Path.cwd()).resolve()
        real = path.resolve()
        if not real.is_relative_to(root):
            raise OutsideRootError(
                f"{record.location} resolves to {real}, outside the dataset root {root}; {OUTSIDE_ROOT_HINT}"
            )
        return real

    def read(self, record: ImageRecord) -> bytes:
        """The encoded image bytes (raises OSError, OutsideRootError included). Loaders with other
        storage (tar shards, ...) override this."""
        return self.confined_path(record).read_bytes()

    def missing(self, records: Iterable[ImageRecord] | None = None) -> list[ImageRecord]:
        """Records whose file is absent: listed in results, and the run goes on without them."""
        return [r for r in (self.records if records is None else records) if not self.path_of(r).is_file()]

    def without(self, image_ids: set[str]) -> "Dataset":
        """A copy without the given images (e.g. the missing ones), nothing else changed.
        `replace` keeps the subclass, so loaders that override `read` (tar shards) still read."""
        return dataclasses.replace(
            self,
            records=[r for r in self.records if r.image_id not in image_ids],
            source=dict(self.source),
        )

    def validate(self) -> None:
        validate_records(self.records, self.setup, where=self.name)


def check_relative_location(location: str, where: str) -> None:
    """Refuse absolute paths and `..` that would escape the dataset root."""
    # The common case, decided without parsing (ILIAS checks millions of records).
    if (
        location
        and location[0] != "/"
        and ".." not in location
        and "\\" not in location
        and ":" not in location
    ):
        return
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return
    path = PurePosixPath(location.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or location == "":
        raise DatasetError(f"{where}: location {location!r} escapes the dataset root")


def validate_records(records: Sequence[ImageRecord], setup: Setup, where: str) -> None:
    """Whole-dataset checks; raise DatasetError naming the first offending record."""
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record.image_id in seen:
            raise DatasetError(
                f"{where}: duplicate image id {record.image_id!r} (records {seen[record.image_id]} and {index})"
            )
        seen[record.image_id] = index
        if not isinstance(record.split, Split):
            raise DatasetError(f"{where}: record {index} ({record.image_id}) has unknown split {record.split!r}")
        if record.split is Split.QUERY and record.is_distractor:
            raise DatasetError(f"{where}: query {record.image_id!r} (record {index}) has no product id")
        if setup is Setup.INTRA and record.split is Split.QUERY:
            raise DatasetError(
                f"{where}: record {index} ({record.image_id}) is a query in an intra dataset; "
                "intra datasets hold gallery records only"
            )
        check_relative_location(record.location, f"{where}: record {index} ({record.image_id})")
    if not any(r.split is Split.GALLERY for r in records):
        raise DatasetError(f"{where}: the gallery split is empty")
    if setup is Setup.INTER and not any(r.split is Split.QUERY for r in records):
        raise DatasetError(f"{where}: the query split is empty")
    if setup is Setup.INTRA and all(r.is_distractor for r in records):
        raise DatasetError(f"{where}: no gallery image has a product id, so there are no queries")
