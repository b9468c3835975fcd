"""`vsbench datasets fetch NAME --to DIR`: the public datasets from their official locations.

- ilias: as the official download/download_ilias.sh does it. ``checksums.txt`` (one
  ``<sha256> <url>`` a line) from the data portal lists every archive: ``ilias_core.tar`` (extracted
  into DIR, then removed) and the YFCC100M distractor shards (into DIR/yfcc100m/, 100k images each;
  ``max_shards`` keeps the first N in the list's order, as the script's MAX_FILES). The image-id
  lists go to DIR/image_ids/ and the official taxonomy (category breakdowns) to DIR/taxonomy.json.
  A mirror's base URL replaces the portal's in every listed URL.
- sop: the official archive (Stanford_Online_Products.zip), md5-verified, extracted into DIR.
- products10k: no direct official link exists (the challenge site links to cloud-drive folders),
  so the fetch prints the exact manual steps.

Every file is resumable and verified (see download.py); rerunning a fetch skips what is done.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .download import DownloadError, Expected, Progress, RetryPolicy, download_file

ILIAS_BASE_URL = "https://vrg.fel.cvut.cz/ilias_data"
ILIAS_TAXONOMY_URL = "https://raw.githubusercontent.com/ilias-vrg/ilias/main/misc/taxonomy.json"
ILIAS_ID_FILES = ("image_query_ids.txt", "text_query_ids.txt", "positive_ids.txt", "distractor_ids.txt.gz")
ILIAS_CORE_ARCHIVE = "ilias_core.tar"
SOP_URL = "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip"
# The archive's md5 as published with the common SOP loaders (no sha256 is published).
SOP_MD5 = "7f73d41a2f44250d4779881525aea32e"
PRODUCTS10K_SITE = "https://products-10k.github.io/"


@dataclass
class FetchReport:
    dataset: str
    directory: Path
    downloaded: list[str] = field(default_factory=list)  # files fetched or found complete
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # listed but left out (e.g. beyond max_shards)
    instructions: str = ""  # manual steps, when the data cannot be fetched


@dataclass(frozen=True)
class ChecksumEntry:
    sha256: str
    url: str

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_shard(self) -> bool:
        return "yfcc100m" in self.filename


def parse_checksums(text: str, source: str = "checksums.txt") -> list[ChecksumEntry]:
    """``<sha256> <url>`` lines; blank lines skipped; anything else is an error naming the line."""
    entries: list[ChecksumEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or len(fields[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in fields[0]):
            raise DownloadError(f"{source} line {number}: expected '<sha256> <url>', got {line.strip()!r}")
        entries.append(ChecksumEntry(fields[0].lower(), fields[1]))
    if not entries:
        raise DownloadError(f"{source}: no files listed")
    return entries


def _rebase(url: str, base_url: str) -> str:
    """A listed URL moved onto `base_url` (a mirror); relative entries are resolved against it."""
    if url.startswith(ILIAS_BASE_URL + "/"):
        return base_url.rstrip("/") + url[len(ILIAS_BASE_URL):]
    if "://" not in url:
        return base_url.rstrip("/") + "/" + url.lstrip("/")
    return url


def _extract_marker(directory: Path, archive: str) -> Path:
    return directory / f".{archive}.extracted"


def _safe_extract_tar(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as handle:
            handle.extractall(into, filter="data")  # refuses absolute paths, '..', device files
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError(f"{archive.name}: cannot extract ({exc})") from None


def _safe_extract_zip(archive: Path, into: Path) -> None:
    root = into.resolve()
    try:
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive.name}: member {member!r} would land outside {into}")
            handle.extractall(into)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"{archive.name}: cannot extract ({exc})") from None


def _download_and_extract(
    url: str, directory: Path, archive_name: str, expected: Expected, extract: Callable[[Path, Path], None],
    report: FetchReport, **download,
) -> None:
    marker = _extract_marker(directory, archive_name)
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == expected.hexdigest.lower():
        report.extracted.append(archive_name)
        return
    archive = download_file(url, directory / archive_name, expected=expected, **download)
    extract(archive, directory)
    marker.write_text(expected.hexdigest.lower() + "\n", encoding="utf-8")
    archive.unlink()
    archive.with_name(archive.name + ".verified").unlink(missing_ok=True)
    report.downloaded.append(archive_name)
    report.extracted.append(archive_name)


def fetch_ilias(
    to: str | os.PathLike,
    *,
    base_url: str = ILIAS_BASE_URL,
    taxonomy_url: str | None = ILIAS_TAXONOMY_URL,
    max_shards: int | None = None,
    retry: RetryPolicy = RetryPolicy(),
    checksum_attempts: int = 1,
    progress: Progress | None = None,
    sleep: Callable[[float], None] | None = None,
) -> FetchReport:
    """ILIAS into `to`: ids, ilias_core (extracted), the first `max_shards` YFCC100M shards (all when None)."""
    if max_shards is not None and max_shards < 0:
        raise DownloadError(f"max_shards must be >= 0, got {max_shards}")
    directory = Path(to)
    report = FetchReport("ilias", directory)
    download = {"retry": retry, "progress": progress, **({"sleep": sleep} if sleep else {})}
    base = base_url.rstrip("/")
    # checksums.txt is fetched anew each run; the id lists and the taxonomy carry no published
    # digest, so they are kept once complete (the Content-Length was received).
    checksums = download_file(f"{base}/checksums.txt", directory / "checksums.txt.new", **download)
    checksums.replace(directory / "checksums.txt")
    entries = parse_checksums((directory / "checksums.txt").read_text(encoding="utf-8"))
    for name in ILIAS_ID_FILES:
        download_file(f"{base}/image_ids/{name}", directory / "image_ids" / name, **download)
        report.downloaded.append(f"image_ids/{name}")
    if taxonomy_url:
        download_file(taxonomy_url, directory / "taxonomy.json", **download)
        report.downloaded.append("taxonomy.json")
    shards = 0
    for entry in entries:
        url = _rebase(entry.url, base)
        expected = Expected("sha256", entry.sha256)
        if entry.is_shard:
            if max_shards is not None and shards >= max_shards:
                report.skipped.append(f"yfcc100m/{entry.filename}")
                continue
            shards += 1
            download_file(url, directory / "yfcc100m" / entry.filename, expected=expected,
                          checksum_attempts=checksum_attempts, **download)
            report.downloaded.append(f"yfcc100m/{entry.filename}")
        elif entry.filename == ILIAS_CORE_ARCHIVE:
            _download_and_extract(url, directory, entry.filename, expected, _safe_extract_tar, report,
                                  checksum_attempts=checksum_attempts, **download)
        else:
            download_file(url, directory / entry.filename, expected=expected,
                          checksum_attempts=checksum_attempts, **download)
            report.downloaded.append(entry.filename)
    return report


def fetch_sop(
    to: str | os.PathLike,
    *,
    url: str = SOP_URL,
    md5: str | None = SOP_MD5,
    sha256: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    progress: Progress | None = None,
    sleep: Callable[[float], None] | None = None,
) -> FetchReport:
    """Stanford Online Products into `to` (extracted: `to`/Stanford_Online_Products/)."""
    directory = Path(to)
    report = FetchReport("sop", directory)
    expected = Expected("sha256", sha256) if sha256 else Expected("md5", md5) if md5 else None
    if expected is None:
        raise DownloadError("SOP: a digest (md5 or sha256) is required to verify the archive")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "Stanford_Online_Products.zip"
    _download_and_extract(url, directory, name, expected, _safe_extract_zip, report,
                          retry=retry, progress=progress, **({"sleep": sleep} if sleep else {}))
    return report


def products10k_instructions(to: str | os.PathLike) -> str:
    directory = Path(to)
    return "\n".join([
        "Products-10K has no direct download link; get it by hand (non-commercial research and education only):",
        f"  1. open {PRODUCTS10K_SITE} and follow its dataset download link",
        "  2. download test.zip and test_kaggletest.csv (train.zip and train.csv only if you want the train split)",
        f"  3. mkdir -p {directory} && unzip test.zip -d {directory}   (images must end up in {directory}/test/)",
        f"  4. cp test_kaggletest.csv {directory}/",
        f"  5. check: ls {directory}/test | head; head -3 {directory}/test_kaggletest.csv",
        "  6. for the report-sized subset: vsbench datasets p10k-subset "
        f"{directory} --out {directory}/subset_ids.txt, then load it with ids=subset_ids.txt",
    ])


def fetch_products10k(to: str | os.PathLike) -> FetchReport:
    return FetchReport("products10k", Path(to), instructions=products10k_instructions(to))


FETCHABLE = ("ilias", "sop", "products10k")
