"""services.embedder.batching: dynamic batching across concurrent requests, early overload,
per-item errors, output checks, and the synchronous helper used in process."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from services.common.servicer import Overloaded
from services.common.types import ErrorCode, ImageItem, ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.histogram import HistogramBackend
from services.embedder.batching import BatchingEmbedder, embed_sync, iter_embed


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def items(count: int, prefix: str = "img") -> list[ImageItem]:
    return [
        ImageItem(f"{prefix}-{i}", jpeg(((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)))
        for i in range(count)
    ]


class RecordingBackend(ModelBackend):
    """A real histogram backend that records every forward call; optionally slow or gated."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.inner = HistogramBackend()
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.gate = gate
        self.closed = False

    def info(self) -> ModelInfo:
        return self.inner.info()

    def preprocess(self, image: Image.Image) -> Any:
        return self.inner.preprocess(image)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.batches.append(len(inputs))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.forward(inputs)

    def close(self) -> None:
        self.closed = True


class BrokenOutputBackend(RecordingBackend):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        out = super().forward(inputs)
        if self.mode == "shape":
            return out[:, :10]
        if self.mode == "rows":
            return out[:-1]
        out = out.astype(np.float64)
        if self.mode == "norms":
            # Rows that pass an isfinite check yet break float32 normalisation downstream.
            out[0, :] = 1e20
            out[1, :] = 1e-30
            out[2, :] = 0.0
            return out
        out[0, 3] = np.nan
        return out


class PoisonBackend(RecordingBackend):
    """Fails any batch containing an all-white image (histogram bin 511 only)."""

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        if any(np.argmax(x) == 511 and x.max() > 0.99 for x in inputs):
            raise RuntimeError("poisoned")
        return super().forward(inputs)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_forward_passes():
    backend = RecordingBackend(delay_s=0.05)

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=64, max_wait_ms=30, decode_workers=2) as embedder:
            requests = [embedder.embed(items(4, prefix=f"r{r}")) for r in range(12)]
            return await asyncio.gather(*requests)

    results = run(scenario())
    assert [len(r) for r in results] == [4] * 12
    assert all(e.ok and e.vector.shape == (512,) and e.vector.dtype == np.float32 for r in results for e in r)
    assert sum(backend.batches) == 48
    # 12 requests, far fewer forward passes: batches were formed across requests.
    assert len(backend.batches) < 12 / 2, backend.batches
    assert max(backend.batches) > 4


def test_results_match_item_order_and_unbatched_vectors():
    backend = RecordingBackend()
    request = items(10)

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=3, max_wait_ms=1) as embedder:
            return await embedder.embed(request)

    results = run(scenario())
    assert [e.id for e in results] == [i.id for i in request]
    assert max(backend.batches) <= 3
    direct = embed_sync(HistogramBackend(), request)
    for got, want in zip(results, direct):
        np.testing.assert_array_equal(got.vector, want.vector)


def test_bad_images_get_per_item_errors_and_never_fail_the_batch():
    backend = RecordingBackend()
    good = items(3)
    request = [
        good[0],
        ImageItem("empty", b""),
        good[1],
        ImageItem("text", b"hello world"),
        ImageItem("truncated", jpeg((1, 2, 3), (64, 64))[:100]),
        good[2],
    ]

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=16, max_wait_ms=5) as embedder:
            return await embedder.embed(request)

    results = {e.id: e for e in run(scenario())}
    assert all(results[i.id].ok for i in good)
    for bad in ("empty", "text", "truncated"):
        assert results[bad].error is not None and results[bad].error.code == ErrorCode.INVALID_IMAGE
    assert sum(backend.batches) == 3


def test_overload_is_refused_early_while_admitted_work_completes():
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=8, max_wait_ms=1, max_queue=8) as embedder:
            first = asyncio.create_task(embedder.embed(items(6, "a")))
            await asyncio.sleep(0.05)  # admitted and parked at the gated forward pass
            started = time.perf_counter()
            with pytest.raises(Overloaded):
                await embedder.embed(items(3, "b"))
            refused_in = time.perf_counter() - started
            small = asyncio.create_task(embedder.embed(items(2, "c")))  # still fits: 6 + 2 <= 8
            gate.set()
            return await first, await small, refused_in

    first, small, refused_in = run(scenario())
    assert refused_in < 0.5  # refused at once, not after the queue drained
    assert all(e.ok for e in first + small)


def test_admission_is_released_after_completion():
    backend = RecordingBackend()

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=4, max_wait_ms=1, max_queue=4) as embedder:
            for round_ in range(5):
                assert all(e.ok for e in await embedder.embed(items(4, f"round{round_}")))
            return embedder._admitted

    assert run(scenario()) == 0


def test_info_reports_request_limit_and_too_large_request_is_invalid():
    embedder = BatchingEmbedder(RecordingBackend(), max_batch=4, max_queue=10, max_request_items=8)
    assert embedder.info().max_batch == 8 and embedder.info().dim == 512

    async def scenario():
        async with embedder:
            with pytest.raises(ValueError):
                await embedder.embed(items(9))

    run(scenario())


