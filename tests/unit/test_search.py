"""exact_topk against a brute-force stable argsort, with ties, exclusions, blocks and memmaps."""

import importlib.util

import numpy as np
import pytest

from services.evaluator.search import exact_topk, l2_normalize
from tests.exact_reference import brute_force

ENGINES = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])


@pytest.fixture(scope="module")
def tied_data():
    # Integer-valued vectors: dot products are exact in float32, so ties are real ties.
    rng = np.random.default_rng(7)
    gallery = rng.integers(-2, 3, (3000, 16)).astype(np.float32)
    queries = rng.integers(-2, 3, (120, 16)).astype(np.float32)
    gallery[500] = gallery[10]  # duplicates guarantee equal scores
    return queries, gallery


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tile_bytes", [4 * 40 * 50, 4 * 40 * 700, 1 << 30])
def test_matches_brute_force_with_ties(engine, tile_bytes, tied_data):
    queries, gallery = tied_data
    result = exact_topk(queries, gallery, 15, engine=engine, tile_bytes=tile_bytes, query_block=40)
    assert (result.indices == brute_force(queries, gallery, 15)).all()
    scores = queries @ gallery.T
    assert np.allclose(result.scores, np.take_along_axis(scores, result.indices, 1))


@pytest.mark.parametrize("engine", ENGINES)
def test_self_match_exclusion(engine, tied_data):
    queries, gallery = tied_data
    exclude = np.arange(len(queries)) * 7
    exclude[::5] = -1
    q = gallery[np.where(exclude >= 0, exclude, 0)]
    result = exact_topk(q, gallery, 10, exclude=exclude, engine=engine, tile_bytes=4 * 120 * 333)
    assert (result.indices == brute_force(q, gallery, 10, exclude)).all()
    assert not (result.indices == exclude[:, None]).any()


@pytest.mark.parametrize("engine", ENGINES)
def test_k_larger_than_gallery_pads_with_minus_one(engine):
    gallery = l2_normalize(np.eye(3, dtype=np.float32))
    result = exact_topk(gallery, gallery, 5, exclude=np.array([0, 1, 2]), engine=engine)
    assert result.indices.shape == (3, 5)
    assert (result.indices[:, 2:] == -1).all()
    assert (result.indices[:, :2] >= 0).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_memmap_and_block_iterables(engine, tmp_path, tied_data):
    queries, gallery = tied_data
    path = tmp_path / "gallery.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=gallery.shape)
    mm[:] = gallery
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=gallery.shape)
    expected = brute_force(queries, gallery, 8)
    assert (exact_topk(queries, ro, 8, engine=engine, tile_bytes=4 * 120 * 256).indices == expected).all()
    blocks = (gallery[s : s + 999] for s in range(0, len(gallery), 999))
    assert (exact_topk(queries, blocks, 8, engine=engine).indices == expected).all()


