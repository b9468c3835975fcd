"""Every registered model through the same checks, timm-style.

Each spec loads (real weights where they ship in a pip package, a tiny random checkpoint of the
real class where the real one is large or cannot be downloaded here), describes itself (dim,
preprocessing, a fingerprint that two loads agree on) and embeds real photos (the quickstart's):
vector length == dim, finite, the same vectors twice. A spec whose library is not installed here
is not skipped: its test asserts the documented missing-extra error, and its id says so. A newly
registered spec without an entry in CONTRACT fails until one is added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from services.common.types import ImageItem
from services.embedder.backends.errors import MissingExtraError
from services.embedder.backends.registry import get_spec, list_specs, load_backend
from services.embedder.batching import embed_sync
from tests.contract import tiny_checkpoints

PHOTOS = Path(__file__).resolve().parents[2] / "services" / "evaluator" / "quickstart" / "photos"
PHOTO_COUNT = 3
FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


def tiny_onnx_classifier(directory: Path) -> None:
    """An ImageNet-shaped ONNX model for the generic onnx-imagenet spec: (N, 3, 224, 224) ->
    Conv(3->8, 4x4 stride 4) -> Relu -> GlobalAveragePool -> Flatten -> (N, 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["pixels", "w"], ["conv"], strides=[4, 4]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["features"]),
        ],
        "tiny-imagenet",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))


@dataclass(frozen=True)
class Contract:
    """How one spec is checked. `build` writes tiny weights into a folder (None: the spec's own
    weights, shipped in a pip package or not needed); `weights_file` names the file in that folder
    when the weights are one file; `dim`: the tiny model's width (None: the spec's dim);
    `missing_extra`: the pip extra whose absence this environment must report instead."""

    build: Callable[[Path], object] | None = None
    weights_file: str | None = None
    dim: int | None = None
    missing_extra: str | None = None


TINY = tiny_checkpoints.TINY_WIDTH
CONTRACT: dict[str, Contract] = {
    "efficientnet-lite0": Contract(),
    "efficientnet-lite2": Contract(),
    "open-nsfw": Contract(),
    "histogram": Contract(),
    "onnx-imagenet": Contract(build=tiny_onnx_classifier, weights_file="model.onnx", dim=8),
    "dinov2-large": Contract(build=tiny_checkpoints.build_dinov2, dim=TINY),
    "dinov3-vitl16": Contract(build=tiny_checkpoints.build_dinov3, dim=TINY),
    "siglip2-so400m-384": Contract(build=tiny_checkpoints.build_siglip, dim=TINY),
    "hf-automodel": Contract(build=tiny_checkpoints.build_vit, dim=TINY),
    "hf-automodel-cls": Contract(build=tiny_checkpoints.build_vit, dim=TINY),
    "hf-automodel-mean": Contract(build=tiny_checkpoints.build_vit, dim=TINY),
    "jina-embeddings-v4": Contract(build=tiny_checkpoints.build_jina, dim=tiny_checkpoints.JINA_WIDTH),
    # open_clip and colpali-engine need torchvision, which must not sit next to the embedder's torch.
    "pe-core-l14-336": Contract(missing_extra="openclip"),
    "nomic-embed-multimodal-3b": Contract(missing_extra="nomic"),
}


def _case_id(name: str) -> str:
    contract = CONTRACT.get(name)
    if contract is not None and contract.missing_extra:
        return f"{name}:missing-extra-{contract.missing_extra}"
    return name


SPEC_NAMES = [spec.name for spec in list_specs()]


def test_every_registered_spec_has_a_contract_entry():
    assert sorted(set(SPEC_NAMES) - set(CONTRACT)) == []
    assert sorted(set(CONTRACT) - set(SPEC_NAMES)) == []


@pytest.fixture(scope="module")
def photos() -> list[ImageItem]:
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() == ".jpg")[:PHOTO_COUNT]
    assert len(paths) == PHOTO_COUNT, f"the quickstart's photos are missing from {PHOTOS}"
    return [ImageItem(path.name, path.read_bytes()) for path in paths]


@pytest.fixture(scope="module")
def built_weights(tmp_path_factory) -> Callable[[Callable[[Path], object]], Path]:
    """One tiny checkpoint per builder, shared by the specs that load the same class."""
    cache: dict[Callable, Path] = {}

    def weights_for(build: Callable[[Path], object]) -> Path:
        if build not in cache:
            directory = tmp_path_factory.mktemp(build.__name__)
            build(directory)
            cache[build] = directory
        return cache[build]

    return weights_for


def _embed(backend, photos: list[ImageItem]) -> np.ndarray:
    results = embed_sync(backend, photos)
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
    assert [r.id for r in results] == [p.id for p in photos]
    return np.stack([r.vector for r in results])


@pytest.mark.parametrize("name", SPEC_NAMES, ids=_case_id)
def test_spec_contract(name, photos, built_weights, monkeypatch, tmp_path):
    spec = get_spec(name)
    contract = CONTRACT[name]
    if contract.missing_extra:
        # No network and no hub cache: the extra's absence must be what stops the load.
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
        with pytest.raises(MissingExtraError, match=rf"pip install 'vsbench\[{contract.missing_extra}\]'"):
            load_backend(name)
        return

    weights = None
    if contract.build is not None:
        folder = built_weights(contract.build)
        weights = str(folder / contract.weights_file) if contract.weights_file else str(folder)
    backend = load_backend(name, weights=weights, threads=2)
    try:
        info = backend.info()
        expected_dim = contract.dim or spec.dim
        assert info.name == name and info.dim == expected_dim
        assert info.preprocessing and info.backend and info.dtype == "float32"
        assert info.normalized == spec.normalized
        assert FINGERPRINT.match(info.fingerprint), info.fingerprint

        vectors = _embed(backend, photos)
        assert vectors.shape == (PHOTO_COUNT, info.dim) and vectors.dtype == np.float32
        assert np.isfinite(vectors).all()
        assert np.abs(vectors).max() > 0, "all-zero vectors"
        if info.normalized:
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(_embed(backend, photos), vectors)  # deterministic
    finally:
        backend.close()

    again = load_backend(name, weights=weights, threads=2)
    try:
        assert again.info().fingerprint == info.fingerprint  # stable across loads
    finally:
        again.close()
