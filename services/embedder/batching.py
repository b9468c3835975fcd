"""Dynamic batching across concurrent requests, and the same stages run synchronously.

Stages (each on its own workers, connected by bounded queues):

    embed(items) --admit--> decode pool (N threads: bytes -> RGB -> model input)
                 --ready queue--> collector (event loop: flush at max_batch items or max_wait_ms
                                  after the first waiting item)
                 --> forward thread (1 thread: stack, backend.forward, check output)

Decoding keeps running while a forward pass runs, so under load the next batch is already
waiting when the model is free. Admission counts every item from the moment a request arrives
until its result is set; a request that would push that count over `max_queue` is refused at
once with `Overloaded` (unary: RESOURCE_EXHAUSTED; in a stream: that request alone is rejected with
a retry-after estimate) instead of queueing without bound. A request whose caller has gone
(cancelled) gives its admission back at once and its not-yet-computed items are never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from services.common import metrics
from services.common.servicer import Overloaded
from services.common.types import Embedding, ErrorCode, ImageItem, ItemError, ModelInfo
from services.common.vectors import row_problems
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.preprocess import ResizeTooLarge
from services.embedder.images import DEFAULT_LIMITS, DecodeLimits, ImageError, decode_image

log = logging.getLogger(__name__)


# --- the stages, shared by the async batcher and the synchronous helper ----------------------


def prepare_item(backend: ModelBackend, item: ImageItem, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Decode + preprocess one item; returns the model input, or an ItemError for a bad item."""
    try:
        image = decode_image(item.data, limits)
    except ImageError as exc:
        return ItemError(exc.code, str(exc))
    try:
        return backend.preprocess(image)
    except ResizeTooLarge as exc:
        return ItemError(ErrorCode.IMAGE_TOO_LARGE, str(exc))
    except Exception as exc:  # noqa: BLE001 - one item's failure stays that item's
        log.warning("preprocess failed for %r", item.id, exc_info=True)
        return ItemError(ErrorCode.INTERNAL, f"preprocess failed: {type(exc).__name__}: {exc}")


