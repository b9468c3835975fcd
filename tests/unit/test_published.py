"""The report's published Table 3 values as data, and reproduced values compared with them."""

from __future__ import annotations

import pytest

from services.evaluator.published import (
    PublishedDataError,
    PublishedValue,
    compare_with_published,
    load_published,
)


def test_shipped_table_holds_the_public_columns():
    rows = load_published()
    by_key = {(r.vsbench_model, r.dataset, r.metric, r.setting): r.value for r in rows}
    # Spot checks against the report's Table 3 and section 7.
    assert by_key[("siglip2-so400m-384", "sop", "recall@1", "")] == 80.3
    assert by_key[("cohere/embed-v4.0", "products10k", "map@20", "")] == 48.7
    assert by_key[("dinov3-vitl16", "ilias", "map@1000", "")] == 22.4
    assert by_key[("dinov3-vitl16", "ilias", "map@1000", "768 px")] == 36.1
    # 10 models x 6 SOP/Products-10K values, ILIAS for DINOv3 and GEM only, and the 768 px figure.
    assert len(rows) == 10 * 6 + 2 * 4 + 1
    assert {r.dataset for r in rows} == {"sop", "products10k", "ilias"}
    assert all(r.source.startswith("benchmark report") for r in rows)
    assert [r.model for r in rows if not r.vsbench_model] == ["GEM v5.1 (ours)"] * 10


def test_deltas_and_flags():
    published = [
        PublishedValue("DINOv2 Large", "dinov2-large", "sop", "recall@1", 56.3),
        PublishedValue("DINOv2 Large", "dinov2-large", "sop", "map@20", 31.9),
        PublishedValue("DINOv2 Large", "dinov2-large", "sop", "recall@5", 67.7),
        PublishedValue("X", "x", "ilias", "map@1000", 36.1, setting="768 px"),
    ]
    rows = compare_with_published(
        [
            ("dinov2-large", "sop", "recall@1", 56.8),  # +0.5: at the limit, not flagged
            ("DINOv2 Large", "sop", "map@20", 31.3),  # report name accepted; -0.6 flagged
            ("dinov2-large", "sop", "recall@5", None),
            ("dinov2-large", "products10k", "recall@1", 50.0),  # nothing published
            ("x", "ilias", "map@1000", 36.0),  # another setting: not matched by default
        ],
        published,
    )
    assert [(r.published, r.delta, r.flagged) for r in rows] == [
        (56.3, 0.5, False),
        (31.9, -0.6, True),
        (67.7, None, False),
        (None, None, False),
        (None, None, False),
    ]
    assert rows[1].published_model == "DINOv2 Large"
    (other,) = compare_with_published([("x", "ilias", "map@1000", 36.0)], published, setting="768 px")
    assert (other.published, other.delta, other.flagged) == (36.1, -0.1, False)
    (strict,) = compare_with_published([("x", "ilias", "map@1000", 36.0)], published, setting="768 px",
                                       tolerance=0.05)
    assert strict.flagged


def test_default_table_is_used_when_none_given():
    (row,) = compare_with_published([("pe-core-l14-336", "sop", "recall@1", 79.0)])
    assert (row.published, row.delta, row.flagged) == (80.1, -1.1, True)


def test_malformed_files_are_refused_with_the_line(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("# comment\nmodel,vsbench_model,dataset,metric,value\nA,a,sop,recall@1,abc\n")
    with pytest.raises(PublishedDataError, match="p.csv line 3: value 'abc'"):
        load_published(bad)
    bad.write_text("model,vsbench_model,dataset,metric,value\nA,a,sop,recall@1,1\nA,a,sop,recall@1,2\n")
    with pytest.raises(PublishedDataError, match="lines 2 and 3"):
        load_published(bad)
    bad.write_text("model,dataset,metric,value\n")
    with pytest.raises(PublishedDataError, match="missing column"):
        load_published(bad)
    bad.write_text("model,vsbench_model,dataset,metric,value\nA,a,sop,recall@1,140\n")
    with pytest.raises(PublishedDataError, match="not a percentage"):
        load_published(bad)
