import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa

from services.evaluator import arrow_kernels as ak
from services.evaluator.embedding_files import write_split

REPO = Path(__file__).resolve().parents[2]


def test_kernels_on_hand_computed_cases():
    ids = pa.array(["b", "", "a", "b", "c"])
    assert ak.take(ids, np.array([4, 0, 0])).to_pylist() == ["c", "b", "b"]
    assert ak.take(ids, pa.array([2], pa.int64())).to_pylist() == ["a"]
    assert ak.take(ids, np.array([], dtype=np.int64)).to_pylist() == []
    assert ak.equal(ids, "b").to_pylist() == [True, False, False, True, False]
    assert ak.equal(ids.slice(0, 4), ids.slice(1)).to_pylist() == [False, False, False, False]
    assert ak.any_true(pa.array([False, True])) and not ak.any_true(pa.array([False, False]))
    assert ak.all_true(pa.array([True, True])) and not ak.all_true(pa.array([True, False]))
    assert ak.count_true(pa.array([True, False, True])) == 2
    assert ak.count_true(pa.array([], pa.bool_())) == 0
    assert ak.is_in(ids, pa.array(["a", "c"])).to_pylist() == [False, False, True, False, True]
    assert ak.filter_rows(ids, np.array([True, False, False, True, True])).to_pylist() == ["b", "b", "c"]
    encoded = ak.dictionary_encode(ids)
    assert encoded.dictionary.to_pylist() == ["b", "", "a", "c"]  # order of first appearance
    assert encoded.indices.to_pylist() == [0, 1, 2, 0, 3]
    assert ak.index_of(ids, "a") == 2 and ak.index_of(ids, "zz") == -1
    # stable: the two "b"s keep their row order (0 before 3)
    assert ak.stable_sort_indices(ids).to_pylist() == [1, 2, 0, 3, 4]


def test_positions_share_the_numpy_buffer_when_already_int64():
    rows = np.array([5, 1, 3], dtype=np.int64)
    array = ak.positions(rows)
    assert array.type == pa.int64() and array.to_pylist() == [5, 1, 3]
    assert array.buffers()[1].address == rows.ctypes.data
    assert ak.positions(np.array([2, 0], dtype=np.int32)).to_pylist() == [2, 0]


def test_vsbench_score_never_imports_pyarrow_compute(tmp_path):
    # Its import builds ~290 kernel wrappers: ~20 ms of every `vsbench score` (arrow_kernels.py).
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    write_split(tmp_path / "gallery", vectors[:8], [f"g{i}" for i in range(8)], ["p0", "p1", "p2", ""] * 2)
    write_split(tmp_path / "queries", vectors[8:], [f"q{i}" for i in range(4)], ["p0", "p1", "p2", "p0"])
    script = textwrap.dedent(f"""
        import sys
        from services.evaluator.cli import main
        sys.argv = ["vsbench", "score", "--gallery", {str(tmp_path / "gallery")!r},
                    "--queries", {str(tmp_path / "queries")!r}, "--out", {str(tmp_path / "run.json")!r}]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        loaded = sorted(m for m in ("pyarrow.compute", "numpy.ma") if m in sys.modules)
        assert not loaded, loaded
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run.json").is_file()
