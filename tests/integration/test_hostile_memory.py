"""Issue 11 item 1: a thin PNG of a few hundred bytes must not make the embedder resize it to
billions of pixels. A real efficientnet-lite0 server ("resize shortest edge to 256") in a
subprocess gets 60000x1 and 20000x1 PNGs next to good photos; its RSS is sampled throughout."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from PIL import Image

from services.common import wire
from services.common.types import ErrorCode, ImageItem
from tests.integration.test_embedder_server import EmbedderProcess, photo

# Before the fix one 60000x1 PNG took the server to 16.3 GB and one 20000x1 PNG to 5.6 GB. A
# serving efficientnet-lite0 (torch + weights + gRPC + one batch of 224x224 inputs) sits at
# ~0.4-0.7 GB; 1.5 GB leaves room for allocator noise and is still 3.7x under the smallest blow-up.
RSS_BOUND_BYTES = 1_500_000_000


def thin_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 77).save(out, format="PNG")
    return out.getvalue()


class PeakRss:
    """Samples a process's resident set size (itself and any children) until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                total = self._process.memory_info().rss
                total += sum(child.memory_info().rss for child in self._process.children(recursive=True))
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def lite0():
    process = EmbedderProcess(
        "--model", "efficientnet-lite0", "--max-batch", "8", "--decode-workers", "2", "--threads", "1"
    )
    yield process
    process.stop()


def test_thin_pngs_get_image_too_large_and_memory_stays_bounded(lite0):
    bad = [ImageItem("thin-60000x1", thin_png(60000, 1)), ImageItem("thin-1x20000", thin_png(1, 20000))]
    good = ImageItem("good", photo(1))
    with PeakRss(lite0.proc.pid) as rss, ThreadPoolExecutor(3) as pool:
        # Two thin images at once (the probe that reached 10.7 GB) plus another client's photo.
        calls = [
            pool.submit(lite0.stub.Embed, wire.request_to_pb([bad[0], good]), timeout=60),
            pool.submit(lite0.stub.Embed, wire.request_to_pb([bad[1]]), timeout=60),
            pool.submit(lite0.stub.Embed, wire.request_to_pb([ImageItem("other-client", photo(2))]), timeout=60),
        ]
        responses = [wire.response_from_pb(call.result()) for call in calls]
    first, second, other = responses
    assert [e.id for e in first] == ["thin-60000x1", "good"]
    for refused in (first[0], second[0]):
        assert refused.error is not None and refused.error.code == ErrorCode.IMAGE_TOO_LARGE
        assert "aspect ratio" in refused.error.message
    assert first[1].ok and first[1].vector.shape == (1280,)
    assert other[0].ok and other[0].vector.shape == (1280,)
    assert 0 < rss.peak < RSS_BOUND_BYTES, f"server peaked at {rss.peak / 1e9:.2f} GB"
