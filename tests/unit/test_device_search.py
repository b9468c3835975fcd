"""The device scorer's float16 gallery, the resident DeviceGallery and the several-device split,
run on the CPU through the same code a GPU runs (only the GEMM kernel differs there)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from services.common.errors import ConfigError  # noqa: E402
from services.evaluator.device_gallery import DeviceGallery  # noqa: E402
from services.evaluator.search import UnusableGalleryRow, exact_topk  # noqa: E402
from services.evaluator.sharded_search import DeviceShards, Shard, ShardError, search_devices  # noqa: E402
from tests.exact_reference import brute_force  # noqa: E402


def tied_data(n_gallery=2400, counts=(2, 3), dim=16, n_queries=70):
    """Integer vectors (exact in float16 and float32, exact dot products), with copies of rows on
    both sides of every shard boundary of the given shard counts, so equal scores straddle them."""
    rng = np.random.default_rng(5)
    gallery = rng.integers(-2, 3, (n_gallery, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, (n_queries, dim)).astype(np.float32)
    for count in counts:
        for shard in range(1, count):
            boundary = Shard(shard, count).bounds(n_gallery)[0]
            gallery[boundary - 2 : boundary + 2] = gallery[boundary - 1]
            gallery[boundary + 5] = gallery[3]
    return queries, gallery


def _same(a, b):
    assert (a.indices == b.indices).all()
    assert (a.scores == b.scores).all()


@pytest.mark.parametrize("tile_bytes", [4 * 35 * 50, 4 * 35 * 700, 1 << 30])
def test_float16_gallery_ranks_by_the_tie_rule(tile_bytes):
    queries, gallery = tied_data()
    exclude = np.arange(len(queries)) * 31
    exclude[::4] = -1
    top = exact_topk(queries, gallery, 25, exclude=exclude, engine="torch", device="cpu", device_dtype="float16",
                     tile_bytes=tile_bytes, query_block=35)
    assert (top.indices == brute_force(queries, gallery, 25, exclude)).all()
    assert (top.scores == np.take_along_axis(queries @ gallery.T, top.indices, 1)).all()
    _same(top, exact_topk(queries, gallery, 25, exclude=exclude, engine="numpy", tile_bytes=tile_bytes, query_block=35))


def test_float16_array_is_used_as_stored_and_normalize_still_checks_rows():
    queries, gallery = tied_data()
    _same(exact_topk(queries, gallery.astype(np.float16), 10, engine="torch", device="cpu", device_dtype="float16"),
          exact_topk(queries, gallery, 10, engine="numpy"))
    rng = np.random.default_rng(2)
    real = rng.standard_normal((500, 32)).astype(np.float32)
    half = exact_topk(real[:20], real, 5, engine="torch", device="cpu", device_dtype="float16", normalize=True)
    full = exact_topk(real[:20], real, 5, engine="numpy", normalize=True)
    assert (half.indices[:, 0] == np.arange(20)).all()  # each query finds itself first
    assert np.abs(half.scores - full.scores).max() < 2e-3  # float16 rounding, not a different search
    real[123] = 0
    with pytest.raises(UnusableGalleryRow, match="gallery row 123 is a zero vector"):
        exact_topk(real[:5], real, 5, engine="torch", device="cpu", device_dtype="float16", normalize=True)


def test_device_dtype_errors_are_config_errors():
    queries, gallery = tied_data(n_gallery=50)
    with pytest.raises(ConfigError, match="device_dtype must be one of float32, float16, got 'bfloat16'"):
        exact_topk(queries, gallery, 5, engine="torch", device_dtype="bfloat16")
    with pytest.raises(ConfigError, match="float16 gallery needs the torch engine"):
        exact_topk(queries, gallery, 5, engine="numpy", device_dtype="float16")


def test_resident_gallery_searches_repeatedly_like_exact_topk():
    queries, gallery = tied_data()
    resident = DeviceGallery(gallery, "cpu", dtype="float16")
    assert resident.rows == len(gallery) and resident.nbytes == gallery.size * 2
    exclude = np.arange(len(queries))
    for k in (1, 17, 300):
        _same(resident.search(queries, k, exclude=exclude, tile_bytes=4 * 70 * 400),
              exact_topk(queries, gallery, k, exclude=exclude, engine="numpy"))
    with pytest.raises(ConfigError, match="query dim 8 != gallery dim 16"):
        resident.search(queries[:, :8], 5)
    with pytest.raises(ConfigError, match="float32 gallery on the CPU is already resident"):
        DeviceGallery(gallery, "cpu", dtype="float32")
    resident.close()


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"], ["cpu", "cpu", "cpu"]])
@pytest.mark.parametrize("device_dtype", ["float32", "float16"])
def test_devices_by_shard_equal_one_search_with_ties_across_boundaries(devices, device_dtype):
    queries, gallery = tied_data()
    exclude = np.arange(len(queries)) * 34  # some own rows sit at or next to shard boundaries
    exclude[1] = Shard(1, 2).bounds(len(gallery))[0]
    exclude[::6] = -1
    single = exact_topk(queries, gallery, 40, exclude=exclude, engine="numpy")
    assert (single.indices == brute_force(queries, gallery, 40, exclude)).all()
    _same(search_devices(queries, gallery, 40, devices, exclude=exclude, device_dtype=device_dtype,
                         tile_bytes=4 * 70 * 300), single)


def test_resident_shards_equal_one_search_and_empty_shards_answer():
    queries, gallery = tied_data()
    shards = DeviceShards(gallery, ["cpu", "cpu", "cpu"])
    assert [s.rows for s in shards.shards] == [800, 800, 800]
    _same(shards.search(queries, 60), exact_topk(queries, gallery, 60, engine="numpy"))
    # more devices than rows: empty shards give empty slots, the merge pads with -1
    tiny = DeviceShards(gallery[:2], ["cpu"] * 4)
    top = tiny.search(queries, 3)
    assert (top.indices[:, 2] == -1).all()
    assert (np.sort(top.indices[:, :2], axis=1) == [0, 1]).all()
    _same(search_devices(queries, gallery[:2], 3, ["cpu"] * 4), top)


def test_device_split_refusals():
    queries, gallery = tied_data(n_gallery=100)
    with pytest.raises(ShardError, match="no devices"):
        search_devices(queries, gallery, 5, [])
    with pytest.raises(ShardError, match="query dim 8 != gallery dim 16"):
        search_devices(queries[:, :8], gallery, 5, ["cpu"])
    with pytest.raises(ShardError, match="exclude needs one gallery position"):
        search_devices(queries, gallery, 5, ["cpu"], exclude=np.zeros(3, dtype=np.int64))


def test_device_scorer_pads_when_the_gallery_is_smaller_than_k():
    # the device scorer once broadcast its one candidate into every slot here
    queries, gallery = tied_data(n_gallery=3, counts=())
    top = exact_topk(queries, gallery, 5, engine="torch", device="cpu", device_dtype="float16")
    _same(top, exact_topk(queries, gallery, 5, engine="numpy"))
    assert (top.indices[:, 3:] == -1).all()
