"""ILIAS (ilias-vrg/ilias): inter-retrieval with an open gallery of YFCC100M distractors.

Layout under the ILIAS folder::

    image_ids/image_query_ids.txt       CSV, column 0 the id (e.g. bold_bimp_000/query/Q000_00.jpg)
    image_ids/positive_ids.txt          id,scale,clutter
    image_ids/distractor_ids.txt.gz     <tar basename>/<webdataset __key__>, one a line (100M)
    image_ids/mini_ilias_yfcc100m_ids.txt   the mini-ILIAS (5M) keys, one a line
    ilias_core/<object>/query|pos/      the images (ids are relative to ilias_core)
    yfcc100m/*.tar                      webdataset shards, 100k distractors each

Queries are the image queries (text queries are not evaluated here), read whole: the official
feature extraction's default does not crop to the ``*_bbox.txt`` boxes. The gallery is the
positives (sorted by id, as the official loader does) followed by the distractors in list order.
The object, i.e. the first path component of an id, is the product id. Distractors are read from
their shard by key (``IliasDataset.read``); ids and shard files follow the official tools.

The official HDF5 feature files are read by ``ilias_features`` (re-exported here).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

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
from .ilias_features import (  # noqa: F401 - re-exported: callers import them from here
    DEFAULT_BLOCK_ROWS,
    FeatureBlock,
    IliasFeatureFiles,
    IliasFeatures,
    distractor_key,
    find_ilias_feature_files,
    iter_feature_file,
    iter_ilias_distractor_features,
    load_ilias_features,
    load_labelled_features,
)
from .tar_shards import TarShardReader

ILIAS_IDS_DIR = "image_ids"
ILIAS_CORE_DIR = "ilias_core"
ILIAS_SHARDS_DIR = "yfcc100m"
QUERY_IDS_FILE = "image_query_ids.txt"
POSITIVE_IDS_FILE = "positive_ids.txt"
DISTRACTOR_IDS_FILES = ("distractor_ids.txt.gz", "distractor_ids.txt")
MINI_IDS_FILE = "mini_ilias_yfcc100m_ids.txt"


# ---- images ------------------------------------------------------------------------------


def shard_location(image_id: str) -> str:
    shard = image_id.split("/", 1)[0]
    return f"{ILIAS_SHARDS_DIR}/{shard if shard.endswith('.tar') else shard + '.tar'}"


@dataclass
class IliasDataset(Dataset):
    """Core images are files; distractors are members of tar shards."""

    # Copies made by `without` share it, so shard indexes are built once.
    shards: TarShardReader = field(default_factory=TarShardReader, repr=False, compare=False)

    def read(self, record: ImageRecord) -> bytes:
        if record.is_distractor:
            return self.shards.read(self.path_of(record), distractor_key(record.image_id))
        return super().read(record)

    def missing(self, records: Iterable[ImageRecord] | None = None) -> list[ImageRecord]:
        absent: list[ImageRecord] = []
        for record in self.records if records is None else records:
            if record.is_distractor:
                present = self.shards.has(self.path_of(record), distractor_key(record.image_id))
            else:
                present = self.path_of(record).is_file()
            if not present:
                absent.append(record)
        return absent


def _read_id_column(path: Path, problems: Problems) -> list[tuple[int, str]]:
    """Column 0 of a comma-separated id file, with line numbers; ids must name their object."""
    require_file(path, "ILIAS id list (get image_ids/ with the ILIAS download_ids.sh)")
    entries: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        image_id = line.split(",", 1)[0].strip()
        if not image_id:
            continue
        where = f"{path.name} line {number}"
        if "/" not in image_id:
            problems.add(f"{where}: id {image_id!r} does not start with its object folder")
            continue
        try:
            check_relative_location(f"{ILIAS_CORE_DIR}/{image_id}", where)
        except DatasetError as exc:
            problems.add(str(exc))
            continue
        if image_id in first_seen:
            problems.add(f"{path.name} lines {first_seen[image_id]} and {number}: duplicate id {image_id!r}")
            continue
        first_seen[image_id] = number
        entries.append((number, image_id))
    return entries


@dataclass(frozen=True)
class DistractorChoice:
    ids: list[str]
    facts: dict[str, str]


class _DistractorList:
    """distractor_ids.txt.gz, streamed (the full list has 100M lines). An id is checked when it
    is kept, its shard once, so scanning the list costs little more than reading it."""

    def __init__(self, ids_dir: Path) -> None:
        present = [ids_dir / n for n in DISTRACTOR_IDS_FILES if (ids_dir / n).is_file()]
        if not present:
            raise DatasetError(
                f"{ids_dir / DISTRACTOR_IDS_FILES[0]}: ILIAS distractor id list not found "
                "(get it with the ILIAS download_ids.sh, or use distractors='shards' or 'none')"
            )
        self.path = present[0]
        self._checked_shards: set[str] = set()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        """(line number, id) pairs."""
        opener = gzip.open if self.path.suffix == ".gz" else open
        with opener(self.path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                image_id = line.strip()
                if image_id:
                    yield number, image_id

    def check(self, number: int, image_id: str) -> str:
        shard, _, key = image_id.partition("/")
        if shard not in self._checked_shards:
            where = f"{self.path.name} line {number}"
            if not shard or not key:
                raise DatasetError(f"{where}: distractor id {image_id!r} is not <shard>/<key>")
            check_relative_location(shard_location(image_id), where)
            self._checked_shards.add(shard)
        elif not key:
            raise DatasetError(
                f"{self.path.name} line {number}: distractor id {image_id!r} is not <shard>/<key>"
            )
        return image_id


def _capped(limit: int | None) -> int:
    return -1 if limit is None else limit


def _no_distractors(root: Path, limit: int | None, reader: TarShardReader) -> DistractorChoice:
    return DistractorChoice([], {"distractors": "none"})


def _all_distractors(root: Path, limit: int | None, reader: TarShardReader) -> DistractorChoice:
    listed = _DistractorList(root / ILIAS_IDS_DIR)
    ids: list[str] = []
    for number, image_id in listed:
        if len(ids) == _capped(limit):
            break
        ids.append(listed.check(number, image_id))
    return DistractorChoice(ids, {"distractors": "all", "distractor_list": listed.path.name})


def _mini_distractors(root: Path, limit: int | None, reader: TarShardReader) -> DistractorChoice:
    mini_path = root / ILIAS_IDS_DIR / MINI_IDS_FILE
    require_file(mini_path, "mini-ILIAS id list (download it from the ILIAS data portal into image_ids/)")
    # The official list holds webdataset keys; full <shard>/<key> ids are accepted too.
    wanted = {
        entry
        for line in mini_path.read_text(encoding="utf-8").splitlines()
        if (entry := line.split(",", 1)[0].strip())
    }
    if not wanted:
        raise DatasetError(f"{mini_path.name}: the id list is empty")
    listed = _DistractorList(root / ILIAS_IDS_DIR)
    ids: list[str] = []
    target = len(wanted) if limit is None else min(limit, len(wanted))
    for number, image_id in listed:
        if len(ids) == target:
            break
        if image_id in wanted or image_id[image_id.find("/") + 1 :] in wanted:
            ids.append(listed.check(number, image_id))
    facts = {"distractors": "mini", "distractor_list": MINI_IDS_FILE, "mini_listed": str(len(wanted))}
    if limit is None and len(ids) < len(wanted):
        facts["mini_not_in_distractor_list"] = str(len(wanted) - len(ids))
    return DistractorChoice(ids, facts)


def _shard_distractors(root: Path, limit: int | None, reader: TarShardReader) -> DistractorChoice:
    shard_dir = root / ILIAS_SHARDS_DIR
    shards = sorted(shard_dir.glob("*.tar")) if shard_dir.is_dir() else []
    if not shards:
        raise DatasetError(f"{shard_dir}: no *.tar shards found for distractors='shards'")
    ids: list[str] = []
    for shard in shards:
        if len(ids) == _capped(limit):
            break
        for key in reader.index(shard):
            if len(ids) == _capped(limit):
                break
            ids.append(f"{shard.name}/{key}")
    return DistractorChoice(ids, {"distractors": "shards", "shards_found": str(len(shards))})


# Which distractors join the gallery; each reads only what it needs.
DISTRACTOR_CHOICES: dict[str, Callable[[Path, int | None, TarShardReader], DistractorChoice]] = {
    "none": _no_distractors,
    "mini": _mini_distractors,
    "all": _all_distractors,
    "shards": _shard_distractors,
}


def load_ilias(
    root: str | os.PathLike,
    *,
    distractors: str = "mini",
    max_distractors: int | None = None,
    name: str | None = None,
) -> IliasDataset:
    """`distractors`: none | mini (mini-ILIAS list) | all (distractor_ids.txt.gz) | shards (every
    key in the yfcc100m/*.tar present); `max_distractors`: keep the first N of those."""
    top = Path(root)
    choose = DISTRACTOR_CHOICES.get(distractors)
    if choose is None:
        raise DatasetError(
            f"ILIAS distractors must be one of {', '.join(DISTRACTOR_CHOICES)}, got {distractors!r}"
        )
    if max_distractors is not None and max_distractors < 0:
        raise DatasetError(f"max_distractors must be >= 0, got {max_distractors}")
    ids_dir = top / ILIAS_IDS_DIR
    problems = Problems(str(ids_dir))
    queries = _read_id_column(ids_dir / QUERY_IDS_FILE, problems)
    positives = _read_id_column(ids_dir / POSITIVE_IDS_FILE, problems)
    problems.raise_if_any()

    records = [
        ImageRecord(i, f"{ILIAS_CORE_DIR}/{i}", i.split("/", 1)[0], Split.QUERY)
        for _, i in sorted(queries, key=_id)
    ]
    records += [
        ImageRecord(i, f"{ILIAS_CORE_DIR}/{i}", i.split("/", 1)[0], Split.GALLERY)
        for _, i in sorted(positives, key=_id)
    ]
    reader = TarShardReader()
    chosen = choose(top, max_distractors, reader)
    records += [ImageRecord(i, shard_location(i), "", Split.GALLERY) for i in chosen.ids]
    validate_records(records, Setup.INTER, where=f"ILIAS {top}")
    source = {
        "format": "ilias",
        "root": str(top),
        "queries": QUERY_IDS_FILE,
        "positives": POSITIVE_IDS_FILE,
        **chosen.facts,
        "distractor_count": str(len(chosen.ids)),
        **({"max_distractors": str(max_distractors)} if max_distractors is not None else {}),
    }
    return IliasDataset(
        name=name or "ilias",
        setup=Setup.INTER,
        gallery_type=GalleryType.OPEN if chosen.ids else GalleryType.CLOSED,
        records=records,
        root=top,
        description=(
            f"ILIAS image queries (whole images, no bbox crop) against positives + {len(chosen.ids):,} "
            f"YFCC100M distractors ({chosen.facts['distractors']})"
        ),
        source=source,
        shards=reader,
    )


def _id(entry: tuple[int, str]) -> str:
    return entry[1]
