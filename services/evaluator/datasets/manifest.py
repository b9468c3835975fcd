"""Generic manifest: bring your own dataset as one CSV / TSV / JSONL / Parquet file.

Columns (JSON keys): ``image_id``, ``location`` (alias ``path``), ``product_id`` (empty or null
= distractor), ``split`` (``query`` | ``gallery``). Other columns are ignored.

Dataset-level facts (``name``, ``setup``, ``gallery_type``, ``description``, ``root``, ``source``)
come from the loader's arguments, else from an optional sidecar ``dataset.yaml`` (or
``dataset.yml`` / ``dataset.json``) in the manifest's folder, else they are inferred: setup is
``inter`` when any row is a query, ``intra`` otherwise; the gallery is ``open`` when it holds a
distractor. Locations resolve against ``root`` (default: the manifest's folder; a relative
sidecar root is relative to the sidecar's folder).

Reads stay inside the dataset root (see `Dataset.confined_path`), and a sidecar, which travels
with the data, may only name a root inside the manifest's own folder or the folder directly above
it: a root elsewhere comes from whoever runs the benchmark (the ``root`` option), or
``allow_outside_root=True`` lifts both.

Every problem is reported with its file and line, all at once; a bad manifest raises before
anything is returned.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

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

MANIFEST_COLUMNS = ("image_id", "location", "product_id", "split")
COLUMN_ALIASES = {"path": "location"}
SIDECAR_NAMES = ("dataset.yaml", "dataset.yml", "dataset.json")
SIDECAR_KEYS = ("name", "setup", "gallery_type", "description", "root", "source")
# A manifest named like this says nothing about the dataset: name it after its folder instead.
GENERIC_STEMS = {"manifest", "index", "images", "dataset"}


@dataclass(frozen=True)
class ManifestRow:
    """One row as read, with where it came from (``manifest.csv line 17``), or why it could not
    be read (collected with the other problems instead of stopping at the first)."""

    where: str
    values: Mapping[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class DatasetFacts:
    name: str | None = None
    setup: Setup | None = None
    gallery_type: GalleryType | None = None
    description: str | None = None
    root: Path | None = None
    source: Mapping[str, str] | None = None
    origin: str = ""


# ---- reading rows, one reader per file kind ----------------------------------------------


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], Iterator[ManifestRow]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: not UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path.name}: empty file, expected a header line ({', '.join(MANIFEST_COLUMNS)})")
    columns = _canonical_columns([h.strip().lower() for h in header], f"{path.name} line 1")
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{path.name} line 1: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} (header has: {', '.join(header)})"
        )

    def rows() -> Iterator[ManifestRow]:
        previous_end = reader.line_num
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            where = f"{path.name} line {start}"
            if len(fields) != len(columns):
                yield ManifestRow(where, {}, f"expected {len(columns)} fields, found {len(fields)}")
                continue
            yield ManifestRow(where, dict(zip(columns, fields, strict=True)))

    return columns, rows()


def _canonical_columns(names: list[str], where: str) -> list[str]:
    canonical = [COLUMN_ALIASES.get(n, n) for n in names]
    seen: dict[str, str] = {}
    for original, name in zip(names, canonical, strict=True):
        if name in seen and name in MANIFEST_COLUMNS:
            raise DatasetError(f"{where}: columns {seen[name]!r} and {original!r} both give {name!r}")
        seen[name] = original
    return canonical


def _read_csv(path: Path) -> Iterator[ManifestRow]:
    return _read_delimited(path, ",")[1]


def _read_tsv(path: Path) -> Iterator[ManifestRow]:
    return _read_delimited(path, "\t")[1]


def _read_jsonl(path: Path) -> Iterator[ManifestRow]:
    with path.open("rb") as handle:
        lines = handle.read().splitlines()
    for number, raw in enumerate(lines, start=1):
        where = f"{path.name} line {number}"
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield ManifestRow(where, {}, f"not a JSON object ({exc})")
            continue
        if not isinstance(value, dict):
            yield ManifestRow(where, {}, f"expected a JSON object, found {type(value).__name__}")
            continue
        values: dict[str, Any] = {}
        clash = None
        for key, item in value.items():
            canonical = COLUMN_ALIASES.get(key.strip().lower(), key.strip().lower())
            if canonical in values and canonical in MANIFEST_COLUMNS:
                clash = canonical
            values[canonical] = item
        if clash:
            yield ManifestRow(where, {}, f"{clash!r} given twice (directly or through an alias)")
            continue
        missing = [c for c in MANIFEST_COLUMNS if c not in values]
        if missing:
            keys = ", ".join(repr(c) for c in missing)
            yield ManifestRow(where, {}, f"missing key{'s' if len(missing) > 1 else ''} {keys}")
            continue
        yield ManifestRow(where, values)


def _read_parquet(path: Path) -> Iterator[ManifestRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            f"{path.name}: reading Parquet manifests needs pyarrow (pip install 'vsbench[evaluator]'), "
            "or use a CSV or JSONL manifest"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        raise DatasetError(f"{path.name}: not a readable Parquet file ({exc})") from None
    names = [n.strip().lower() for n in table.column_names]
    columns = _canonical_columns(names, path.name)
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{path.name}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} (columns: {', '.join(table.column_names)})"
        )
    data = {c: table.column(i).to_pylist() for i, c in enumerate(columns) if c in MANIFEST_COLUMNS}
    for index in range(table.num_rows):
        yield ManifestRow(f"{path.name} row {index + 1}", {c: data[c][index] for c in MANIFEST_COLUMNS})


ROW_READERS: dict[str, Callable[[Path], Iterator[ManifestRow]]] = {
    ".csv": _read_csv,
    ".tsv": _read_tsv,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".parquet": _read_parquet,
}


# ---- dataset-level facts -----------------------------------------------------------------


def _enum_value(enum_type, value: Any, where: str, key: str):
    if value is None or isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        allowed = " or ".join(m.value for m in enum_type)
        raise DatasetError(f"{where}: {key} must be {allowed}, got {value!r}") from None


def find_sidecar(folder: Path) -> Path | None:
    present = [folder / n for n in SIDECAR_NAMES if (folder / n).is_file()]
    if len(present) > 1:
        raise DatasetError(f"{folder}: both {present[0].name} and {present[1].name}; keep one")
    return present[0] if present else None


def read_sidecar(path: Path) -> DatasetFacts:
    """The optional ``dataset.yaml`` next to a manifest."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(
            f"{path.name}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})"
        ) from None
    if data is None:
        return DatasetFacts(origin=path.name)
    if not isinstance(data, dict):
        raise DatasetError(f"{path.name}: expected a mapping of {', '.join(SIDECAR_KEYS)}")
    if "allow_outside_root" in data:
        raise DatasetError(
            f"{path.name}: allow_outside_root cannot be set by the dataset's own files (they may come "
            "from anyone); set it as a dataset option in your run configuration instead"
        )
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise DatasetError(
            f"{path.name}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(SIDECAR_KEYS)})"
        )
    source = data.get("source")
    if source is not None and not isinstance(source, dict):
        raise DatasetError(f"{path.name}: source must be a mapping")
    root = data.get("root")
    return DatasetFacts(
        name=None if data.get("name") is None else str(data["name"]),
        setup=_enum_value(Setup, data.get("setup"), path.name, "setup"),
        gallery_type=_enum_value(GalleryType, data.get("gallery_type"), path.name, "gallery_type"),
        description=None if data.get("description") is None else str(data["description"]),
        root=None if root is None else (path.parent / str(root)),
        source=None if source is None else {str(k): str(v) for k, v in source.items()},
        origin=path.name,
    )