def prepare_group(
    backend: ModelBackend, items: Sequence[ImageItem], limits: DecodeLimits = DEFAULT_LIMITS
) -> list[Any]:
    """prepare_item for a few items in one task: fewer thread hand-offs per image."""
    prepared: list[Any] = []
    for item in items:
        try:
            prepared.append(prepare_item(backend, item, limits))
        except Exception as exc:  # a bug, not a bad image: still only this item's error
            log.exception("decoding %r failed", item.id)
            prepared.append(ItemError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
    return prepared


def forward_checked(
    backend: ModelBackend, ids: Sequence[str], inputs: Sequence[Any], dim: int
) -> list[Embedding]:
    """Run one forward pass and turn its output into Embeddings, checking shape and finiteness.

    If the batch raises, each item is retried alone so one poisonous input cannot fail the rest.
    Items of different shapes (aspect-keeping preprocessing without a crop) are forwarded as one
    batch per shape, in first-seen order, and answered in item order.
    """
    groups = _shape_groups(inputs)
    if len(groups) > 1:
        answers: dict[int, Embedding] = {}
        for rows in groups:
            for row, embedding in zip(rows, forward_checked(backend, [ids[r] for r in rows], [inputs[r] for r in rows], dim)):
                answers[row] = embedding
        return [answers[row] for row in range(len(inputs))]
    try:
        output = backend.forward(inputs)
    except Exception as exc:  # noqa: BLE001
        if len(inputs) > 1:
            log.warning("forward of %d items failed (%s); retrying one by one", len(inputs), exc)
            results: list[Embedding] = []
            for item_id, one in zip(ids, inputs):
                results.extend(forward_checked(backend, [item_id], [one], dim))
            return results
        log.warning("forward failed for %r", ids[0], exc_info=True)
        return [Embedding.failed(ids[0], ErrorCode.INTERNAL, f"forward failed: {type(exc).__name__}: {exc}")]
    return split_output(ids, output, dim)


def _shape_groups(inputs: Sequence[Any]) -> list[list[int]]:
    """Row indices grouped by array shape; inputs without a shape form one group."""
    groups: dict[Any, list[int]] = {}
    for row, item in enumerate(inputs):
        groups.setdefault(getattr(item, "shape", None), []).append(row)
    return list(groups.values())


def split_output(ids: Sequence[str], output: Any, dim: int) -> list[Embedding]:
    array = np.asarray(output)
    expected = (len(ids), dim) if dim > 0 else None
    if array.ndim != 2 or array.shape[0] != len(ids) or (expected is not None and array.shape != expected):
        message = f"model returned shape {array.shape}, expected {expected or (len(ids), 'dim')}"
        return [Embedding.failed(item_id, ErrorCode.INVALID_OUTPUT, message) for item_id in ids]
    # Checked in float64 before the float32 cast: a norm that overflows or underflows float32
    # would otherwise be stored as zeros or inf downstream (services.common.vectors).
    problems = row_problems(array)
    array = array.astype(np.float32)
    results = []
    for row, item_id in enumerate(ids):
        if problems[row] is None:
            # A copy per row: a view would keep the whole batch alive as long as any one vector.
            results.append(Embedding(id=item_id, vector=np.array(array[row], dtype=np.float32)))
        else:
            message = f"model returned an unusable vector: {problems[row]}"
            results.append(Embedding.failed(item_id, ErrorCode.INVALID_OUTPUT, message))
    return results


# --- synchronous: the in-process client and the benches --------------------------------------


def iter_embed(
    backend: ModelBackend,
    items: Iterable[ImageItem],
    decode_pool: Executor | None = None,
    max_batch: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Iterator[Embedding]:
    """Embed a stream of items in chunks of `max_batch`, in item order.

    With a `decode_pool`, the next chunk is decoded while the current one runs forward, and memory
    stays bounded by two chunks of model inputs however long the stream is.
    """
    info = backend.info()
    batch = max_batch or info.max_batch or 32
    chunks = _chunks(items, batch)

    def submit(chunk: list[ImageItem]) -> list[Any]:
        if decode_pool is None:
            return [prepare_item(backend, item, limits) for item in chunk]
        return [decode_pool.submit(prepare_item, backend, item, limits) for item in chunk]

    def gather(pending: list[Any]) -> list[Any]:
        return [p.result() if isinstance(p, Future) else p for p in pending]

    current = next(chunks, None)
    pending = submit(current) if current is not None else []
    while current is not None:
        upcoming = next(chunks, None)
        prepared = gather(pending)
        pending = submit(upcoming) if upcoming is not None else []
        yield from _embed_prepared(backend, current, prepared, info.dim)
        current = upcoming


def embed_sync(
    backend: ModelBackend,
    items: Sequence[ImageItem],
    decode_pool: Executor | None = None,
    max_batch: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> list[Embedding]:
    """Decode + preprocess + forward `items` in chunks of max_batch; one Embedding per item, in order."""
    return list(iter_embed(backend, items, decode_pool, max_batch, limits))


def _embed_prepared(
    backend: ModelBackend, items: Sequence[ImageItem], prepared: Sequence[Any], dim: int
) -> list[Embedding]:
    results: dict[int, Embedding] = {}
    good_ids, good_inputs, good_positions = [], [], []
    for position, (item, ready) in enumerate(zip(items, prepared)):
        if isinstance(ready, ItemError):
            results[position] = Embedding(id=item.id, error=ready)
        else:
            good_ids.append(item.id)
            good_inputs.append(ready)
            good_positions.append(position)
    if good_inputs:
        for position, embedding in zip(good_positions, forward_checked(backend, good_ids, good_inputs, dim)):
            results[position] = embedding
    return [results[position] for position in range(len(items))]


def _chunks(items: Iterable[ImageItem], size: int) -> Iterator[list[ImageItem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# --- asynchronous: the gRPC server -------------------------------------------------------------


@dataclass
class _Pending:
    """One admitted item between admission and its result."""

    item_id: str
    result: asyncio.Future
    prepared: Any = None


class BatchingEmbedder:
    """An AsyncEmbedder over a ModelBackend with dynamic batching across concurrent requests.

    max_batch: items per forward pass. max_wait_ms: how long the first waiting item may wait for
    others. decode_workers: threads decoding + preprocessing. max_queue: items admitted at once
    (decoding, waiting or in the forward pass); more is refused with Overloaded.
    max_request_items: the largest request accepted (reported as ModelInfo.max_batch).
    decode_group: items decoded per thread-pool task (amortises the hand-off for fast models).
    """

    def __init__(
        self,
        backend: ModelBackend,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        decode_workers: int = 2,
        max_queue: int = 512,
        max_request_items: int | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        warmup: bool = False,
        decode_group: int = 4,
    ) -> None:
        if max_batch < 1 or decode_workers < 1 or max_queue < 1 or decode_group < 1:
            raise ValueError("max_batch, decode_workers, max_queue and decode_group must be positive")
        self._decode_group = decode_group
        self._backend = backend
        self._max_batch = max_batch
        self._max_wait = max(0.0, max_wait_ms) / 1000.0
        self._decode_workers = decode_workers
        self._max_queue = max_queue
        self._limits = limits
        self._warmup = warmup
        backend_info = backend.info()
        request_limit = min(max_request_items or max(max_batch, 256), max_queue)
        self._info: ModelInfo = replace(backend_info, max_batch=request_limit)
        self._dim = backend_info.dim
        self._name = backend_info.name
        self._admitted = 0
        self._decoding = 0
        self._ready: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._forward_pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        # Seconds of forward pass per item, smoothed: the retry-after estimate for refused requests.
        self._seconds_per_item: float | None = None
        self.forward_calls = 0  # observability for tests and benches
        self.forwarded_items = 0  # items that went through a forward pass (server work)

    def info(self) -> ModelInfo:
        return self._info

    @property
    def backend(self) -> ModelBackend:
        return self._backend

    async def start(self) -> None:
        # Locked: a second caller arriving during warmup must wait for it, not build more pools.
        async with self._start_lock:
            if self._collector is not None:
                return
            self._decode_pool = ThreadPoolExecutor(self._decode_workers, thread_name_prefix="decode")
            self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
            self._ready = asyncio.Queue()  # bounded by admission, not by maxsize: a put never blocks
            if self._warmup:
                try:
                    await asyncio.get_running_loop().run_in_executor(self._forward_pool, self._backend.warmup)
                except BaseException:
                    for pool in (self._decode_pool, self._forward_pool):
                        pool.shutdown(wait=False)
                    self._decode_pool = self._forward_pool = None
                    raise
            self._collector = asyncio.create_task(self._collect(), name=f"batcher-{self._name}")

    async def close(self) -> None:
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        for pool in (self._decode_pool, self._forward_pool):
            if pool is not None:  # in a thread: a forward pass may still be finishing
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._decode_pool = self._forward_pool = None
        if self._ready is not None:
            while not self._ready.empty():
                pending = self._ready.get_nowait()
                _set(
                    pending.result,
                    Embedding.failed(pending.item_id, ErrorCode.INTERNAL, "server shutting down"),
                )
        self._backend.close()

    async def __aenter__(self) -> "BatchingEmbedder":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def embed(self, items: Sequence[ImageItem]) -> list[Embedding]:
        if not items:
            return []
        if self._collector is None:
            if self._closed:
                raise RuntimeError("embedder is closed")
            await self.start()
        if len(items) > self._info.max_batch:
            raise ValueError(f"batch of {len(items)} items exceeds max_batch {self._info.max_batch}")
        if self._admitted + len(items) > self._max_queue:
            raise Overloaded(
                f"{self._admitted} items in flight, {len(items)} more would exceed "
                f"max_queue {self._max_queue}",
                retry_after_ms=self._retry_after_ms(len(items)),
            )
        loop = asyncio.get_running_loop()
        self._admitted += len(items)
        pendings = [_Pending(item.id, loop.create_future()) for item in items]
        for pending in pendings:
            pending.result.add_done_callback(self._release)
        self._decoding += len(items)
        self._update_depth()
        step = self._decode_group
        decoding: list[asyncio.Future] = []
        for start in range(0, len(items), step):
            group = pendings[start : start + step]
            future = loop.run_in_executor(
                self._decode_pool, prepare_group, self._backend, items[start : start + step], self._limits
            )
            future.add_done_callback(lambda done, group=group: self._decoded(group, done))
            decoding.append(future)
        try:
            return list(await asyncio.gather(*(p.result for p in pendings)))
        except asyncio.CancelledError:
            # The caller has gone (stream cancelled, client disconnected). gather cancelled the
            # result futures: admission is released now, decode tasks not yet started are
            # dropped, and the forward stage skips the rest: no capacity goes to unread answers.
            for pending in pendings:
                pending.result.cancel()
            for future in decoding:
                future.cancel()
            raise

    def _retry_after_ms(self, requested: int) -> int:
        """When `requested` more items might fit: the time to forward the excess, or half the queue
        when that is larger (many refused callers come back at once), 10 ms .. 10 s."""
        per_item = self._seconds_per_item if self._seconds_per_item is not None else 0.005
        excess = self._admitted + requested - self._max_queue
        wait_s = max(excess, self._admitted / 2) * per_item
        return int(min(10_000, max(10, wait_s * 1000)))

    # The callbacks below run on the event loop thread.

    def _release(self, _: asyncio.Future) -> None:
        self._admitted -= 1

    def _decoded(self, group: list[_Pending], done: asyncio.Future) -> None:
        self._decoding -= len(group)
        if done.cancelled() or done.exception() is not None:
            reason = (
                "cancelled" if done.cancelled() else f"{type(done.exception()).__name__}: {done.exception()}"
            )
            for pending in group:
                _set(pending.result, Embedding.failed(pending.item_id, ErrorCode.INTERNAL, reason))
        else:
            assert self._ready is not None
            for pending, prepared in zip(group, done.result()):
                if pending.result.done():  # the caller has gone: not queued for a forward pass
                    continue
                if isinstance(prepared, ItemError):
                    _set(pending.result, Embedding(id=pending.item_id, error=prepared))
                elif self._closed:  # decoded after close() drained the queue: nobody would run it
                    _set(
                        pending.result,
                        Embedding.failed(pending.item_id, ErrorCode.INTERNAL, "server shutting down"),
                    )
                else:
                    pending.prepared = prepared
                    self._ready.put_nowait(pending)
        self._update_depth()

    def _update_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(self._name, "decode").set(self._decoding)
        metrics.QUEUE_DEPTH.labels(self._name, "batch").set(self._ready.qsize() if self._ready else 0)

    async def _collect(self) -> None:
        assert self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._ready.get()]
            deadline = loop.time() + self._max_wait
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._ready.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout cancels the get() itself, which leaves an item it had not yet
                    # taken in the queue (wait_for on 3.11 wraps it in a task and can race).
                    async with asyncio.timeout(remaining):
                        batch.append(await self._ready.get())
                except TimeoutError:
                    break
            self._update_depth()
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.result.done()]
        if not live:
            return
        metrics.BATCH_SIZE.labels(self._name).observe(len(live))
        self.forward_calls += 1
        self.forwarded_items += len(live)
        ids = [p.item_id for p in live]
        inputs = [p.prepared for p in live]
        for pending in live:
            pending.prepared = None  # the batch below holds the only reference from here on
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._forward_pool, forward_checked, self._backend, ids, inputs, self._dim
            )
        except asyncio.CancelledError:
            for pending in live:  # closing: answer the callers instead of leaving them waiting
                _set(
                    pending.result,
                    Embedding.failed(pending.item_id, ErrorCode.INTERNAL, "server shutting down"),
                )
            raise
        except Exception as exc:  # noqa: BLE001 - executor shut down or a bug in checking
            log.exception("forward stage failed")
            results = [Embedding.failed(i, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}") for i in ids]
        elapsed = time.perf_counter() - started
        per_item = elapsed / len(live)
        self._seconds_per_item = (
            per_item if self._seconds_per_item is None else 0.8 * self._seconds_per_item + 0.2 * per_item
        )
        log.debug("forward of %d items took %.1f ms", len(live), elapsed * 1000)
        for pending, result in zip(live, results):
            _set(pending.result, result)


def _set(future: asyncio.Future, value: Embedding) -> None:
    if not future.done():
        future.set_result(value)
