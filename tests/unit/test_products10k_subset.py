"""The seeded Products-10K subset of the report's size, on a generated test index."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from services.evaluator.datasets.base import DatasetError
from services.evaluator.datasets.products10k import load_products10k
from services.evaluator.datasets.products10k_subset import (
    build_products10k_subset,
    write_products10k_subset,
)


@pytest.fixture()
def p10k(tmp_path):
    """A test index in the public layout: 6,000 classes of 1..6 images (no image files needed)."""
    root = tmp_path / "p10k"
    root.mkdir()
    lines = ["name,class,usage"]
    n = 0
    for product in range(6_000):
        for _ in range(1 + (product * 7) % 6):
            lines.append(f"{n:07d}.jpg,{product},{'Public' if n % 2 else 'Private'}")
            n += 1
    (root / "test_kaggletest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_report_sized_subset_is_deterministic_and_loads(p10k, tmp_path):
    subset = build_products10k_subset(p10k)
    assert len(subset.image_ids) == 11_200
    classes = name_to_class(p10k)
    by_product = Counter(classes[i] for i in subset.image_ids)
    assert len(by_product) == 3_450 and min(by_product.values()) >= 2
    digest = write_products10k_subset(subset, tmp_path / "ids.txt")
    assert digest == hashlib.sha256((tmp_path / "ids.txt").read_bytes()).hexdigest()
    # The same input and seed give the same bytes; another seed another list of the same size.
    again = build_products10k_subset(p10k)
    assert write_products10k_subset(again, tmp_path / "again.txt") == digest
    other = build_products10k_subset(p10k, seed=1)
    assert len(other.image_ids) == 11_200 and other.image_ids != subset.image_ids
    # The loader takes the list (comment lines skipped) and records its hash.
    dataset = load_products10k(p10k, ids=tmp_path / "ids.txt")
    assert dataset.counts()["gallery_images"] == 11_200
    assert dataset.counts()["gallery_products"] == 3_450
    assert dataset.source["subset_sha256"] == digest
    assert (tmp_path / "ids.txt").read_text().startswith("# Products-10K test subset built by vsbench")


def test_rule_on_a_small_case_by_hand(p10k):
    subset = build_products10k_subset(p10k, products=3, images=8, seed=7)
    name_class = name_to_class(p10k)

    def rank(kind, value):
        return hashlib.sha256(f"7:{kind}:{value}".encode()).hexdigest()

    sizes = Counter(name_class.values())
    chosen = sorted((p for p, c in sizes.items() if c >= 2), key=lambda p: rank("product", p))[:3]
    images = {p: sorted((n for n, c in name_class.items() if c == p), key=lambda n: rank("image", n)) for p in chosen}
    expected = {n for p in chosen for n in images[p][:2]}
    rest = sorted((n for p in chosen for n in images[p][2:]), key=lambda n: rank("image", n))
    expected |= set(rest[: 8 - len(expected)])
    assert subset.image_ids == [n for n in name_class if n in expected]  # the index's order
    assert "sha256('7:product:<class>')" in subset.rule


def test_impossible_sizes_are_clear_errors(p10k):
    with pytest.raises(DatasetError, match="only .* products have >= 2 test images"):
        build_products10k_subset(p10k, products=6_000, images=12_000)
    with pytest.raises(DatasetError, match="cannot hold 2 images of each"):
        build_products10k_subset(p10k, products=10, images=15)
    with pytest.raises(DatasetError, match="chosen products hold"):
        build_products10k_subset(p10k, products=2, images=100)


def name_to_class(root):
    rows = (root / "test_kaggletest.csv").read_text().splitlines()[1:]
    return {r.split(",")[0]: r.split(",")[1] for r in rows}