# ---- rows -> records ---------------------------------------------------------------------


def _text(value: Any, where: str, key: str, problems: Problems) -> str | None:
    if value is None:
        return ""
    if isinstance(value, float) and not isinstance(value, bool):
        # Parquet files written by pandas store integer ids with gaps as floats (12.0, NaN).
        if value != value:
            return ""
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.add(f"{where}: {key} must be text or an integer, got {value!r}")
        return None
    return str(value).strip()


@dataclass(frozen=True)
class _LocatedRecord:
    where: str
    record: ImageRecord


def _records_from_rows(rows: Iterator[ManifestRow], problems: Problems) -> list[_LocatedRecord]:
    located: list[_LocatedRecord] = []
    first_seen: dict[str, str] = {}
    for row in rows:
        if row.error is not None:
            problems.add(f"{row.where}: {row.error}")
            continue
        texts = {k: _text(row.values.get(k), row.where, k, problems) for k in MANIFEST_COLUMNS}
        if any(v is None for v in texts.values()):
            continue
        image_id, location, product_id, split_text = (texts[k] for k in MANIFEST_COLUMNS)
        bad = False
        if not image_id:
            problems.add(f"{row.where}: empty image_id")
            bad = True
        try:
            split = Split(split_text.lower())
        except ValueError:
            problems.add(f"{row.where}: unknown split {split_text!r} (expected query or gallery)")
            bad = True
        try:
            check_relative_location(location, row.where)
        except DatasetError as exc:
            problems.add(str(exc))
            bad = True
        if image_id and image_id in first_seen:
            problems.add(f"{_both(first_seen[image_id], row.where)}: duplicate image id {image_id!r}")
            bad = True
        if bad:
            continue
        first_seen[image_id] = row.where
        if split is Split.QUERY and not product_id:
            problems.add(f"{row.where}: query {image_id!r} has no product id")
            continue
        located.append(_LocatedRecord(row.where, ImageRecord(image_id, location, product_id, split)))
    return located


