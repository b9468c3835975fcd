"""Backend kinds' typed options (refused when unknown or ill-typed, a model definable from kind +
options alone) and the fingerprints backends put on their ModelInfo."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from services.common.types import ImageItem
from services.embedder.backends import registry
from services.embedder.backends.errors import BackendOptionsError
from services.embedder.backends.registry import (
    RegisteredModel,
    build_backend,
    get_spec,
    list_kinds,
    list_specs,
    load_backend,
    resolve_options,
)
from tests.unit.test_embedder_models import (
    TINY_PRE,
    embed_all,
    encoded,
    numpy_features,
    scene,
    tiny_onnx,
    variant,
)


@pytest.fixture(scope="module")
def scene_items() -> list[ImageItem]:
    return [
        ImageItem(f"s{seed}{suffix}", encoded(image))
        for seed in (1, 2)
        for suffix, image in (("", scene(seed)), ("-again", variant(scene(seed))))
    ]


@pytest.fixture(scope="module")
def lite0():
    return load_backend("efficientnet-lite0")


# --- typed options per kind --------------------------------------------------------------------


def test_histogram_bins_option_really_changes_the_model(scene_items):
    four = load_backend("histogram", bins=4)
    eight = load_backend("histogram")
    assert four.info().dim == 64 and eight.info().dim == 512
    vectors = embed_all(four, scene_items)
    assert all(v.shape == (64,) for v in vectors.values())
    assert four.info().fingerprint != eight.info().fingerprint


def test_misspelt_option_is_refused_with_the_valid_ones():
    with pytest.raises(BackendOptionsError) as caught:
        load_backend("efficientnet-lite0", cpu_micro_batchh=2)
    message = str(caught.value)
    assert "unknown option 'cpu_micro_batchh'" in message
    assert (
        "Valid options for kind 'efficientnet-lite': "
        "cpu_micro_batch, fuse_batchnorm, preprocessing, variant, weights" in message
    )
    # A weights override is an option too: a kind without weights refuses it.
    with pytest.raises(BackendOptionsError, match="unknown option 'weights'.*bins, max_side, sqrt"):
        load_backend("histogram", weights="x.bin")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"bins": "many"}, r"option 'bins': Input should be a valid integer.*\(got 'many'\)"),
        ({"bins": 100}, r"option 'bins': Input should be less than or equal to 64"),
        ({"sqrt": "sometimes"}, r"option 'sqrt': Input should be a valid boolean"),
    ],
)
def test_ill_typed_options_are_refused(overrides, expected):
    with pytest.raises(BackendOptionsError, match=expected):
        load_backend("histogram", **overrides)


def test_ill_typed_nested_preprocessing_is_refused():
    with pytest.raises(BackendOptionsError, match=r"unknown option 'preprocessing.crop_sise'"):
        resolve_options("efficientnet-lite0", preprocessing={"crop_sise": 224})
    with pytest.raises(
        BackendOptionsError, match=r"option 'cpu_micro_batch': Input should be greater than or equal to 1"
    ):
        resolve_options("efficientnet-lite0", cpu_micro_batch=0)


def test_registering_a_model_with_a_misspelt_option_is_refused():
    with pytest.raises(BackendOptionsError, match="model 'histogram-typo': unknown option 'binz'"):
        registry.register(RegisteredModel(name="histogram-typo", kind="histogram", options={"binz": 4}))
    assert "histogram-typo" not in {spec.name for spec in list_specs()}


def test_an_onnx_model_defined_by_kind_and_options(tmp_path):
    """A definition no registry knows (a run config's model): a file + its preprocessing as JSON data,
    validated like a registered model and giving the same vectors and fingerprint as one."""
    weights = tiny_onnx(tmp_path / "tiny.onnx")
    definition = {
        "weights": str(tmp_path / "tiny.onnx"),
        "preprocessing": {
            "crop_size": 8,
            "resize": "squash",
            "rescale": 1 / 255,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
        "output": "features",
        "pooling": "gap",
    }
    backend = build_backend("onnx", definition, name="mine", threads=1)
    info = backend.info()
    assert (info.name, info.dim) == ("mine", 4) and info.fingerprint.startswith("sha256:")
    image = scene(41, (40, 30))
    np.testing.assert_allclose(
        backend.forward([backend.preprocess(image)])[0],
        numpy_features(image, weights["conv_w"]),
        rtol=1e-4,
        atol=1e-5,
    )
    registered = registry.register(
        RegisteredModel(
            name="tiny-registered",
            kind="onnx",
            weights=str(tmp_path / "tiny.onnx"),
            preprocessing=TINY_PRE,
            pooling="gap",
            options={"output": "features"},
        ),
        replace=True,
    )
    assert load_backend(registered.name).info().fingerprint == info.fingerprint  # same model, same hash
    # A changed preprocessing value is a different model.
    shifted = build_backend(
        "onnx", {**definition, "preprocessing": {**definition["preprocessing"], "mean": [0.4] * 3}}
    )
    assert shifted.info().fingerprint != info.fingerprint
    with pytest.raises(
        BackendOptionsError, match=r"unknown option 'preprocessing.size'.*Valid options for kind 'onnx'"
    ):
        build_backend("onnx", {**definition, "preprocessing": {"size": 8}})
    # A run config checks a definition before loading anything.
    assert registry.validate_definition("onnx", definition, name="mine").output == "features"
    with pytest.raises(BackendOptionsError, match=r"option 'preprocessing' is required"):
        build_backend("onnx", {"weights": definition["weights"]})


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(
        registry.UnknownKindError, match="unknown backend kind 'tensorflow'; known: .*histogram.*onnx"
    ):
        build_backend("tensorflow", {})


def test_every_kind_declares_strict_options():
    kinds = list_kinds()
    assert {"efficientnet-lite", "onnx", "histogram", "hf", "jina", "nomic", "open_clip"} <= {
        k.name for k in kinds
    }
    for kind in kinds:
        assert kind.options.model_config["extra"] == "forbid", kind.name
        described = kind.to_dict()
        json.dumps(described, default=str)  # listable as JSON (docs, vsbench models, --list-kinds)
        assert described["options"] and all(option["description"] for option in described["options"]), (
            kind.name
        )
    histogram = next(k for k in kinds if k.name == "histogram").to_dict()["options"]
    assert {
        "name": "bins",
        "type": "int",
        "default": 8,
        "description": histogram[0]["description"],
    } == histogram[0]


# --- fingerprints ------------------------------------------------------------------------------


def test_fingerprint_tells_lite0_from_lite2_with_the_same_dim(lite0):
    lite2 = load_backend("efficientnet-lite2")
    assert lite0.info().dim == lite2.info().dim == 1280
    assert lite0.info().fingerprint.startswith("sha256:") and lite2.info().fingerprint.startswith("sha256:")
    assert lite0.info().fingerprint != lite2.info().fingerprint


def test_fingerprint_is_stable_across_loads_and_follows_what_changes_vectors(lite0):
    again = load_backend("efficientnet-lite0", max_batch=3, cpu_micro_batch=2)  # runtime knobs only
    assert again.info().fingerprint == lite0.info().fingerprint
    unfolded = load_backend("efficientnet-lite0", fuse_batchnorm=False)
    assert unfolded.info().fingerprint != lite0.info().fingerprint
    spec = get_spec("efficientnet-lite0")
    other_mean = dataclasses.replace(spec.preprocessing, mean=(128.0, 128.0, 128.0))
    assert (
        load_backend("efficientnet-lite0", preprocessing=other_mean).info().fingerprint
        != lite0.info().fingerprint
    )


def test_fingerprint_covers_the_library_versions(monkeypatch):
    from services.embedder.backends import provenance

    before = load_backend("histogram").info().fingerprint
    real = provenance.library_versions
    monkeypatch.setattr(
        provenance, "library_versions", lambda *names: {**real(*names), "pillow": "0.0-other"}
    )
    assert load_backend("histogram").info().fingerprint != before
