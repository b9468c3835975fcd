"""Issue 11 item 2: overload is back-pressure. Eight evaluator clients share a real batching
embedder (histogram model) whose admission queue is far smaller than what they send at once."""

from __future__ import annotations

import io
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from services.common.grpc_server import BackgroundServer
from services.common.types import ImageItem
from services.embedder.backends.histogram import HistogramBackend
from services.embedder.batching import BatchingEmbedder
from services.evaluator.clients.grpc import GrpcEmbeddingClient

CLIENTS = 8
IMAGES_PER_CLIENT = 96


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def test_eight_clients_on_a_tiny_queue_all_finish_with_every_image_once():
    pictures = [photo(seed) for seed in range(16)]
    embedder = BatchingEmbedder(
        HistogramBackend(), max_batch=8, max_wait_ms=2, decode_workers=2, max_queue=16, max_request_items=8
    )

    def one_client(client_index: int, address: str) -> tuple[Counter, int, int]:
        source = [
            ImageItem(f"c{client_index}-{i}", pictures[(client_index + i) % len(pictures)])
            for i in range(IMAGES_PER_CLIENT)
        ]
        with GrpcEmbeddingClient(address, batch_size=8, max_in_flight=4, max_backoff_s=0.5) as client:
            delivered = Counter(e.id for e in client.embed(iter(source)) if e.ok)
            return delivered, client.rejections, client.retries

    with BackgroundServer(embedder) as server, ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda index: one_client(index, server.address), range(CLIENTS)))

    delivered_total = 0
    for index, (delivered, _, retries) in enumerate(outcomes):
        assert delivered == Counter({f"c{index}-{i}": 1 for i in range(IMAGES_PER_CLIENT)})
        assert retries == 0  # overload never failed a stream
        delivered_total += sum(delivered.values())
    assert sum(rejections for _, rejections, _ in outcomes) > 0  # the queue really was too small
    # Server work: every forward-passed item was delivered to someone.
    assert delivered_total == CLIENTS * IMAGES_PER_CLIENT
    assert embedder.forwarded_items <= 1.1 * delivered_total