@pytest.mark.parametrize("mode", ["shape", "rows"])
def test_wrong_output_shape_is_invalid_output_per_item(mode):
    async def scenario():
        async with BatchingEmbedder(BrokenOutputBackend(mode), max_batch=8, max_wait_ms=1) as embedder:
            return await embedder.embed(items(3))

    results = run(scenario())
    assert [e.error.code for e in results] == [ErrorCode.INVALID_OUTPUT] * 3
    assert "shape" in results[0].error.message


def test_non_finite_row_fails_only_that_item():
    async def scenario():
        async with BatchingEmbedder(BrokenOutputBackend("nan"), max_batch=8, max_wait_ms=20) as embedder:
            return await embedder.embed(items(3))

    results = run(scenario())
    codes = [e.error.code if e.error else None for e in results]
    assert codes.count(ErrorCode.INVALID_OUTPUT) == 1 and codes.count(None) == 2


def test_unusable_norms_are_invalid_output_per_item():
    async def scenario():
        async with BatchingEmbedder(BrokenOutputBackend("norms"), max_batch=8, max_wait_ms=20) as embedder:
            return await embedder.embed(items(4))

    results = run(scenario())
    assert [e.error.code if e.error else None for e in results] == [ErrorCode.INVALID_OUTPUT] * 3 + [None]
    assert "exceeds" in results[0].error.message
    assert "below" in results[1].error.message
    assert "all zeros" in results[2].error.message
    assert results[3].vector.dtype == np.float32 and np.isfinite(results[3].vector).all()


def test_forward_exception_is_isolated_to_the_poisonous_item():
    backend = PoisonBackend()
    request = items(3) + [ImageItem("white", jpeg((255, 255, 255)))]

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=8, max_wait_ms=20) as embedder:
            return await embedder.embed(request)

    results = {e.id: e for e in run(scenario())}
    assert results["white"].error.code == ErrorCode.INTERNAL and "poisoned" in results["white"].error.message
    assert all(results[i.id].ok for i in request[:3])


def test_metrics_record_batch_sizes():
    from services.common import metrics

    backend = RecordingBackend()
    name = backend.info().name
    before = metrics.BATCH_SIZE.labels(name)._sum.get()

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=8, max_wait_ms=20) as embedder:
            await embedder.embed(items(5))

    run(scenario())
    assert metrics.BATCH_SIZE.labels(name)._sum.get() - before == 5
    assert metrics.QUEUE_DEPTH.labels(name, "decode")._value.get() == 0


def test_close_closes_the_backend_and_refuses_more_work():
    backend = RecordingBackend()

    async def scenario():
        embedder = BatchingEmbedder(backend)
        await embedder.start()
        await embedder.embed(items(1))
        await embedder.close()
        with pytest.raises(RuntimeError):
            await embedder.embed(items(1))

    run(scenario())
    assert backend.closed


def test_cancelled_request_does_not_leak_admission():
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=8, max_wait_ms=1, max_queue=4) as embedder:
            task = asyncio.create_task(embedder.embed(items(4)))
            await asyncio.sleep(0.05)
            task.cancel()  # the client went away mid-request
            gate.set()
            for _ in range(100):
                if embedder._admitted == 0:
                    break
                await asyncio.sleep(0.01)
            return embedder._admitted, await embedder.embed(items(4, "after"))

    admitted, after = run(scenario())
    assert admitted == 0 and all(e.ok for e in after)


def test_cancelled_request_items_are_never_forwarded():
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)

    async def scenario():
        async with BatchingEmbedder(backend, max_batch=4, max_wait_ms=1, max_queue=64) as embedder:
            first = asyncio.create_task(embedder.embed(items(4, "first")))
            while embedder._decoding or embedder._ready.qsize():  # first is in the (gated) forward pass
                await asyncio.sleep(0.01)
            gone = asyncio.create_task(embedder.embed(items(8, "gone")))
            while embedder._decoding:  # decoded and waiting for the model
                await asyncio.sleep(0.01)
            gone.cancel()  # its stream was cancelled while it waited
            gate.set()
            answered = await first
            with pytest.raises(asyncio.CancelledError):
                await gone
            after = await embedder.embed(items(2, "after"))
            return answered, after, embedder.forwarded_items, embedder._admitted

    answered, after, forwarded, admitted = run(scenario())
    assert all(e.ok for e in answered + after)
    assert forwarded == 6 and sum(backend.batches) == 6  # none of the 8 cancelled items
    assert admitted == 0


def test_overloaded_carries_a_retry_after_estimate():
    gate = threading.Event()

    async def scenario():
        async with BatchingEmbedder(RecordingBackend(gate=gate), max_batch=8, max_queue=8) as embedder:
            held = asyncio.create_task(embedder.embed(items(8)))
            await asyncio.sleep(0.02)
            try:
                await embedder.embed(items(2))
            except Overloaded as exc:
                refused = exc
            gate.set()
            await held
            return refused

    refused = run(scenario())
    # No forward pass measured yet: 5 ms per item over half the queue, floored at 10 ms.
    assert refused.retry_after_ms == 20


