"""`--protocol ilias`: the official ILIAS evaluation, checked against the official definition.

The reference below is written here from the official code's definition (knn_search/search.py +
evaluation/src/dataset.py `_compute_AP`, scikit-learn's `average_precision_score`), independently
of the implementation: every score one by one, a full stable sort, AP from the precision-recall
curve over distinct thresholds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from services.evaluator.datasets.base import DatasetError
from services.evaluator.ilias.metric import (
    CLUTTER_GROUPS,
    SCALE_GROUPS,
    group_label,
    official_average_precision,
    official_oracle,
)
from services.evaluator.ilias.official import score_ilias_official
from services.evaluator.ilias.search import as_stored_topk
from services.evaluator.ilias.vsbench import score_ilias_vsbench

# ---- the reference ---------------------------------------------------------------------------


def sklearn_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """scikit-learn's definition: sum over distinct thresholds t (descending) of
    (recall(t) - recall(previous t)) * precision(t)."""
    positives = y_true.sum()
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(y_score.tolist()), reverse=True):
        selected = y_score >= threshold
        tp = float(y_true[selected].sum())
        precision = tp / selected.sum()
        recall = tp / positives
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def reference_ap(ids, scores, gt: set[str], k: int, excluded: set[str] = frozenset()):
    """The official `_compute_AP` on one query's ranked list (ids, scores), returning (AP, oracle)."""
    keep = [i for i, x in enumerate(ids) if x not in excluded]
    ids = [ids[i] for i in keep]
    scores = np.asarray([scores[i] for i in keep], dtype=np.float32)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # stable: ties keep list order
    top = [ids[i] for i in order][:k]
    y_score = np.asarray([scores[i] for i in order][:k])
    truth = set(gt) - set(excluded)
    y_true = np.asarray([x in truth for x in top])
    if not y_true.any():
        return 0.0, 0.0
    ap = sklearn_average_precision(y_true, y_score) * y_true.sum() / min(k, len(truth))
    return ap, y_true.mean() * (k / len(truth))


def reference_search(queries: np.ndarray, gallery: np.ndarray, depth: int):
    """Every score alone (float32 values, exact float64 sum, float32 result), then a full sort."""
    q = queries.astype(np.float32)
    g = gallery.astype(np.float32)
    ranked = []
    for row in q:
        scores = [np.float32(math.fsum(float(a) * float(b) for a, b in zip(row, vec))) for vec in g]
        order = sorted(range(len(g)), key=lambda i: (-float(scores[i]), i))[:depth]
        ranked.append((order, [scores[i] for i in order]))
    return ranked


# ---- the official on-disk format ------------------------------------------------------------


def write_features(path: Path, ids, vectors, dtype) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("index", data=list(ids), dtype=h5py.string_dtype(encoding="utf-8"))
        handle.create_dataset("features", data=np.asarray(vectors, dtype=dtype))


def write_ids(root: Path, positives: dict[str, tuple[float, int]], image_queries, text_queries=()) -> None:
    ids = root / "image_ids"
    ids.mkdir(parents=True, exist_ok=True)
    (ids / "positive_ids.txt").write_text("".join(f"{i},{s},{c}\n" for i, (s, c) in positives.items()))
    (ids / "image_query_ids.txt").write_text("".join(f"{q},https://example.org/{q}\n" for q in image_queries))
    (ids / "text_query_ids.txt").write_text("".join(f"{t}\n" for t in text_queries))


# ---- hand-computed cases (the examples) -----------------------------------------------


def test_tied_positive_and_distractor_form_one_threshold():
    # A distractor identical to the positive: one threshold holding 1 positive of 2 -> P = 1/2.
    for relevant in ([0, 1], [1, 0]):
        assert official_average_precision(np.array([0.9, 0.9]), np.array(relevant), 1, 2) == 0.5
    # Relevance [0, 0, 1, 1], the two positives tied: both get P at the group's end (2/4).
    assert official_average_precision(np.array([0.9, 0.8, 0.7, 0.7]), np.array([0, 0, 1, 1]), 2, 4) == 0.5
    # Untied, it is the GLDv2 AP: (1/3 + 2/4) / 2.
    untied = official_average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 1]), 2, 4)
    assert untied == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_scaling_by_hits_over_min_k_and_listed_positives():
    # One hit at rank 1, 3 positives listed (one missing from the features): 1 / min(2, 3).
    assert official_average_precision(np.array([0.9, 0.5]), np.array([1, 0]), 3, 2) == 0.5
    assert official_average_precision(np.array([0.9, 0.5]), np.array([0, 0]), 3, 2) == 0.0
    assert official_oracle(np.array([1, 0]), 3, 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="descending"):
        official_average_precision(np.array([0.1, 0.5]), np.array([1, 0]), 1, 2)