def test_normalize_flag_and_dim_check():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((50, 8)).astype(np.float32) * 10
    q = g[:5] * 3
    result = exact_topk(q, g, 1, normalize=True, engine="numpy")
    assert result.indices[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(result.scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="query dim 8 != gallery dim 4"):
        exact_topk(q, g[:, :4], 1, engine="numpy")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("ascending", [True, False])
def test_gallery_sorted_by_score_worst_case_for_sampled_bounds(engine, ascending, tied_data):
    queries, gallery = tied_data
    q = queries[:1]
    order = np.argsort(gallery @ q[0], kind="stable")
    g = gallery[order if ascending else order[::-1]]
    result = exact_topk(q, g, 25, engine=engine)
    assert (result.indices == brute_force(q, g, 25)).all()


@pytest.mark.parametrize("order", ["shuffled", "ascending"])
def test_kept_kth_best_thresholds_later_blocks_unless_too_many_reach_it(order, tied_data, monkeypatch):
    # After the first gallery block the k-th best kept so far is the threshold when few entries
    # reach it (shuffled data); a gallery sorted by ascending score lets every entry through, and
    # the block's own group maxima take over. Both answers are the reference's.
    import services.evaluator.search as search

    queries, gallery = tied_data
    q = queries[:1]
    scores = gallery @ q[0]
    shuffled = np.random.default_rng(3).permutation(len(gallery))
    ranks = np.argsort(scores, kind="stable") if order == "ascending" else shuffled
    g = gallery[ranks]
    thresholds = []
    real = search._threshold
    monkeypatch.setattr(search, "_threshold", lambda *a: thresholds.append(1) or real(*a))
    result = exact_topk(q, g, 5, engine="numpy", tile_bytes=4 * 16 * 500)  # blocks of 500 rows
    assert (result.indices == brute_force(q, g, 5)).all()
    blocks = -(-len(g) // 500)
    assert len(thresholds) == (1 if order == "shuffled" else blocks)


def test_unknown_engine_name_is_an_error():
    from services.evaluator.search import resolve_engine

    with pytest.raises(ValueError, match="unknown search engine 'foo'"):
        exact_topk(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1, engine="foo")
    assert resolve_engine("numpy") == "numpy"


# ---- every engine, every k, every block boundary: one answer ------------------------------------
@pytest.mark.parametrize("k", [1, 2, 15, 99, 100, 101, 1000, 2999, 3000, 3500])
@pytest.mark.parametrize("tile_bytes", [4 * 120 * 700, 4 * 120 * 1024, 1 << 30])
def test_engines_agree_bit_for_bit_at_every_k_and_block_size(k, tile_bytes, tied_data):
    queries, gallery = tied_data
    gallery = gallery.copy()
    # equal scores on both sides of the block boundaries the tile sizes put at 700 and 1024 rows
    for boundary in (700, 1024, 1400, 2048, 2100):
        gallery[boundary - 1 : boundary + 2] = gallery[boundary - 2]
    expected = brute_force(queries, gallery, min(k, len(gallery)))
    results = [exact_topk(queries, gallery, k, engine=e, tile_bytes=tile_bytes, query_block=120) for e in ENGINES]
    for result in results:
        assert (result.indices[:, : expected.shape[1]] == expected).all()
        assert (result.indices[:, expected.shape[1] :] == -1).all()
        np.testing.assert_array_equal(result.indices, results[0].indices)
        np.testing.assert_array_equal(result.scores, results[0].scores)


@pytest.mark.parametrize("layout", ["aligned_with_groups", "all_equal", "two_values"])
def test_threshold_holds_on_adversarial_layouts(layout):
    # The threshold comes from maxima of interleaved column groups (column c in group c mod G,
    # G = 1000 here); put the best rows all in one group, or make every score tie.
    rng = np.random.default_rng(4)
    q = rng.integers(-2, 3, (4, 32)).astype(np.float32)
    gallery = rng.integers(-2, 3, (4000, 32)).astype(np.float32)
    if layout == "aligned_with_groups":
        gallery[::1000] = 3 * q[0]
        gallery[500::1000] = 3 * q[1]
    elif layout == "all_equal":
        gallery[:] = gallery[0]
    else:
        gallery[::2] = gallery[0]
        gallery[1::2] = gallery[1]
    for engine in ENGINES:
        for k in (3, 300, 1999, 2001):
            result = exact_topk(q, gallery, k, engine=engine)
            assert (result.indices == brute_force(q, gallery, k)).all(), (engine, k)


@pytest.mark.parametrize("engine", ENGINES)
def test_float16_memmap_gallery_is_converted_per_block(engine, tmp_path, tied_data):
    queries, gallery = tied_data
    path = tmp_path / "g.npy"
    np.save(path, gallery.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    result = exact_topk(queries, mm, 30, engine=engine, tile_bytes=4 * 120 * 512)
    assert (result.indices == brute_force(queries, gallery, 30)).all()


def test_keys_order_is_the_tie_rule_and_round_trips():
    from services.evaluator import topk_keys

    scores = np.array([0.5, -0.0, 0.0, -1.0, -np.inf, 0.5, 3e-38, -3e-38, 1e30], dtype=np.float32)
    positions = np.arange(len(scores)) * 1000 + 7
    keys = topk_keys.encode(scores, positions)
    order = np.argsort(keys)
    # the tie rule by float comparison (-0.0 == 0.0: a tie, so position 1007 before 2007)
    assert order.tolist() == np.lexsort((positions, -scores.astype(np.float64))).tolist()
    decoded_scores, decoded_positions = topk_keys.decode(keys)
    np.testing.assert_array_equal(decoded_scores, scores)  # -0.0 comes back as 0.0, which is equal
    np.testing.assert_array_equal(decoded_positions, positions)
    empty_scores, empty_positions = topk_keys.decode(np.array([topk_keys.EMPTY_KEY]))
    assert empty_positions.tolist() == [-1] and np.isneginf(empty_scores).all()


# ---- engine calibration ------------------------------------------------------------------------
@pytest.mark.skipif("torch" not in ENGINES, reason="calibration compares numpy with torch")
def test_calibration_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from services.evaluator import search_engine

    monkeypatch.setattr(search_engine, "_memo", {})
    path = tmp_path / "cache" / "search-engine.json"
    calls = []

    def measure():
        calls.append(1)
        return {"numpy": 0.02, "torch": 0.03}

    assert search_engine.calibrated_engine(path, measure) == "numpy"
    assert search_engine.calibrated_engine(path, measure) == "numpy"  # this process
    search_engine._memo.clear()
    assert search_engine.calibrated_engine(path, measure) == "numpy"  # another process: the file
    assert len(calls) == 1
    import json

    entry = json.loads(path.read_text())[search_engine.machine_key()]
    assert entry["engine"] == "numpy" and entry["gemm_seconds"] == {"numpy": 0.02, "torch": 0.03}

    # a new library version or CPU is a new key: measured again, the old entry kept
    monkeypatch.setattr(search_engine, "machine_key", lambda: "numpy=0;torch=0;cpu=other")
    assert search_engine.calibrated_engine(path, lambda: {"numpy": 0.05, "torch": 0.01}) == "torch"
    assert len(json.loads(path.read_text())) == 2

    # a corrupt file is measured over; an unwritable place still answers
    search_engine._memo.clear()
    path.write_text("{not json")
    assert search_engine.calibrated_engine(path, lambda: {"numpy": 0.05, "torch": 0.01}) == "torch"
    search_engine._memo.clear()
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert search_engine.calibrated_engine(blocked / "sub" / "x.json", lambda: {"numpy": 0.01, "torch": 0.05}) == "numpy"


def test_cache_location_follows_xdg():
    from services.evaluator.search_engine import cache_file

    assert cache_file({"XDG_CACHE_HOME": "/c"}).as_posix() == "/c/vsbench/search-engine.json"
    assert cache_file({"HOME": "/h"}).as_posix() == "/h/.cache/vsbench/search-engine.json"


# ---- normalising while searching -----------------------------------------------------------------
# cast_bytes: the whole block cast at once, or in 700-row slices (not a multiple of the 1,024-row
# prepare step) multiplied into their columns of the tile; query_block 40 scans each block once
# (cast slice by slice), 16 three times (cast whole, kept for the next query block).
@pytest.mark.parametrize("cast_bytes", [1 << 30, 4 * 48 * 700])
@pytest.mark.parametrize("query_block", [40, 16])
def test_normalize_on_the_fly_equals_normalising_first_bit_for_bit_and_names_a_bad_row(
    cast_bytes, query_block, monkeypatch
):
    from services.evaluator import search
    from services.evaluator.search import UnusableGalleryRow, exact_topk, l2_normalize

    monkeypatch.setattr(search, "_CAST_BYTES", cast_bytes)
    rng = np.random.default_rng(3)
    gallery = (rng.standard_normal((3000, 48)) * rng.uniform(0.1, 50, (3000, 1))).astype(np.float16)
    queries = rng.standard_normal((40, 48)).astype(np.float32)
    options = dict(engine="numpy", tile_bytes=1 << 20, query_block=query_block)
    before = exact_topk(l2_normalize(queries), l2_normalize(gallery), 25, **options)
    during = exact_topk(queries, gallery, 25, normalize=True, **options)
    np.testing.assert_array_equal(before.indices, during.indices)
    np.testing.assert_array_equal(before.scores, during.scores)
    for row, value in ((2222, np.nan), (2500, 0.0)):
        broken = gallery.copy()
        broken[row] = value if np.isnan(value) else 0
        with pytest.raises(UnusableGalleryRow) as caught:
            exact_topk(queries, broken, 25, normalize=True, **options)
        assert caught.value.position == row
        assert ("zero" in caught.value.why) == (value == 0)