# --- synchronous helper ----------------------------------------------------------------------


def test_embed_sync_chunks_by_max_batch_and_keeps_order():
    from concurrent.futures import ThreadPoolExecutor

    backend = RecordingBackend()
    request = items(10) + [ImageItem("bad", b"nope")]
    with ThreadPoolExecutor(2) as pool:
        results = embed_sync(backend, request, decode_pool=pool, max_batch=4)
    assert [e.id for e in results] == [i.id for i in request]
    assert backend.batches == [4, 4, 2]  # 11 items in chunks of 4, the bad one never reaches forward
    assert results[-1].error.code == ErrorCode.INVALID_IMAGE
    assert all(e.vector.dtype == np.float32 and e.vector.ndim == 1 for e in results[:-1])


def test_iter_embed_pulls_items_lazily():
    pulled = []

    def source():
        for item in items(9):
            pulled.append(item.id)
            yield item

    stream = iter_embed(RecordingBackend(), source(), max_batch=3)
    first = next(stream)
    assert first.id == "img-0"
    assert len(pulled) <= 6  # the current chunk and at most the next one
    assert len(list(stream)) == 8


def test_inprocess_client_by_name_and_by_backend():
    from services.evaluator.clients.inprocess import InProcessEmbeddingClient

    with InProcessEmbeddingClient("histogram", batch_size=4, decode_workers=2) as client:
        assert client.info().name == "histogram" and client.info().dim == 512
        results = list(client.embed(iter(items(7) + [ImageItem("bad", b"")])))
    assert len(results) == 8 and sum(e.ok for e in results) == 7
    backend = RecordingBackend()
    client = InProcessEmbeddingClient(backend, batch_size=5)
    assert len(list(client.embed(items(6)))) == 6 and backend.batches == [5, 1]
    client.close()
    assert not backend.closed  # a backend passed in belongs to the caller
    with pytest.raises(RuntimeError):
        client.embed(items(1))


class SlowWarmupBackend(RecordingBackend):
    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.warmups = 0
        self.fail_first = fail_first

    def warmup(self) -> None:
        self.warmups += 1
        time.sleep(0.1)
        if self.fail_first and self.warmups == 1:
            raise RuntimeError("device not ready")


def test_concurrent_first_calls_start_the_pipeline_once():
    backend = SlowWarmupBackend()

    async def scenario():
        embedder = BatchingEmbedder(backend, warmup=True)
        try:
            results = await asyncio.gather(embedder.embed(items(2, "a")), embedder.embed(items(2, "b")))
            forward_threads = [t for t in threading.enumerate() if t.name.startswith("forward")]
            return results, len(forward_threads)
        finally:
            await embedder.close()

    results, forward_threads = run(scenario())
    assert backend.warmups == 1 and forward_threads == 1
    assert all(e.ok for batch in results for e in batch)


def test_failed_warmup_can_be_retried():
    backend = SlowWarmupBackend(fail_first=True)

    async def scenario():
        embedder = BatchingEmbedder(backend, warmup=True)
        with pytest.raises(RuntimeError, match="device not ready"):
            await embedder.start()
        try:
            return await embedder.embed(items(2))
        finally:
            await embedder.close()

    assert all(e.ok for e in run(scenario())) and backend.warmups == 2


def test_items_of_different_shapes_are_forwarded_per_shape_and_answered_in_order():
    """Aspect-keeping preprocessing without a crop (ILIAS's longer-side resize) gives inputs of
    several shapes in one batch: each shape group is one forward pass, and every vector equals the
    vector of that image embedded alone."""
    from PIL import Image

    from services.embedder.backends.registry import load_backend
    from services.embedder.batching import forward_checked

    backend = load_backend("efficientnet-lite0", preprocessing={"resize": "longer", "resize_to": 224, "crop_size": 224})
    rng = np.random.default_rng(3)
    sizes = [(320, 240), (240, 320), (320, 240), (200, 200), (240, 320)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    inputs = [backend.preprocess(image) for image in images]
    assert len({x.shape for x in inputs}) == 3
    calls = []
    original = backend.forward

    def counting_forward(batch):
        calls.append(len(batch))
        return original(batch)

    backend.forward = counting_forward
    ids = [f"i{n}" for n in range(len(inputs))]
    together = forward_checked(backend, ids, inputs, backend.info().dim)
    assert [e.id for e in together] == ids and all(e.ok for e in together)
    assert sorted(calls) == [1, 2, 2]  # one pass per shape group
    for n, embedding in enumerate(together):
        (alone,) = forward_checked(backend, [ids[n]], [inputs[n]], backend.info().dim)
        cos = float(embedding.vector @ alone.vector / np.linalg.norm(embedding.vector) / np.linalg.norm(alone.vector))
        assert cos > 0.9999
    backend.close()
