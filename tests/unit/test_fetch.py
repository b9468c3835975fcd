"""`vsbench datasets fetch`: against a real HTTP server on loopback serving generated archives.

The server speaks HTTP/1.1 ranges (206 + Content-Range, 416 past the end) and can be told to drop
a connection part-way through a file, to ignore Range, or to serve different bytes than listed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.evaluator.datasets.download import DownloadError, Expected, RetryPolicy, download_file
from services.evaluator.datasets.fetch import (
    ILIAS_BASE_URL,
    fetch_ilias,
    fetch_products10k,
    fetch_sop,
    parse_checksums,
)
from services.evaluator.datasets.ilias import load_ilias

NO_WAIT = RetryPolicy(attempts=3, backoff_s=0.0, timeout_s=10)


class FileServer:
    """Serves `files` (path -> bytes); records (path, Range header) per request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}  # path -> byte counts after which to drop, one per request
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path
                server.requests.append((path, self.headers.get("Range")))
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get("Range")
                if wanted and path not in server.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                drops = server.drops.get(path)
                if drops:
                    self.wfile.write(chunk[: drops.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


@pytest.fixture()
def server():
    served = FileServer()
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue() + os.urandom(2048)  # big enough to be dropped part-way


def serve_ilias(server: FileServer, *, shards: int = 3, corrupt: str | None = None) -> dict[str, bytes]:
    core = tar_bytes({
        "ilias_core/obj_000/query/Q000_00.jpg": jpeg(1),
        "ilias_core/obj_000/pos/P000_00.jpg": jpeg(2),
        "ilias_core/obj_000/pos/P000_01.jpg": jpeg(3),
    })
    archives = {"ilias_core.tar": core}
    for n in range(shards):
        archives[f"yfcc100m_{n:06d}.tar"] = tar_bytes({f"{n}00001.jpg": jpeg(10 + n), f"{n}00001.json": b"{}"})
    lines = []
    for name, data in archives.items():
        folder = "/yfcc100m" if name.startswith("yfcc") else ""
        server.files[f"{folder}/{name}"] = data
        digest = hashlib.sha256(b"not this" if name == corrupt else data).hexdigest()
        # Listed with the official portal's URLs: a mirror base must replace them.
        lines.append(f"{digest} {ILIAS_BASE_URL}{folder}/{name}")
    server.files["/checksums.txt"] = ("\n".join(lines) + "\n").encode()
    server.files["/image_ids/image_query_ids.txt"] = b"obj_000/query/Q000_00.jpg,https://example.org/q\n"
    server.files["/image_ids/text_query_ids.txt"] = b"obj_000/query/T000.txt\n"
    server.files["/image_ids/positive_ids.txt"] = b"obj_000/pos/P000_00.jpg,0.1,5\nobj_000/pos/P000_01.jpg,0.3,40\n"
    server.files["/image_ids/distractor_ids.txt.gz"] = b"\x1f\x8b" + os.urandom(64)
    server.files["/misc/taxonomy.json"] = b'{"product": {"food": {"cake": ["obj_000"]}}}'
    return archives


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*.part"))


def test_good_ilias_fetch_limits_shards_and_extracts_the_core(server, tmp_path):
    archives = serve_ilias(server)
    to = tmp_path / "ilias"
    report = fetch_ilias(to, base_url=server.url, taxonomy_url=f"{server.url}/misc/taxonomy.json",
                         max_shards=2, retry=NO_WAIT)
    assert sorted(p.name for p in (to / "yfcc100m").glob("*.tar")) == ["yfcc100m_000000.tar", "yfcc100m_000001.tar"]
    assert report.skipped == ["yfcc100m/yfcc100m_000002.tar"]
    assert (to / "yfcc100m" / "yfcc100m_000001.tar").read_bytes() == archives["yfcc100m_000001.tar"]
    assert (to / "ilias_core" / "obj_000" / "pos" / "P000_01.jpg").is_file()
    assert not (to / "ilias_core.tar").exists() and report.extracted == ["ilias_core.tar"]
    assert (to / "image_ids" / "positive_ids.txt").read_bytes() == server.files["/image_ids/positive_ids.txt"]
    assert (to / "taxonomy.json").is_file() and leftovers(to) == []
    # What was fetched is what the loader reads.
    dataset = load_ilias(to, distractors="shards")
    assert dataset.counts()["distractors"] == 2 and dataset.missing() == []
    # A rerun downloads only checksums.txt again: everything else is verified or extracted.
    server.requests.clear()
    fetch_ilias(to, base_url=server.url, taxonomy_url=f"{server.url}/misc/taxonomy.json", max_shards=2,
                retry=NO_WAIT)
    assert [p for p, _ in server.requests] == ["/checksums.txt"]


def test_corrupt_shard_is_a_clear_error_and_leaves_no_file(server, tmp_path):
    serve_ilias(server, shards=2, corrupt="yfcc100m_000001.tar")
    to = tmp_path / "ilias"
    with pytest.raises(DownloadError, match=r"yfcc100m_000001.tar: sha256 mismatch: expected .* removed"):
        fetch_ilias(to, base_url=server.url, taxonomy_url=None, retry=NO_WAIT)
    assert not (to / "yfcc100m" / "yfcc100m_000001.tar").exists()
    assert leftovers(to) == []
    assert (to / "yfcc100m" / "yfcc100m_000000.tar").is_file()  # the good one before it stays


def test_dropped_connection_resumes_with_range(server, tmp_path):
    data = os.urandom(50_000)
    server.files["/big.bin"] = data
    server.drops["/big.bin"] = [12_345, 20_000]  # two drops, then a full answer
    waits: list[float] = []
    done = download_file(f"{server.url}/big.bin", tmp_path / "big.bin",
                         expected=Expected("sha256", hashlib.sha256(data).hexdigest()),
                         retry=RetryPolicy(attempts=2, backoff_s=0.5), sleep=waits.append)
    assert done.read_bytes() == data
    assert server.ranges("/big.bin") == [None, "bytes=12345-", "bytes=32345-"]
    # Each attempt made progress, so the failure budget (2) was never spent; waits restart at 0.5.
    assert waits == [0.5, 0.5]


def test_interrupted_run_is_resumed_by_the_next_run(server, tmp_path):
    data = os.urandom(40_000)
    server.files["/shard.tar"] = data
    server.drops["/shard.tar"] = [10_000, 0, 0]  # then the server only fails: the run gives up
    target = tmp_path / "shard.tar"
    expected = Expected("sha256", hashlib.sha256(data).hexdigest())
    with pytest.raises(DownloadError, match="10000 bytes kept in shard.tar.part, run the fetch again"):
        download_file(f"{server.url}/shard.tar", target, expected=expected, retry=NO_WAIT)
    assert not target.exists() and (tmp_path / "shard.tar.part").stat().st_size == 10_000
    server.requests.clear()
    download_file(f"{server.url}/shard.tar", target, expected=expected, retry=NO_WAIT)
    assert target.read_bytes() == data and server.ranges("/shard.tar") == ["bytes=10000-"]
    assert not (tmp_path / "shard.tar.part").exists()


def test_server_ignoring_range_restarts_and_complete_part_is_verified(server, tmp_path):
    data = os.urandom(30_000)
    server.files["/f.bin"] = data
    server.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(data[:7_000])
    expected = Expected("sha256", hashlib.sha256(data).hexdigest())
    assert download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected=expected,
                         retry=NO_WAIT).read_bytes() == data
    # A part already holding the whole file: the server answers 416, the part is verified and kept.
    server.ignore_range.clear()
    (tmp_path / "g.bin.part").write_bytes(data)
    server.files["/g.bin"] = data
    assert download_file(f"{server.url}/g.bin", tmp_path / "g.bin", expected=expected,
                         retry=NO_WAIT).read_bytes() == data
    # A final file without its verified marker is not trusted: it is checked before being kept.
    (tmp_path / "h.bin").write_bytes(b"x" * len(data))
    server.files["/h.bin"] = b"y" * 10
    with pytest.raises(DownloadError, match="h.bin: sha256 mismatch"):
        download_file(f"{server.url}/h.bin", tmp_path / "h.bin", expected=expected, retry=NO_WAIT)
    assert not (tmp_path / "h.bin").exists()


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/nothing", tmp_path / "x", retry=NO_WAIT)
    assert server.ranges("/nothing") == [None]


def test_checksums_file_lines_are_checked():
    with pytest.raises(DownloadError, match="checksums.txt line 2"):
        parse_checksums(f"{'a' * 64} https://x/y.tar\nnot a line\n")
    (entry,) = parse_checksums(f"{'A' * 64}  https://x/yfcc100m/yfcc100m_000003.tar\n\n")
    assert entry.is_shard and entry.filename == "yfcc100m_000003.tar" and entry.sha256 == "a" * 64


def test_sop_archive_md5_verified_and_extracted(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Stanford_Online_Products/Ebay_test.txt", "image_id class_id super_class_id path\n")
        archive.writestr("Stanford_Online_Products/bicycle_final/1_0.JPG", jpeg(4))
    server.files["/Stanford_Online_Products.zip"] = buffer.getvalue()
    md5 = hashlib.md5(buffer.getvalue()).hexdigest()  # noqa: S324 - the digest SOP publishes
    report = fetch_sop(tmp_path, url=f"{server.url}/Stanford_Online_Products.zip", md5=md5, retry=NO_WAIT)
    assert (tmp_path / "Stanford_Online_Products" / "bicycle_final" / "1_0.JPG").is_file()
    assert report.extracted == ["Stanford_Online_Products.zip"]
    assert not (tmp_path / "Stanford_Online_Products.zip").exists()
    with pytest.raises(DownloadError, match="md5 mismatch"):
        fetch_sop(tmp_path / "again", url=f"{server.url}/Stanford_Online_Products.zip", md5="0" * 32,
                  retry=NO_WAIT)


def test_products10k_gives_the_manual_steps(tmp_path):
    report = fetch_products10k(tmp_path / "p10k")
    assert "https://products-10k.github.io/" in report.instructions
    assert f"{tmp_path / 'p10k'}/test_kaggletest.csv" in report.instructions.replace("cp test_kaggletest.csv ", "")


def vsbench(*args):
    return subprocess.run([sys.executable, "-m", "services.evaluator.cli", *args], capture_output=True, text=True)


def test_cli_datasets_lists_by_default_and_fetches(server, tmp_path):
    listed = vsbench("datasets")
    assert listed.returncode == 0 and "ilias" in listed.stderr and "products10k" in listed.stderr
    assert vsbench("datasets", "list").stderr == listed.stderr
    serve_ilias(server, shards=2)
    to = tmp_path / "ilias"
    done = vsbench("datasets", "fetch", "ilias", "--to", str(to), "--base-url", server.url, "--max-shards", "1",
                   "--taxonomy-url", f"{server.url}/misc/taxonomy.json")
    assert done.returncode == 0, done.stderr
    shard_dir = sorted(p.name for p in (to / "yfcc100m").iterdir())
    assert shard_dir == ["yfcc100m_000000.tar", "yfcc100m_000000.tar.verified"]
    assert "1 listed file(s) left out" in done.stderr
    manual = vsbench("datasets", "fetch", "products10k", "--to", str(tmp_path / "p"))
    assert manual.returncode == 0 and "products-10k.github.io" in manual.stdout
    unknown = vsbench("datasets", "fetch", "imagenet", "--to", str(tmp_path))
    assert unknown.returncode == 2 and "ilias, sop or products10k" in unknown.stderr
    server.files.pop("/checksums.txt")
    failed = vsbench("datasets", "fetch", "ilias", "--to", str(tmp_path / "x"), "--base-url", server.url,
                     "--no-progress")
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and "HTTP 404" in failed.stderr