def test_group_labels_are_the_official_keys():
    assert [group_label(*g) for g in CLUTTER_GROUPS] == ["0-18", "18-33", "33-53", "53-inf"]
    assert group_label(*SCALE_GROUPS[0]) == "0-0.06880213760855043"
    assert group_label(*SCALE_GROUPS[-1]) == "0.2729876723163842-inf"


def tiny_set(root: Path, positive, distractor, dtype) -> None:
    write_features(root / "features_image_queries.hdf5", ["obj_000/query/Q000_00.jpg"], [[1, 0, 0, 0]], dtype)
    write_features(root / "features_positives.hdf5", ["obj_000/pos/P000_00.jpg"], [positive], dtype)
    write_features(root / "features_distractors_00000.hdf5", ["yfcc100m_000000.tar/7"], [distractor], dtype)
    write_ids(root, {"obj_000/pos/P000_00.jpg": (0.1, 20)}, ["obj_000/query/Q000_00.jpg"])


def test_float16_vectors_are_scored_as_stored(tmp_path):
    # fp16 positive of norm 1.000733 vs distractor of norm 0.999512: as stored the positive wins.
    tiny_set(tmp_path, [0.5, 0.50049, 0.50049, 0.50049], [0.49976] * 4, np.float16)
    official, _ = score_ilias_official(tmp_path, recall_k=[1], map_k=[2])
    assert official["metrics"] == {"recall@1": 100.0, "map@2": 100.0}
    assert official["protocol"]["mode"] == "ilias"
    assert official["dataset"]["source"]["stored_dtype"] == "float16"
    # vsbench's protocol re-normalises: the distractor ranks first.
    ours, _ = score_ilias_vsbench(tmp_path, recall_k=[1], map_k=[2], engine="numpy")
    assert ours["metrics"] == {"recall@1": 0.0, "map@2": 50.0}
    assert ours["protocol"]["mode"] == "vsbench"


def test_distractor_identical_to_a_positive(tmp_path):
    tiny_set(tmp_path, [0.6, 0.8, 0, 0], [0.6, 0.8, 0, 0], np.float32)
    official, outcomes = score_ilias_official(tmp_path, recall_k=[1], map_k=[2])
    assert official["metrics"]["map@2"] == 50.0
    assert official["metrics"]["recall@1"] == 100.0  # ranked list: equal scores, gallery order
    (outcome,) = list(outcomes())
    assert outcome.top_ids == ["obj_000/pos/P000_00.jpg", "yfcc100m_000000.tar/7"]
    assert outcome.top_scores[0] == outcome.top_scores[1]
    ours, _ = score_ilias_vsbench(tmp_path, recall_k=[1], map_k=[2], engine="numpy")
    assert ours["metrics"]["map@2"] == 100.0


# ---- the search ------------------------------------------------------------------------------


def test_as_stored_topk_keeps_ties_across_tiles_and_lower_positions_first():
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(12, 6)).astype(np.float16)
    gallery = np.concatenate([base, base, base[:5]])  # every vector at least twice: exact ties
    queries = rng.integers(-2, 3, size=(4, 6)).astype(np.float16)
    # A tiny tile forces many tiles and merges; blocks of uneven sizes as files give them.
    topk = as_stored_topk(queries, [gallery[:7], gallery[7:8], gallery[8:]], 9, tile_bytes=8 * 4 * 10)
    for q, (order, scores) in enumerate(reference_search(queries, gallery, 9)):
        assert topk.indices[q].tolist() == order
        assert topk.scores[q].tolist() == [float(s) for s in scores]
    small = as_stored_topk(queries, [gallery[:3]], 5)
    assert small.indices[:, 3:].tolist() == [[-1, -1]] * 4


# ---- generated data in the official format, against the reference -------------------------------