def _both(first: str, second: str) -> str:
    """``manifest.csv line 3`` + ``manifest.csv line 17`` -> ``manifest.csv lines 3 and 17``."""
    file_a, _, place_a = first.rpartition(" ")
    file_b, _, place_b = second.rpartition(" ")
    if file_a == file_b and file_a.endswith((" line", " row")):
        return f"{file_a}s {place_a} and {place_b}"
    return f"{first} and {second}"


# ---- public API --------------------------------------------------------------------------


def load_manifest(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    setup: Setup | str | None = None,
    gallery_type: GalleryType | str | None = None,
    root: str | os.PathLike | None = None,
    description: str | None = None,
    allow_outside_root: bool = False,
) -> Dataset:
    """Load a manifest file; arguments win over the sidecar, the sidecar over inference.

    allow_outside_root: read locations wherever they point (file:// URLs, symlinks, a sidecar root
    outside the manifest's folder). Off: such images are refused (a sidecar root at load time,
    each outside image as its READ_ERROR)."""
    manifest = Path(path)
    require_file(manifest, "manifest file")
    reader = ROW_READERS.get(manifest.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{manifest.name}: unknown manifest kind {manifest.suffix or '(no suffix)'!r} "
            f"(known: {', '.join(ROW_READERS)})"
        )
    sidecar_path = find_sidecar(manifest.parent)
    sidecar = read_sidecar(sidecar_path) if sidecar_path else DatasetFacts()
    if root is None and sidecar.root is not None and not allow_outside_root:
        _check_sidecar_root(sidecar, manifest.parent)
    arguments = DatasetFacts(
        name=name,
        setup=_enum_value(Setup, setup, "arguments", "setup"),
        gallery_type=_enum_value(GalleryType, gallery_type, "arguments", "gallery_type"),
        description=description,
        root=None if root is None else Path(root),
    )

    problems = Problems(manifest.name)
    located = _records_from_rows(reader(manifest), problems)

    has_queries = any(item.record.split is Split.QUERY for item in located)
    has_distractors = any(item.record.is_distractor for item in located)
    resolved_setup = arguments.setup or sidecar.setup or (Setup.INTER if has_queries else Setup.INTRA)
    resolved_gallery = (
        arguments.gallery_type
        or sidecar.gallery_type
        or (GalleryType.OPEN if has_distractors else GalleryType.CLOSED)
    )
    _check_against_facts(located, resolved_setup, resolved_gallery, problems)
    _check_splits(manifest.name, located, resolved_setup, problems)
    problems.raise_if_any()

    dataset_name = (
        arguments.name
        or sidecar.name
        or (manifest.parent.resolve().name if manifest.stem.lower() in GENERIC_STEMS else manifest.stem)
    )
    records = [item.record for item in located]
    validate_records(records, resolved_setup, where=manifest.name)
    facts_origin = "arguments" if arguments.setup else (sidecar.origin if sidecar.setup else "inferred")
    source = _merge_source(
        sidecar.source or {},
        {"format": "manifest", "manifest": str(manifest), "setup_from": facts_origin},
    )
    return Dataset(
        name=dataset_name,
        setup=resolved_setup,
        gallery_type=resolved_gallery,
        records=records,
        root=arguments.root or sidecar.root or manifest.parent,
        description=arguments.description or sidecar.description or "",
        source=source,
        allow_outside_root=allow_outside_root,
    )


def _check_sidecar_root(sidecar: DatasetFacts, folder: Path) -> None:
    """A sidecar may name the manifest's folder, a folder below it, or the folder directly above it
    (manifests of variants in sub-folders, as the quickstart writes them); nothing further away."""
    assert sidecar.root is not None
    home, named = folder.resolve(), sidecar.root.resolve()
    if not (named.is_relative_to(home) or named == home.parent):
        raise DatasetError(
            f"{sidecar.origin}: root {sidecar.root} resolves to {named}, outside the manifest's folder "
            f"{home} and its parent; a dataset's own files may not point reads elsewhere. Give the root "
            "as the dataset option root: (or set allow_outside_root: true)"
        )


def _merge_source(recorded: Mapping[str, str], loaded: Mapping[str, str]) -> dict[str, str]:
    """The sidecar's provenance (e.g. a manifest written from SOP) stays; where it disagrees with
    how the manifest was loaded now, it is kept under ``original_<key>``."""
    merged = dict(recorded)
    for key, value in loaded.items():
        if key in merged and merged[key] != value:
            merged.setdefault(f"original_{key}", merged[key])
        merged[key] = value
    return merged


