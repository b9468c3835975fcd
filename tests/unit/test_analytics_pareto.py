"""Pareto front on hand-made cases: dominance, ties, and objectives some models lack."""

from services.evaluator.analytics.pareto import dominates, objectives_shared, pareto_front


def test_dominance_respects_direction():
    objectives = ["accuracy", "cost_per_1k", "bytes_per_vector"]
    a = {"accuracy": 80, "cost_per_1k": 1.0, "bytes_per_vector": 2048}
    b = {"accuracy": 70, "cost_per_1k": 2.0, "bytes_per_vector": 2048}
    assert dominates(a, b, objectives) and not dominates(b, a, objectives)
    assert not dominates(a, dict(a), objectives)  # equal is not domination


def test_front_marks_optimal_models():
    values = {
        "big": {"accuracy": 90.0, "images_per_s": 10.0, "bytes_per_vector": 4096.0},
        "small": {"accuracy": 70.0, "images_per_s": 100.0, "bytes_per_vector": 1024.0},
        "worse": {"accuracy": 65.0, "images_per_s": 50.0, "bytes_per_vector": 2048.0},  # small beats it
        "twin": {"accuracy": 90.0, "images_per_s": 10.0, "bytes_per_vector": 4096.0},  # ties big: both stay
    }
    points, shared = pareto_front(values)
    assert shared == ["accuracy", "images_per_s", "bytes_per_vector"]
    by = {p.model: p for p in points}
    assert {m for m, p in by.items() if p.optimal} == {"big", "small", "twin"}
    assert by["worse"].dominated_by == ["small"]


def test_objectives_a_model_lacks_are_left_out():
    values = {
        "api": {"accuracy": 80.0, "cost_per_1k": 0.1, "bytes_per_vector": 4096.0},
        "local": {"accuracy": 80.0, "cost_per_1k": None, "bytes_per_vector": 2048.0},
    }
    assert objectives_shared(list(values.values())) == ["accuracy", "bytes_per_vector"]
    points, shared = pareto_front(values)
    assert shared == ["accuracy", "bytes_per_vector"]
    assert [p.model for p in points if p.optimal] == ["local"]