def generated_ilias(root: Path, dtype, seed: int):
    """Objects with positives (one listed but never extracted), near-duplicate and exact-duplicate
    distractors over two files, quantised vectors so many scores tie exactly."""
    rng = np.random.default_rng(seed)
    dim, n_objects = 8, 5
    centers = rng.standard_normal((n_objects, dim))
    objects = [f"obj_{i:03d}" for i in range(n_objects)]
    queries, positives, listed = {}, {}, {}
    for o, obj in enumerate(objects):
        for j in range(2):
            queries[f"{obj}/query/Q{o:03d}_{j:02d}.jpg"] = centers[o] + 0.6 * rng.standard_normal(dim)
        for j in range(3 + o % 3):
            pid = f"{obj}/pos/P{o:03d}_{j:02d}.jpg"
            listed[pid] = (float(rng.choice([0.03, 0.1, 0.2, 0.5])), int(rng.choice([5, 20, 40, 60])))
            if not (o == 1 and j == 0):  # listed, but missing from the features
                positives[pid] = centers[o] + 0.6 * rng.standard_normal(dim)
    texts = {f"{obj}/query/T{o:03d}.txt": centers[o] + rng.standard_normal(dim) for o, obj in enumerate(objects)}

    def quantise(v):
        v = np.round(np.asarray(v) * 2) / 2
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    distractors = quantise(rng.standard_normal((30, dim)) + np.repeat(centers, 6, axis=0) * 0.8)
    pos_ids = sorted(positives)
    pos_vectors = quantise([positives[i] for i in pos_ids])
    distractors[:4] = pos_vectors[:4]  # identical to positives: ties across files
    distractors[10:14] = distractors[:4]
    write_features(root / "features_image_queries.hdf5", list(queries), quantise(list(queries.values())), dtype)
    write_features(root / "features_text_queries.hdf5", list(texts), quantise(list(texts.values())), dtype)
    write_features(root / "features_positives.hdf5", pos_ids, pos_vectors, dtype)
    for f in range(3):
        chunk = distractors[f * 10 : (f + 1) * 10]
        ids = [f"yfcc100m_{f:06d}.tar/{f}{n:04d}" for n in range(len(chunk))]
        write_features(root / f"features_distractors_{f:05d}.hdf5", ids, chunk, dtype)
    write_ids(root, listed, list(queries), list(texts))
    taxonomy = {"product": {"food": {"cake": objects[:2]}, "toy": {"car": objects[2:3]}},
                "art": {"sculpture": {"statue": objects[3:]}}}
    (root / "taxonomy.json").write_text(json.dumps(taxonomy))
    return listed


def read_back(path: Path):
    with h5py.File(path, "r") as handle:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in handle["index"][:]], handle["features"][:]


def reference_evaluation(root: Path, listed, query_file: str, files: int, k_values, depth):
    """Means (in %) and breakdowns as the official search + evaluation would give them."""
    q_ids, q_vec = read_back(root / query_file)
    g_ids, g_vec = read_back(root / "features_positives.hdf5")
    for f in range(files):
        ids, vec = read_back(root / f"features_distractors_{f:05d}.hdf5")
        g_ids, g_vec = g_ids + ids, np.concatenate([g_vec, vec])
    gt = defaultdict(set)
    for pid in listed:
        gt[pid.split("/")[0]].add(pid)
    taxonomy = {o: f"{c}-{m}" for c, ms in json.loads((root / "taxonomy.json").read_text()).items()
                for m, fs in ms.items() for os_ in fs.values() for o in os_}
    out = {}
    for k in k_values:
        aps, oracles = [], []
        scale, clutter = defaultdict(list), defaultdict(list)
        categories, subcategories = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
        for qid, (order, scores) in zip(q_ids, reference_search(q_vec, g_vec, depth)):
            obj = qid.split("/")[0]
            ranked = [g_ids[i] for i in order]
            ap, oracle = reference_ap(ranked, scores, gt[obj], k)
            aps.append(ap * 100)
            oracles.append(oracle * 100)
            categories[taxonomy[obj].split("-")[0]][obj].append(ap * 100)
            subcategories[taxonomy[obj]][obj].append(ap * 100)
            for groups, field, target in ((SCALE_GROUPS, 0, scale), (CLUTTER_GROUPS, 1, clutter)):
                for low, high in groups:
                    excluded = {p for p in gt[obj] if not low <= listed[p][field] < high}
                    if gt[obj] - excluded:
                        target[f"{low}-{high}"].append(reference_ap(ranked, scores, gt[obj], k, excluded)[0] * 100)
        out[k] = {
            "map": np.mean(aps), "aps": aps, "oracle": np.mean(oracles),
            "scale": {g: np.mean(v) for g, v in scale.items()},
            "clutter": {g: np.mean(v) for g, v in clutter.items()},
            "categories": {c: np.mean([np.mean(x) for x in v.values()]) for c, v in categories.items()},
            "subcategories": {c: np.mean([np.mean(x) for x in v.values()]) for c, v in subcategories.items()},
        }
    return out


