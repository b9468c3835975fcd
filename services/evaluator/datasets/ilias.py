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

``load_ilias_features`` reads the official HDF5 feature files so published features can be
scored without images.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

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
from .tar_shards import TarShardReader

if TYPE_CHECKING:
    import numpy as np

ILIAS_IDS_DIR = "image_ids"
ILIAS_CORE_DIR = "ilias_core"
ILIAS_SHARDS_DIR = "yfcc100m"
QUERY_IDS_FILE = "image_query_ids.txt"
POSITIVE_IDS_FILE = "positive_ids.txt"
DISTRACTOR_IDS_FILES = ("distractor_ids.txt.gz", "distractor_ids.txt")
MINI_IDS_FILE = "mini_ilias_yfcc100m_ids.txt"


# ---- images ------------------------------------------------------------------------------


def distractor_key(image_id: str) -> str:
    """``<shard>.tar/<key>`` -> ``<key>`` (a key may itself hold slashes)."""
    return image_id.split("/", 1)[1]


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


# ---- official HDF5 features ----------------------------------------------------------------

QUERY_FEATURE_NAMES = ("{prefix}_image_queries.hdf5", "{prefix}_queries.hdf5")
POSITIVE_FEATURE_NAMES = ("{prefix}_positives.hdf5", "{prefix}_positive.hdf5")
DISTRACTOR_FEATURE_PATTERN = "{prefix}_distractors_(\\d+)\\.hdf5"
# Rows per read from a distractor file (1M rows each): bounds memory to a block, not a file.
DEFAULT_BLOCK_ROWS = 100_000


@dataclass(frozen=True)
class IliasFeatureFiles:
    queries: Path
    positives: Path
    distractors: tuple[Path, ...]


def find_ilias_feature_files(directory: str | os.PathLike, *, prefix: str = "features") -> IliasFeatureFiles:
    top = Path(directory)
    if not top.is_dir():
        raise DatasetError(f"{top}: ILIAS feature folder not found")

    def first(names: Sequence[str], what: str) -> Path:
        for pattern in names:
            path = top / pattern.format(prefix=prefix)
            if path.is_file():
                return path
        listed = " or ".join(p.format(prefix=prefix) for p in names)
        raise DatasetError(f"{top}: {what} feature file not found ({listed})")

    pattern = re.compile(DISTRACTOR_FEATURE_PATTERN.format(prefix=re.escape(prefix)))
    numbered = sorted(
        (int(m.group(1)), p) for p in top.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_file()
    )
    # The official search loads files 0..N-1; a gap would silently score another distractor set.
    for expected, (number, path) in enumerate(numbered):
        if number != expected:
            raise DatasetError(
                f"{top}: distractor feature files must be numbered from 00000 without gaps; "
                f"{prefix}_distractors_{expected:05d}.hdf5 is missing (found {path.name})"
            )
    return IliasFeatureFiles(
        queries=first(QUERY_FEATURE_NAMES, "image query"),
        positives=first(POSITIVE_FEATURE_NAMES, "positive"),
        distractors=tuple(p for _, p in numbered),
    )


@dataclass
class FeatureBlock:
    """Rows of one feature file: ids, labels (object, "" for a distractor), vectors (N x D)."""

    ids: "np.ndarray"
    labels: "np.ndarray"
    vectors: "np.ndarray"


@dataclass
class IliasFeatures:
    query_ids: "np.ndarray"
    query_labels: "np.ndarray"
    query_vectors: "np.ndarray"
    gallery_ids: "np.ndarray"
    gallery_labels: "np.ndarray"
    gallery_vectors: "np.ndarray"
    source: dict[str, str] = field(default_factory=dict)


def _decode_ids(raw) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]


def iter_feature_file(
    path: Path, *, block_rows: int = DEFAULT_BLOCK_ROWS, dtype=None
) -> Iterator[tuple[list[str], "np.ndarray"]]:
    """(ids, vectors) blocks of one official HDF5 file (datasets ``index`` and ``features``)."""
    import h5py
    import numpy as np

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path.name}: not a readable HDF5 file ({exc})") from None
    with handle:
        for dataset_name in ("features", "index"):
            if dataset_name not in handle:
                raise DatasetError(f"{path.name}: no '{dataset_name}' dataset (found: {', '.join(handle)})")
        features, index = handle["features"], handle["index"]
        if features.ndim != 2:
            raise DatasetError(f"{path.name}: 'features' must be N x D, has shape {features.shape}")
        if index.shape[0] != features.shape[0]:
            raise DatasetError(
                f"{path.name}: 'index' has {index.shape[0]} ids but 'features' {features.shape[0]} rows"
            )
        for start in range(0, features.shape[0], block_rows):
            stop = min(start + block_rows, features.shape[0])
            vectors = features[start:stop]
            yield (
                _decode_ids(np.asarray(index[start:stop]).reshape(-1)),
                (vectors if dtype is None else vectors.astype(dtype, copy=False)),
            )


