"""ILIAS's official HDF5 feature files (ilias-vrg/ilias feature_extraction/extract.py output).

Each file holds datasets ``features`` (N x D, float16 by the extractor's default) and ``index``
(ids). Files: ``<prefix>_image_queries.hdf5``, ``<prefix>_text_queries.hdf5`` (ids are the text
files, e.g. ``bold_bimp_000/query/T000.txt``), ``<prefix>_positives.hdf5`` and
``<prefix>_distractors_NNNNN.hdf5`` (1M rows each). Reading them lets published features be
scored without images. The first path component of a core id is its object (the product id).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from .base import DatasetError
from .problems import Problems, require_file

if TYPE_CHECKING:
    import numpy as np


def distractor_key(image_id: str) -> str:
    """``<shard>.tar/<key>`` -> ``<key>`` (a key may itself hold slashes)."""
    return image_id.split("/", 1)[1]



QUERY_FEATURE_NAMES = ("{prefix}_image_queries.hdf5", "{prefix}_queries.hdf5")
TEXT_QUERY_FEATURE_NAMES = ("{prefix}_text_queries.hdf5",)
POSITIVE_FEATURE_NAMES = ("{prefix}_positives.hdf5", "{prefix}_positive.hdf5")
DISTRACTOR_FEATURE_PATTERN = "{prefix}_distractors_(\\d+)\\.hdf5"
# Rows per read from a distractor file (1M rows each): bounds memory to a block, not a file.
DEFAULT_BLOCK_ROWS = 100_000


@dataclass(frozen=True)
class IliasFeatureFiles:
    queries: Path
    positives: Path
    distractors: tuple[Path, ...]
    text_queries: Path | None = None  # features of the text queries, when extracted


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
    text_candidates = [top / n.format(prefix=prefix) for n in TEXT_QUERY_FEATURE_NAMES]
    return IliasFeatureFiles(
        queries=first(QUERY_FEATURE_NAMES, "image query"),
        positives=first(POSITIVE_FEATURE_NAMES, "positive"),
        distractors=tuple(p for _, p in numbered),
        text_queries=next((p for p in text_candidates if p.is_file()), None),
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


def load_labelled_features(path: Path, dtype=None) -> FeatureBlock:
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
    queries = load_labelled_features(files.queries, dtype)
    positives = load_labelled_features(files.positives, dtype)
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
