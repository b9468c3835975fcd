"""The protocol end to end on tiny hand-made embeddings: self-match, distractors, unanswerable.
Scored the way `vsbench score` scores: NPZ files through the one loop (Evaluation.run)."""

from dataclasses import dataclass

import numpy as np
import pytest

from services.common.errors import VsbenchError
from services.evaluator.pipeline import Evaluation, EvaluationOptions
from services.evaluator.precomputed import InputError, open_precomputed_inputs


@dataclass
class EmbeddingSet:
    name: str
    vectors: np.ndarray
    ids: list[str]
    labels: list[str]


@pytest.fixture()
def score_sets(tmp_path):
    counter = iter(range(1000))

    def score(gallery, queries, *, recall_k=(1, 5), map_k=(20,), unanswerable_as_miss=False):
        n = next(counter)
        paths = {}
        for role, emb in (("gallery", gallery), ("queries", queries)):
            if emb is None:
                continue
            paths[role] = tmp_path / f"{role}{n}.npz"
            np.savez(paths[role], embeddings=np.asarray(emb.vectors), ids=np.array(emb.ids), labels=np.array(emb.labels))
        inputs = open_precomputed_inputs(paths["gallery"], paths.get("queries"))
        options = EvaluationOptions(recall_k=recall_k, map_k=map_k, unanswerable_as_miss=unanswerable_as_miss,
                                    show_progress=False)
        try:
            result = Evaluation(inputs.store, tmp_path, options).run(
                inputs.dataset, inputs.client, embed=False, out=tmp_path / f"run{n}.json"
            ).result
        finally:
            inputs.store.close()
        return result.data, lambda: list(result.queries())

    return score


def unit(*angles_deg):
    a = np.deg2rad(np.array(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_intra_removes_self_match_but_keeps_same_product_images(score_sets):
    # A at 0 and 10 degrees, B at 90 and 100, C alone at 200 (unanswerable in intra).
    gallery = EmbeddingSet("gallery", unit(0, 10, 90, 100, 200), ["a1", "a2", "b1", "b2", "c1"], ["A", "A", "B", "B", "C"])
    summary, outcomes = score_sets(gallery, None, recall_k=(1,), map_k=(2,))
    assert summary["queries"] == {"total": 5, "scored": 4, "unanswerable": 1, "failed_to_embed": 0, "missing_files": 0}
    assert summary["metrics"]["recall@1"] == 100.0
    assert summary["metrics"]["map@2"] == 100.0
    rows = {o.query_id: o for o in outcomes()}
    assert "a1" not in rows["a1"].top_ids  # the query itself is never ranked
    assert rows["a1"].top_ids[0] == "a2" and rows["a1"].n_relevant == 1
    assert rows["c1"].answerable is False


def test_unanswerable_as_miss_lowers_the_mean(score_sets):
    gallery = EmbeddingSet("gallery", unit(0, 10, 90, 100, 200), ["a1", "a2", "b1", "b2", "c1"], ["A", "A", "B", "B", "C"])
    summary, _ = score_sets(gallery, None, recall_k=(1,), map_k=(2,), unanswerable_as_miss=True)
    assert summary["metrics"]["recall@1"] == 80.0
    assert summary["queries"]["scored"] == 5


def test_inter_with_distractors_never_relevant(score_sets):
    # query A at 5 deg; gallery: distractor at 4 deg (closest), A at 20, A at 40, B at 180
    gallery = EmbeddingSet("gallery", unit(4, 20, 40, 180), ["d", "a1", "a2", "b1"], ["", "A", "A", "B"])
    queries = EmbeddingSet("queries", unit(5), ["q"], ["A"])
    summary, outcomes = score_sets(gallery, queries, recall_k=(1, 5), map_k=(20,))
    # ranks: d (miss), a1 (hit), a2 (hit), b1 -> R@1 0, R@5 1, AP = (1/2 + 2/3) / min(20, 2)
    assert summary["metrics"]["recall@1"] == 0.0
    assert summary["metrics"]["recall@5"] == 100.0
    assert summary["metrics"]["map@20"] == pytest.approx(round(100 * (1 / 2 + 2 / 3) / 2, 4))
    assert summary["protocol"]["gallery_type"] == "open"
    (row,) = list(outcomes())
    assert row.first_relevant_rank == 2
    assert row.top_relevant == [False, True, True, False]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: EmbeddingSet("gallery", g.vectors[:2], g.ids, g.labels), "mismatched lengths"),
        (lambda g: EmbeddingSet("gallery", np.where(np.arange(3)[:, None] == 1, np.nan, g.vectors), g.ids, g.labels),
         "row 1 .* NaN or inf"),
        (lambda g: EmbeddingSet("gallery", np.where(np.arange(3)[:, None] == 2, 0.0, g.vectors), g.ids, g.labels),
         "row 2 .* zero vector"),
        (lambda g: EmbeddingSet("gallery", g.vectors, ["x", "y", "x"], g.labels), "duplicate id 'x' at rows 0 and 2"),
    ],
)
def test_bad_gallery_is_named_with_its_row(score_sets, mutate, message):
    # Ids and shapes are refused when the files are opened (InputError); vectors as the search
    # streams them (UnusableStoredVector): both one line under the error root.
    good = EmbeddingSet("gallery", unit(0, 10, 20), ["x", "y", "z"], ["A", "A", "B"])
    with pytest.raises(VsbenchError, match=message):
        score_sets(mutate(good), None)


def test_query_with_empty_label_and_dim_mismatch(score_sets):
    gallery = EmbeddingSet("gallery", unit(0, 10), ["x", "y"], ["A", "A"])
    with pytest.raises(InputError, match="row 1 .* query with an empty label"):
        score_sets(gallery, EmbeddingSet("queries", unit(0, 5), ["q1", "q2"], ["A", ""]))
    with pytest.raises(InputError, match="dimension mismatch: queries have 3 dims, gallery has 2"):
        score_sets(gallery, EmbeddingSet("queries", np.ones((1, 3), np.float32), ["q"], ["A"]))