def _labelled_block(path: Path, dtype) -> FeatureBlock:
    """A whole query/positive file; the object of each id is its label."""
    import numpy as np

    ids: list[str] = []
    parts: list[np.ndarray] = []
    for block_ids, vectors in iter_feature_file(path, dtype=dtype):
        ids += block_ids
        parts.append(vectors)
    problems = Problems(path.name)
    for row, image_id in enumerate(ids, start=1):
        if "/" not in image_id:
            problems.add(f"{path.name} row {row}: id {image_id!r} does not start with its object folder")
    problems.raise_if_any()
    if not ids:
        raise DatasetError(f"{path.name}: no features")
    return FeatureBlock(
        ids=np.asarray(ids, dtype=str),
        labels=np.asarray([i.split("/", 1)[0] for i in ids], dtype=str),
        vectors=np.concatenate(parts, axis=0),
    )


def _selected_keys(path: str | os.PathLike | None) -> set[str] | None:
    if path is None:
        return None
    listed = Path(path)
    require_file(listed, "distractor id list")
    return {
        e for line in listed.read_text(encoding="utf-8").splitlines() if (e := line.split(",", 1)[0].strip())
    }


def iter_ilias_distractor_features(
    directory: str | os.PathLike,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    max_distractors: int | None = None,
    selected_ids: str | os.PathLike | None = None,
    distractor_files: int | None = None,
    dtype=None,
    prefix: str = "features",
    dim: int | None = None,
) -> Iterator[FeatureBlock]:
    """Distractor features in blocks of at most `block_rows`, file by file.

    `selected_ids`: an id list (the mini-ILIAS keys, or full ids) keeping only those distractors;
    `distractor_files`: use only the first N files; `max_distractors`: stop after N rows;
    `dim`: the expected vector size (checked for every file).
    """
    import numpy as np

    files = find_ilias_feature_files(directory, prefix=prefix).distractors
    if distractor_files is not None:
        if distractor_files > len(files):
            raise DatasetError(
                f"{directory}: {distractor_files} distractor files asked for, {len(files)} found"
            )
        files = files[:distractor_files]
    wanted = _selected_keys(selected_ids)
    remaining = -1 if max_distractors is None else max_distractors
    for path in files:
        for ids, vectors in iter_feature_file(path, block_rows=block_rows, dtype=dtype):
            if remaining == 0:
                return
            if dim is not None and vectors.shape[1] != dim:
                raise DatasetError(f"{path.name}: vectors have {vectors.shape[1]} dimensions, queries {dim}")
            if wanted is not None:
                keep = [
                    n for n, i in enumerate(ids) if i in wanted or ("/" in i and distractor_key(i) in wanted)
                ]
                ids = [ids[n] for n in keep]
                vectors = vectors[keep]
            if remaining > 0:
                ids, vectors = ids[:remaining], vectors[:remaining]
                remaining -= len(ids)
            if ids:
                yield FeatureBlock(
                    ids=np.asarray(ids, dtype=str), labels=np.full(len(ids), "", dtype=str), vectors=vectors
                )


def load_ilias_features(
    directory: str | os.PathLike,
    *,
    include_distractors: bool = True,
    max_distractors: int | None = None,
    selected_ids: str | os.PathLike | None = None,
    distractor_files: int | None = None,
    dtype=None,
    prefix: str = "features",
) -> IliasFeatures:
    """Queries and gallery (positives, then distractors in file order) as arrays, vectors as
    stored (fp16 in the official files) unless `dtype` is given. For galleries too large to hold,
    load with include_distractors=False and stream `iter_ilias_distractor_features`."""
    import numpy as np

    files = find_ilias_feature_files(directory, prefix=prefix)
    queries = _labelled_block(files.queries, dtype)
    positives = _labelled_block(files.positives, dtype)
    dim = queries.vectors.shape[1]
    if positives.vectors.shape[1] != dim:
        raise DatasetError(
            f"{files.positives.name}: vectors have {positives.vectors.shape[1]} dimensions, queries {dim}"
        )
    blocks = [positives]
    if include_distractors:
        blocks += iter_ilias_distractor_features(
            directory,
            max_distractors=max_distractors,
            selected_ids=selected_ids,
            distractor_files=distractor_files,
            dtype=dtype,
            prefix=prefix,
            dim=dim,
        )
    distractor_count = sum(len(b.ids) for b in blocks[1:])
    source = {
        "format": "ilias-features",
        "directory": str(directory),
        "queries": files.queries.name,
        "positives": files.positives.name,
        "distractor_files": str(
            0
            if not include_distractors
            else (distractor_files if distractor_files is not None else len(files.distractors))
        ),
        "distractor_count": str(distractor_count),
    }
    if selected_ids is not None:
        source["selected_ids"] = Path(selected_ids).name
    if max_distractors is not None:
        source["max_distractors"] = str(max_distractors)
    return IliasFeatures(
        query_ids=queries.ids,
        query_labels=queries.labels,
        query_vectors=queries.vectors,
        gallery_ids=np.concatenate([b.ids for b in blocks]),
        gallery_labels=np.concatenate([b.labels for b in blocks]),
        gallery_vectors=np.concatenate([b.vectors for b in blocks], axis=0),
        source=source,
    )
