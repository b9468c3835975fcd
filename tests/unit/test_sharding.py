"""The shard rule that splits an embedding run across the pods of a Kubernetes Indexed Job."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from services.evaluator.datasets.base import ImageRecord, Split
from services.evaluator.sharding import select_shard, shard_of

REPO = Path(__file__).resolve().parents[2]


def _records(n: int) -> list[ImageRecord]:
    # ids shaped like the real loaders' (dataset-relative paths), gallery and query mixed
    return [
        ImageRecord(
            image_id=f"Stanford_Online_Products/bicycle_final/{i // 6:06d}_{i % 6}.JPG",
            location=f"bicycle_final/{i // 6:06d}_{i % 6}.JPG",
            product_id=str(i // 6),
            split=Split.GALLERY if i % 5 else Split.QUERY,
        )
        for i in range(n)
    ]


def test_rule_is_sha1_prefix_modulo_count():
    # SHA-1("abc") = a9993e364706816a... (FIPS 180 test vector): the first 8 bytes, big-endian.
    prefix = int("a9993e364706816a", 16)
    for count in (1, 2, 7, 10, 64, 1000003):
        assert shard_of("abc", count) == prefix % count


def test_ids_are_hashed_as_utf8():
    # "é" is c3 a9 in UTF-8 but e9 in latin-1: the rule must hash the UTF-8 bytes.
    import hashlib

    expected = int.from_bytes(hashlib.sha1("é".encode("utf-8")).digest()[:8], "big") % 97
    assert shard_of("é", 97) == expected
    assert expected != int.from_bytes(hashlib.sha1("é".encode("latin-1")).digest()[:8], "big") % 97


@pytest.mark.parametrize("count", [1, 2, 3, 8, 13])
def test_shards_cover_every_image_exactly_once(count):
    records = _records(6000)
    shards = [select_shard(records, index, count) for index in range(count)]
    seen = Counter(r.image_id for shard in shards for r in shard)
    assert set(seen) == {r.image_id for r in records}
    assert max(seen.values()) == 1
    assert sum(len(s) for s in shards) == len(records)
    # each shard keeps the dataset's order (results and resumed runs stay deterministic)
    position = {r.image_id: i for i, r in enumerate(records)}
    for shard in shards:
        assert [position[r.image_id] for r in shard] == sorted(position[r.image_id] for r in shard)


@pytest.mark.parametrize("count", [4, 16])
def test_shards_are_roughly_balanced(count):
    records = _records(20000)
    sizes = [len(select_shard(records, index, count)) for index in range(count)]
    mean = len(records) / count
    # binomial spread: sd = sqrt(n p (1-p)) ~ 2-3% of the mean here; 10% is > 3.5 sd
    assert all(abs(size - mean) < 0.10 * mean for size in sizes), sizes


def test_rule_does_not_depend_on_the_process_hash_seed():
    code = (
        "from services.evaluator.sharding import shard_of;"
        "print([shard_of(f'img-{i}', 7) for i in range(50)])"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                cwd=REPO, check=True)
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([shard_of(f"img-{i}", 7) for i in range(50)])


def test_count_one_returns_everything():
    records = _records(10)
    assert select_shard(records, 0, 1) == records


def test_custom_key_for_plain_ids():
    ids = [f"id-{i}" for i in range(100)]
    parts = [select_shard(ids, i, 3, key=lambda s: s) for i in range(3)]
    assert sorted(x for p in parts for x in p) == sorted(ids)
    assert all(shard_of(x, 3) == i for i, p in enumerate(parts) for x in p)


@pytest.mark.parametrize(
    "index, count, message",
    [(0, 0, "shard count"), (-1, 4, "shard index"), (4, 4, "shard index"), (0, True, "shard count"),
     (1.0, 4, "shard index"), (0, 2.5, "shard count")],
)
def test_bad_index_or_count_is_a_clear_error(index, count, message):
    with pytest.raises(ValueError, match=message):
        select_shard(_records(3), index, count)


def test_non_string_id_is_rejected():
    with pytest.raises(TypeError, match="image id must be a str"):
        shard_of(123, 4)  # type: ignore[arg-type]
