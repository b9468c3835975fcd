"""A seeded, deterministic Products-10K test subset the size of the report's (11,200 images, 3,450 products).

The report evaluates 11,200 test images of 3,450 products (intra) but does not publish which.
This builds a list of that size from ``test_kaggletest.csv`` by a fixed rule, so anyone with the
test split gets the same list (its sha256 goes into the results when it is loaded with ``ids=``):

1. Eligible products: classes with at least ``min_images`` (2) test images, so every query has
   another image of its product in the gallery.
2. Products: eligible classes ordered by sha256("<seed>:product:<class>") (hex, ascending); the
   first ``products`` (3,450) are chosen.
3. Images: within each chosen product, images ordered by sha256("<seed>:image:<name>"); the first
   ``min_images`` of every product are taken; the remaining images of all chosen products, ordered
   by the same image hash, fill the list up to ``images`` (11,200).
4. The list is written in the index's order, one file name a line, after '#' comment lines that
   state the rule, seed and counts.

Hash orders, not a random generator, make the result independent of library versions.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .base import DatasetError
from .products10k import load_products10k

REPORT_PRODUCTS = 3_450
REPORT_IMAGES = 11_200
SUBSET_RULE = (
    "products with >= {min_images} test images, ordered by sha256('{seed}:product:<class>'), first {products}; "
    "per product the first {min_images} images by sha256('{seed}:image:<name>'), then the remaining images "
    "of those products by the same hash up to {images}"
)


@dataclass(frozen=True)
class Products10kSubset:
    image_ids: list[str]  # in the test index's order
    products: int
    seed: int
    rule: str

    def text(self) -> str:
        """The id-list file's contents (comments first; read_id_list skips them)."""
        header = [
            "# Products-10K test subset built by vsbench (services/evaluator/datasets/products10k_subset.py)",
            f"# rule: {self.rule}",
            f"# seed: {self.seed}; images: {len(self.image_ids)}; products: {self.products}",
        ]
        return "\n".join(header + self.image_ids) + "\n"


def _rank(seed: int, kind: str, value: str) -> str:
    return hashlib.sha256(f"{seed}:{kind}:{value}".encode("utf-8")).hexdigest()


def build_products10k_subset(
    root: str | os.PathLike,
    *,
    products: int = REPORT_PRODUCTS,
    images: int = REPORT_IMAGES,
    seed: int = 0,
    min_images: int = 2,
    usage: str | None = None,
) -> Products10kSubset:
    """The subset of the Products-10K test split under `root` chosen by the module's rule."""
    if products < 1 or min_images < 1:
        raise DatasetError(f"products and min_images must be >= 1, got {products} and {min_images}")
    if images < products * min_images:
        raise DatasetError(f"{images} images cannot hold {min_images} images of each of {products} products")
    records = load_products10k(root, usage=usage).records
    by_product: dict[str, list[str]] = defaultdict(list)
    for record in records:
        by_product[record.product_id].append(record.image_id)
    eligible = [p for p, names in by_product.items() if len(names) >= min_images]
    if len(eligible) < products:
        raise DatasetError(
            f"only {len(eligible)} products have >= {min_images} test images; {products} were asked for"
        )
    chosen = sorted(eligible, key=lambda p: _rank(seed, "product", p))[:products]
    kept: set[str] = set()
    rest: list[str] = []
    for product in chosen:
        ordered = sorted(by_product[product], key=lambda n: _rank(seed, "image", n))
        kept.update(ordered[:min_images])
        rest.extend(ordered[min_images:])
    room = images - len(kept)
    if room > len(rest):
        raise DatasetError(
            f"the {products} chosen products hold {len(kept) + len(rest)} images; {images} were asked for"
        )
    kept.update(sorted(rest, key=lambda n: _rank(seed, "image", n))[:room])
    rule = SUBSET_RULE.format(min_images=min_images, seed=seed, products=products, images=images)
    return Products10kSubset(
        image_ids=[r.image_id for r in records if r.image_id in kept], products=products, seed=seed, rule=rule
    )


def write_products10k_subset(subset: Products10kSubset, path: str | os.PathLike) -> str:
    """Writes the id list; returns its sha256 (what ``load_products10k(ids=...)`` records)."""
    data = subset.text().encode("utf-8")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