def assert_close(mine: dict, reference: dict) -> None:
    assert set(mine) == {str(g) for g in reference}
    for group, value in reference.items():
        assert mine[str(group)] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_generated_official_format_matches_the_reference(tmp_path, dtype):
    listed = generated_ilias(tmp_path, dtype, seed=11)
    k_values = (1, 3, 10)
    summary, outcomes = score_ilias_official(
        tmp_path, recall_k=[1], map_k=k_values, text_queries=True, total_distractors=2
    )
    for query_set, query_file in (("image", "features_image_queries.hdf5"), ("text", "features_text_queries.hdf5")):
        reference = reference_evaluation(tmp_path, listed, query_file, 2, k_values, depth=10)
        metrics = summary["metrics"] if query_set == "image" else summary["text_queries"]["metrics"]
        for k in k_values:
            assert metrics[f"map@{k}"] == pytest.approx(reference[k]["map"], abs=1e-6)
            parts = summary["breakdowns"][query_set][f"map@{k}"]
            assert parts["oracle"] == pytest.approx(reference[k]["oracle"], abs=1e-6)
            for group in ("scale", "clutter", "categories", "subcategories"):
                assert_close(parts[group], reference[k][group])
    image_reference = reference_evaluation(tmp_path, listed, "features_image_queries.hdf5", 2, (10,), 10)
    per_query = [o.ap["10"] * 100 for o in outcomes() if "/query/Q" in o.query_id]
    assert per_query == pytest.approx(image_reference[10]["aps"], abs=1e-6)
    # Ties are really exercised: some query's ranked list holds equal scores.
    assert any(len(set(o.top_scores)) < len(o.top_scores) for o in outcomes())
    assert summary["gallery"]["distractors"] == 20
    assert summary["gallery"]["listed_positives_missing"] == 1
    assert summary["dataset"]["source"]["total_distractors"] == "2"
    assert summary["queries"] == {"total": 10, "scored": 10, "unanswerable": 0}


def test_all_distractor_files_by_default_and_a_selected_list(tmp_path):
    listed = generated_ilias(tmp_path, np.float16, seed=5)
    summary, _ = score_ilias_official(tmp_path, recall_k=[1], map_k=[5])
    reference = reference_evaluation(tmp_path, listed, "features_image_queries.hdf5", 3, (5,), 5)
    assert summary["metrics"]["map@5"] == pytest.approx(reference[5]["map"], abs=1e-6)
    assert summary["gallery"]["distractors"] == 30
    keys = tmp_path / "mini.txt"
    keys.write_text("00001\n10003\n")
    selected, _ = score_ilias_official(tmp_path, recall_k=[1], map_k=[5], selected_ids=keys)
    assert selected["gallery"]["distractors"] == 2
    none, _ = score_ilias_official(tmp_path, recall_k=[1], map_k=[5], total_distractors=0)
    assert none["gallery"]["distractors"] == 0 and none["protocol"]["gallery_type"] == "closed"


def test_ground_truth_problems_are_clear_errors(tmp_path):
    tiny_set(tmp_path, [1, 0, 0, 0], [0, 1, 0, 0], np.float32)
    (tmp_path / "image_ids" / "positive_ids.txt").write_text("obj_000/pos/P000_00.jpg,0.1\n")
    with pytest.raises(DatasetError, match="positive_ids.txt line 1: expected"):
        score_ilias_official(tmp_path, map_k=[2])
    (tmp_path / "image_ids" / "positive_ids.txt").write_text("other_001/pos/P001_00.jpg,0.1,3\n")
    with pytest.raises(DatasetError, match="have no positive in .*same ILIAS release"):
        score_ilias_official(tmp_path, map_k=[2])
    (tmp_path / "image_ids" / "positive_ids.txt").unlink()
    elsewhere = tmp_path / "features"
    elsewhere.mkdir()
    for name in ("features_image_queries.hdf5", "features_positives.hdf5"):
        (tmp_path / name).rename(elsewhere / name)
    with pytest.raises(DatasetError, match="needs image_ids/positive_ids.txt"):
        score_ilias_official(elsewhere, map_k=[2])
    with pytest.raises(DatasetError, match="text_queries.hdf5 not found"):
        write_ids(tmp_path, {"obj_000/pos/P000_00.jpg": (0.1, 20)}, ["obj_000/query/Q000_00.jpg"])
        score_ilias_official(elsewhere, map_k=[2], text_queries=True)