def _check_against_facts(
    located: list[_LocatedRecord], setup: Setup, gallery_type: GalleryType, problems: Problems
) -> None:
    for item in located:
        record = item.record
        if setup is Setup.INTRA and record.split is Split.QUERY:
            problems.add(
                f"{item.where}: query {record.image_id!r} in an intra dataset (intra manifests list "
                "gallery rows only; every gallery image with a product id is also a query)"
            )
        if gallery_type is GalleryType.CLOSED and record.is_distractor and record.split is Split.GALLERY:
            problems.add(
                f"{item.where}: distractor {record.image_id!r} (no product id) in a closed gallery; "
                "declare gallery_type: open or give it a product id"
            )


def _check_splits(file: str, located: list[_LocatedRecord], setup: Setup, problems: Problems) -> None:
    if problems:
        return  # counts are meaningless while rows are being rejected
    if not located:
        problems.add(f"{file}: no records")
        return
    if not any(item.record.split is Split.GALLERY for item in located):
        problems.add(f"{file}: the gallery split is empty")
    if setup is Setup.INTER and not any(item.record.split is Split.QUERY for item in located):
        problems.add(f"{file}: the query split is empty (an inter dataset needs query rows)")
    if setup is Setup.INTRA and all(item.record.is_distractor for item in located):
        problems.add(f"{file}: no gallery image has a product id, so there are no queries")


# ---- writing -----------------------------------------------------------------------------


def _write_delimited(records: list[ImageRecord], handle: io.TextIOBase, delimiter: str) -> None:
    writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in records:
        writer.writerow((r.image_id, r.location, r.product_id, r.split.value))


def _write_csv(records: list[ImageRecord], target: Path) -> None:
    with target.open("w", encoding="utf-8", newline="") as handle:
        _write_delimited(records, handle, ",")


def _write_tsv(records: list[ImageRecord], target: Path) -> None:
    with target.open("w", encoding="utf-8", newline="") as handle:
        _write_delimited(records, handle, "\t")


def _write_jsonl(records: list[ImageRecord], target: Path) -> None:
    with target.open("w", encoding="utf-8") as handle:
        for r in records:
            row = {
                "image_id": r.image_id,
                "location": r.location,
                "product_id": r.product_id,
                "split": r.split.value,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_parquet(records: list[ImageRecord], target: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "writing Parquet manifests needs pyarrow (pip install 'vsbench[evaluator]')"
        ) from None
    table = pa.table(
        {
            "image_id": [r.image_id for r in records],
            "location": [r.location for r in records],
            "product_id": [r.product_id for r in records],
            "split": [r.split.value for r in records],
        }
    )
    pq.write_table(table, target)


ROW_WRITERS: dict[str, Callable[[list[ImageRecord], Path], None]] = {
    ".csv": _write_csv,
    ".tsv": _write_tsv,
    ".jsonl": _write_jsonl,
    ".ndjson": _write_jsonl,
    ".parquet": _write_parquet,
}


def write_manifest(dataset: Dataset, path: str | os.PathLike, *, sidecar: bool = True) -> Path:
    """Write `dataset` as a manifest (kind from the suffix) and, by default, its ``dataset.yaml``.

    Files are replaced atomically, so a failed write leaves the previous ones intact. Datasets whose
    images live where a manifest cannot point (tar shards) are refused.
    """
    target = Path(path)
    writer = ROW_WRITERS.get(target.suffix.lower())
    if writer is None:
        raise DatasetError(
            f"{target.name}: unknown manifest kind {target.suffix!r} (known: {', '.join(ROW_WRITERS)})"
        )
    if type(dataset).read is not Dataset.read:
        raise DatasetError(
            f"{dataset.name}: its images are read from storage a manifest cannot describe "
            f"({type(dataset).__name__}); write a manifest of the file-backed records only"
        )
    dataset.validate()
    target.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(target, lambda tmp: writer(dataset.records, tmp))
    if sidecar:
        others = [n for n in SIDECAR_NAMES[1:] if (target.parent / n).exists()]
        if others:
            raise DatasetError(f"{target.parent}: {others[0]} exists; remove it or write with sidecar=False")
        facts: dict[str, Any] = {
            "name": dataset.name,
            "setup": dataset.setup.value,
            "gallery_type": dataset.gallery_type.value,
        }
        if dataset.description:
            facts["description"] = dataset.description
        if dataset.root is not None and Path(dataset.root).resolve() != target.parent.resolve():
            facts["root"] = Path(
                os.path.relpath(Path(dataset.root).resolve(), target.parent.resolve())
            ).as_posix()
        if dataset.source:
            facts["source"] = {str(k): str(v) for k, v in dataset.source.items()}
        text = yaml.safe_dump(facts, sort_keys=False, allow_unicode=True)
        _replace_atomically(
            target.parent / SIDECAR_NAMES[0], lambda tmp: tmp.write_text(text, encoding="utf-8")
        )
    return target


def _replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
