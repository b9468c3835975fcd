"""Resumable, verified file downloads for `vsbench datasets fetch`.

A file is written to ``NAME.part`` and renamed to ``NAME`` only after its digest (sha256 or md5)
matched, so a partial or corrupt file never looks complete. An interrupted download resumes from
the part's size with an HTTP ``Range`` request (a server that ignores it sends the whole file,
which is then written from the start). Dropped connections and server errors are retried with
exponential backoff; an attempt that made progress resets the count. A verified file gets a
``NAME.verified`` marker (digest and size) so a rerun skips it without hashing it again.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from services.common.errors import VsbenchError

log = logging.getLogger(__name__)
CHUNK_BYTES = 1024 * 1024
USER_AGENT = "vsbench-datasets-fetch"


class DownloadError(VsbenchError):
    """A file could not be downloaded or verified; the message names it and what to do."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # failed attempts in a row (without progress) before giving up
    backoff_s: float = 1.0  # first wait; doubled after every failure
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0  # socket timeout per read


class Progress(Protocol):
    def start(self, name: str, total: int | None, done: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class Expected:
    """The digest a file must have: algorithm (sha256 or md5) and hex value."""

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in ("sha256", "md5"):
            raise ValueError(f"digest algorithm must be sha256 or md5, got {self.algorithm!r}")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def is_verified(target: Path, expected: Expected | None) -> bool:
    """True when `target` exists and, if a digest is expected, its marker says it matched."""
    if not target.is_file():
        return False
    if expected is None:
        return True
    marker = _marker(target)
    if not marker.is_file():
        return False
    recorded = marker.read_text(encoding="utf-8").split()
    return recorded[:2] == [f"{expected.algorithm}:{expected.hexdigest.lower()}", str(target.stat().st_size)]


def _write_marker(target: Path, expected: Expected) -> None:
    _marker(target).write_text(
        f"{expected.algorithm}:{expected.hexdigest.lower()} {target.stat().st_size}\n", encoding="utf-8"
    )


class _Dropped(Exception):
    """The transfer ended early; resumable."""


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs are dataset sources


def _transfer(url: str, part: Path, timeout: float, progress: Progress | None, name: str) -> None:
    """One attempt: append to (or restart) `part` until the server's body ends."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part already holds the whole file
            return
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise _Dropped(f"HTTP {exc.code}") from None
    with response:
        status = getattr(response, "status", 200)
        if offset and status != 206:
            offset = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = int(length) + offset if length and length.isdigit() else None
        if progress is not None:
            progress.start(name, total, offset)
        received = offset
        with open(part, "ab" if offset else "wb") as handle:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                    raise _Dropped(str(exc) or type(exc).__name__) from None
                if not block:
                    break
                handle.write(block)
                received += len(block)
                if progress is not None:
                    progress.advance(len(block))
        if total is not None and received < total:
            raise _Dropped(f"connection closed after {received} of {total} bytes")


def download_file(
    url: str,
    target: str | os.PathLike,
    *,
    expected: Expected | None = None,
    retry: RetryPolicy = RetryPolicy(),
    checksum_attempts: int = 1,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `url` to `target` (resuming `target`.part), verify it, then rename it into place.

    checksum_attempts: whole downloads tried when the digest does not match (the official ILIAS
    script's MAX_RETRIES, default 1). A mismatch removes the part and raises DownloadError.
    """
    final = Path(target)
    if is_verified(final, expected):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    if final.exists():
        # A file without a matching marker is not trusted: verify it as a finished part.
        final.replace(part)
    for checksum_attempt in range(1, checksum_attempts + 1):
        _fetch_part(url, part, retry, progress, final.name, sleep)
        if expected is None:
            part.replace(final)
            return final
        actual = file_digest(part, expected.algorithm)
        if actual == expected.hexdigest.lower():
            part.replace(final)
            _write_marker(final, expected)
            return final
        part.unlink()
        log.warning("%s: %s mismatch (attempt %d of %d)", final.name, expected.algorithm, checksum_attempt,
                    checksum_attempts)
    raise DownloadError(
        f"{final.name}: {expected.algorithm} mismatch: expected {expected.hexdigest.lower()}, got {actual} "
        f"(from {url}); the corrupt download was removed, run the fetch again"
    )


def _fetch_part(url: str, part: Path, retry: RetryPolicy, progress: Progress | None, name: str, sleep) -> None:
    failures = 0
    wait = retry.backoff_s
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, retry.timeout_s, progress, name)
            return
        except (_Dropped, urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            after = part.stat().st_size if part.exists() else 0
            if after > before:
                failures, wait = 0, retry.backoff_s  # progress was made: a fresh budget
            failures += 1
            if failures >= retry.attempts:
                raise DownloadError(
                    f"{name}: download failed {failures} times in a row ({reason}); "
                    f"{after} bytes kept in {part.name}, run the fetch again to resume"
                ) from None
            log.info("%s: %s; retrying in %.1fs from byte %d", name, reason, wait, after)
            sleep(wait)
            wait = min(wait * 2, retry.max_backoff_s)
        finally:
            if progress is not None:
                progress.finish()
