"""exact_topk against a brute-force stable argsort, with ties, exclusions, blocks and memmaps."""

import importlib.util

import numpy as np
import pytest

from services.evaluator.search import exact_topk, l2_normalize

ENGINES = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])


def brute_force(queries, gallery, k, exclude=None):
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if exclude is not None:
        for row, col in enumerate(exclude):
            if col >= 0:
                scores[row, col] = -np.inf
    order = np.array([np.lexsort((np.arange(gallery.shape[0]), -scores[r]))[:k] for r in range(len(queries))])
    return order


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


def test_unknown_engine_name_is_an_error():
    from services.evaluator.search import resolve_engine

    with pytest.raises(ValueError, match="unknown search engine 'foo'"):
        exact_topk(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1, engine="foo")
    assert resolve_engine("numpy") == "numpy"
