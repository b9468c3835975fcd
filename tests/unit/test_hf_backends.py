"""The open-model backends, each checked against its own library on tiny randomly initialised models.

Every transformers model here is built from a config of the real checkpoint's class (a few KB of
weights), saved with the real checkpoint's image-processor settings, loaded back through the
backend, and compared with the library's own call. open_clip and colpali-engine need torchvision,
which this environment must not have: only their missing-library errors are checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageDraw

from services.embedder.backends import hf_specs, jina, nomic
from services.embedder.backends.errors import BackendOptionsError
from services.embedder.backends.hf import MissingExtraError, WeightsNotFoundError
from services.embedder.backends.registry import build_backend, get_kind, get_spec, load_backend
from tests.contract import tiny_checkpoints
from tests.contract.tiny_checkpoints import IMAGENET_MEAN, IMAGENET_STD, save_processor_config


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like test image: lit gradient background, a few solid objects, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.6 + 0.4 * np.cos(xx / width * 2.0 + rng.uniform(0, 3)) * np.sin(yy / height * 1.5 + 0.5)
    base = np.stack([light * c for c in rng.uniform(90, 220, size=3)], axis=-1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.uniform(0, 0.7) * width, rng.uniform(0, 0.7) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.3) * width, y0 + rng.uniform(0.1, 0.3) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    # landscape, portrait, smaller than every model input (upscaling), wide panorama
    return [_photo(320, 240, 1), _photo(180, 260, 2), _photo(97, 71, 3), _photo(640, 240, 4)]


# ------------------------------------------------------------------ tiny checkpoints, real classes


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("dinov2")
    return directory, tiny_checkpoints.build_dinov2(directory)


@pytest.fixture(scope="module")
def dinov3_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("dinov3")
    return directory, tiny_checkpoints.build_dinov3(directory)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("siglip2")
    return directory, tiny_checkpoints.build_siglip(directory)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("vit")
    return directory, tiny_checkpoints.build_vit(directory)


def _reference_pixels(directory: Path, images: list[Image.Image]) -> dict:
    processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
    return processor(images=images, return_tensors="pt")


def _backend_vectors(backend, images: list[Image.Image]) -> np.ndarray:
    return backend.forward([backend.preprocess(image) for image in images])


# -------------------------------------------------------------------------------------- DINOv2


def test_dinov2_matches_pooler_output_and_own_processor(dinov2_dir, photos):
    directory, model = dinov2_dir
    backend = load_backend("dinov2-large", weights=directory)

    pixels = _reference_pixels(directory, photos)
    for image, expected in zip(photos, pixels["pixel_values"], strict=True):
        np.testing.assert_array_equal(backend.preprocess(image), expected.numpy())
    with torch.no_grad():
        expected_vectors = model(**pixels).pooler_output.numpy()
    vectors = _backend_vectors(backend, photos)
    assert vectors.dtype == np.float32 and vectors.shape == (len(photos), 32)
    np.testing.assert_allclose(vectors, expected_vectors, rtol=1e-5, atol=1e-5)
    # pooler_output is the CLS token of the layer-normed sequence
    with torch.no_grad():
        encoded = model.encoder(model.embeddings(pixels["pixel_values"])).last_hidden_state
        np.testing.assert_allclose(vectors, model.layernorm(encoded)[:, 0].numpy(), rtol=1e-5, atol=1e-5)

    info = backend.info()
    assert info.dim == 32 and not info.normalized and info.backend == "transformers"
    assert info.preprocessing == (
        "BitImageProcessorPil: resize shortest edge 256 bicubic; center crop 224x224; rescale 1/255; "
        "normalize mean=[0.485, 0.456, 0.406] std=[0.229, 0.224, 0.225]"
    )
    assert info.details["model_id"] == "facebook/dinov2-large"
    assert info.details["model_class"] == "Dinov2Model"
    assert info.revision.startswith("dir-sha256:")
    assert backend.forward([]).shape == (0, 32)


def test_preprocess_is_thread_safe(dinov2_dir, photos):
    directory, _ = dinov2_dir
    backend = load_backend("dinov2-large", weights=directory)
    serial = [backend.preprocess(image) for image in photos]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(backend.preprocess, photos * 6))
    for index, array in enumerate(parallel):
        np.testing.assert_array_equal(array, serial[index % len(photos)])


# -------------------------------------------------------------------------------------- DINOv3


def test_dinov3_matches_pooler_output(dinov3_dir, photos):
    directory, model = dinov3_dir
    backend = load_backend("dinov3-vitl16", weights=directory)
    inputs = [backend.preprocess(image) for image in photos]
    with torch.no_grad():
        output = model(pixel_values=torch.from_numpy(np.stack(inputs)))
    vectors = backend.forward(inputs)
    np.testing.assert_allclose(vectors, output.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vectors, output.last_hidden_state[:, 0].numpy(), atol=1e-6)  # normed CLS
    info = backend.info()
    assert info.details["model_class"] == "DINOv3ViTModel"
    assert "224x224" in info.preprocessing and "bilinear antialias" in info.preprocessing


def test_dinov3_at_an_ilias_test_resolution_keeps_each_photos_aspect(dinov3_dir, photos):
    """ILIAS's own feature extraction resizes the longer side to the test resolution (224 or 768
    for DINOv3) without a crop: an `hf` model with that preprocessing as data embeds each photo
    at its own shape, as the model alone would, and says so in Info and the fingerprint."""
    from services.embedder.backends.registry import build_backend
    from services.embedder.batching import forward_checked

    directory, model = dinov3_dir
    ilias = build_backend("hf", {"weights": str(directory), "preprocessing": {"resize": "longer", "resize_to": 64}},
                          name="dinov3-ilias-64")
    default = build_backend("hf", {"weights": str(directory)}, name="dinov3-default")
    info = ilias.info()
    assert "resize longer edge to 64" in info.preprocessing and "no crop" in info.preprocessing
    assert info.fingerprint != default.info().fingerprint
    inputs = [ilias.preprocess(image) for image in photos]
    assert {x.shape[1:] for x in inputs} == {(48, 64), (64, 44), (46, 64), (24, 64)}
    # the checkpoint's own mean/std (DINOv3 uses ImageNet's) are kept
    first = np.asarray(photos[0].resize((64, 48), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = ((first - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    np.testing.assert_allclose(inputs[0], expected, atol=1e-5)
    embeddings = forward_checked(ilias, [str(i) for i in range(len(inputs))], inputs, info.dim)
    for x, embedding in zip(inputs, embeddings):
        with torch.no_grad():
            alone = model(pixel_values=torch.from_numpy(x[None])).pooler_output[0].numpy()
        np.testing.assert_allclose(embedding.vector, alone, rtol=1e-4, atol=1e-5)


def test_dinov3_preprocessing_matches_pil_uint8_resize(dinov3_dir, photos):
    """DINOv3's official transform resizes the uint8 image, then scales (tests/models checks the
    port against torchvision's own transform exactly); here, without torchvision, the same steps
    done independently by PIL agree to within one uint8 step (the two round differently)."""
    directory, _ = dinov3_dir
    if transformers.utils.is_torchvision_available():  # pragma: no cover - not in this environment
        pytest.fail("torchvision must not be installed next to the embedder")
    backend = load_backend("dinov3-vitl16", weights=directory)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    one_step = 1 / 255 / min(IMAGENET_STD)
    for image in photos:
        resized = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
        expected = (resized.transpose(2, 0, 1) / 255.0 - mean) / std
        difference = np.abs(backend.preprocess(image) - expected)
        assert difference.max() <= one_step + 1e-4
        assert difference.mean() < 0.5 * one_step  # most pixels identical


# ------------------------------------------------------------------------------------- SigLIP2


def test_siglip2_matches_get_image_features_and_own_processor(siglip_dir, photos):
    directory, model = siglip_dir
    backend = load_backend("siglip2-so400m-384", weights=directory)

    pixels = _reference_pixels(directory, photos)
    for image, expected in zip(photos, pixels["pixel_values"], strict=True):
        np.testing.assert_array_equal(backend.preprocess(image), expected.numpy())
    with torch.no_grad():
        features = model.get_image_features(**pixels)
    # transformers 5 returns the vision tower's output; its pooler_output is the MAP head
    expected_vectors = getattr(features, "pooler_output", features).numpy()
    with torch.no_grad():
        map_head = model.vision_model.head(model.vision_model(**pixels).last_hidden_state)
    np.testing.assert_allclose(expected_vectors, map_head.numpy(), atol=1e-6)

    vectors = _backend_vectors(backend, photos)
    np.testing.assert_allclose(vectors, expected_vectors, rtol=1e-5, atol=1e-5)
    info = backend.info()
    assert info.details["model_class"] == "SiglipVisionModel"  # text tower not loaded
    assert info.preprocessing == (
        "SiglipImageProcessorPil: resize 384x384 (aspect not kept) bilinear; rescale 1/255; "
        "normalize mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5]"
    )


# -------------------------------------------------------------------------------- hf-automodel


@pytest.mark.parametrize(
    ("name", "pool"),
    [
        ("hf-automodel", lambda out: out.pooler_output),
        ("hf-automodel-cls", lambda out: out.last_hidden_state[:, 0]),
        ("hf-automodel-mean", lambda out: out.last_hidden_state.mean(dim=1)),
    ],
)
def test_automodel_poolings(vit_dir, photos, name, pool):
    directory, model = vit_dir
    backend = load_backend(name, weights=directory)
    pixels = _reference_pixels(directory, photos)
    for image, expected in zip(photos, pixels["pixel_values"], strict=True):
        np.testing.assert_array_equal(backend.preprocess(image), expected.numpy())
    with torch.no_grad():
        expected_vectors = pool(model(**pixels)).numpy()
    np.testing.assert_allclose(_backend_vectors(backend, photos), expected_vectors, rtol=1e-5, atol=1e-5)
    assert backend.info().details["model_class"] == "ViTModel"


def test_automodel_needs_weights_and_a_known_pooling(vit_dir):
    with pytest.raises(WeightsNotFoundError, match="--weights PATH"):
        load_backend("hf-automodel")
    with pytest.raises(
        BackendOptionsError, match=r"option 'pooling': Input should be 'pooler', 'cls' or 'mean'"
    ):
        load_backend("hf-automodel", weights=vit_dir[0], pooling="max")


# ----------------------------------------------------------------------------- weights on disk


def test_missing_weights_error_names_model_paths_and_remedy(tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(WeightsNotFoundError) as caught:
        load_backend("dinov2-large")
    message = str(caught.value)
    assert "facebook/dinov2-large" in message
    assert str(cache) in message
    assert "--weights PATH" in message and "HF_HUB_OFFLINE=1" in message

    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError, match=f"{missing} \\(does not exist\\)"):
        load_backend("dinov2-large", weights=missing)


def test_directory_without_processor_config_is_refused(dinov2_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((dinov2_dir[0] / "config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match=r"partial \(lacks preprocessor_config.json\)"):
        load_backend("dinov2-large", weights=partial)


def _hub_cache_with(tmp_path: Path, model_id: str, source: Path, commit: str) -> Path:
    """A Hugging Face hub cache laid out as huggingface_hub writes it (refs, snapshots, blobs)."""
    repo = tmp_path / "hub" / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in source.iterdir():
        blob = repo / "blobs" / file.name
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", file.name))
    return tmp_path / "hub"


def test_loads_from_offline_hub_cache(dinov2_dir, photos, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = _hub_cache_with(tmp_path, "facebook/dinov2-large", dinov2_dir[0], commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_cache = load_backend("dinov2-large")
    assert from_cache.info().revision == commit
    from_dir = load_backend("dinov2-large", weights=dinov2_dir[0])
    np.testing.assert_array_equal(_backend_vectors(from_cache, photos), _backend_vectors(from_dir, photos))
    # --weights may also name the cache root itself
    assert load_backend("dinov2-large", weights=cache).info().revision == commit


# ---------------------------------------------------------------------------- Jina v4 (remote code)


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("jina") / "tiny-jina-v4"
    tiny_checkpoints.build_jina(directory)
    return directory


def test_jina_loads_local_remote_code_and_calls_encode_image(jina_dir, photos):
    backend = load_backend("jina-embeddings-v4", weights=jina_dir)
    reference = transformers.AutoModel.from_pretrained(str(jina_dir), trust_remote_code=True).eval()
    with torch.no_grad():
        expected = torch.stack(reference.encode_image(images=photos, task="retrieval")).numpy()
    vectors = _backend_vectors(backend, photos)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-6)
    last_call = backend._model.calls[-1]
    assert last_call == dict(
        task="retrieval",
        batch_size=len(photos),
        return_multivector=False,
        max_pixels=602112,
        count=len(photos),
    )
    info = backend.info()
    assert info.normalized and info.dim == 8
    assert info.details["compute_dtype"] == "float32"  # bf16 only on GPUs
    assert "3,136..602,112 pixels" in info.preprocessing


def test_jina_missing_remote_code_is_named(jina_dir, tmp_path):
    directory = tmp_path / "no-code"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((jina_dir / name).read_bytes())
    with pytest.raises(jina.RemoteCodeError, match="lacks configuration_tiny_jina.py, modeling_tiny_jina.py"):
        load_backend("jina-embeddings-v4", weights=directory)

    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(jina.RemoteCodeError, match="no auto_map entry for AutoModel"):
        load_backend("jina-embeddings-v4", weights=directory)


def test_jina_missing_weights_and_missing_peft(jina_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="jinaai/jina-embeddings-v4"):
        load_backend("jina-embeddings-v4")
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail
    with pytest.raises(MissingExtraError, match=r"'peft'.*vsbench\[embedder\]"):
        load_backend("jina-embeddings-v4", weights=jina_dir)


# ----------------------------------------------------- open_clip and colpali-engine (own extras)


def test_open_clip_backend_names_its_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtraError, match=r"'open_clip'.*pip install 'vsbench\[openclip\]'"):
        load_backend("pe-core-l14-336")


def test_nomic_backend_names_its_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "colpali_engine", None)
    monkeypatch.setitem(sys.modules, "colpali_engine.models", None)
    with pytest.raises(MissingExtraError, match=r"'colpali_engine.models'.*pip install 'vsbench\[nomic\]'"):
        load_backend("nomic-embed-multimodal-3b")


def test_nomic_adapter_needs_its_base_model_offline(tmp_path, monkeypatch):
    adapter = tmp_path / "nomic"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"})
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFoundError, match="Qwen/Qwen2.5-VL-3B-Instruct.*LoRA adapter"):
        nomic.check_adapter_base(adapter)
    local_base = tmp_path / "qwen-base"
    local_base.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(local_base)}))
    assert nomic.check_adapter_base(adapter) == str(local_base)


# --------------------------------------------------------------------------------------- specs


def test_specs_are_registered_with_lazy_factories():
    for spec in hf_specs.HF_MODEL_SPECS:
        assert get_spec(spec.name) is spec
        assert get_kind(spec.kind) in hf_specs.HF_KINDS
        assert spec.preprocessing is None and spec.preprocessing_note
    assert get_spec("siglip2-so400m-384").options["model_class"] == "SiglipVisionModel"
    assert {get_spec(n).dim for n in ("dinov2-large", "dinov3-vitl16", "pe-core-l14-336")} == {1024}
    # Listing models and importing every factory module must not import a model library.
    probe = (
        "import sys, importlib\n"
        "from services.embedder.backends import registry\n"
        "registry.list_specs()\n"
        "for kind in ('hf', 'open_clip', 'jina', 'nomic'):\n"
        "    assert callable(registry.get_kind(kind).load_function())\n"
        "heavy = {'torch', 'transformers', 'open_clip', 'colpali_engine', 'peft'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).resolve().parents[2])


# -------------------------------------------------------------------- kind + options, fingerprints


def test_hf_model_defined_by_kind_and_options(vit_dir, photos):
    """A run config's "this checkpoint directory, mean pooling": the same model as the registered
    hf-automodel-mean, so the same vectors and the same fingerprint."""
    directory, _ = vit_dir
    defined = build_backend("hf", {"weights": str(directory), "pooling": "mean"}, name="my-vit")
    registered = load_backend("hf-automodel-mean", weights=directory)
    assert defined.info().name == "my-vit"
    np.testing.assert_array_equal(_backend_vectors(defined, photos), _backend_vectors(registered, photos))
    assert defined.info().fingerprint == registered.info().fingerprint
    assert (
        defined.info().fingerprint != load_backend("hf-automodel-cls", weights=directory).info().fingerprint
    )
    with pytest.raises(
        BackendOptionsError,
        match=r"unknown option 'poolling'.*dtype, model_class, model_id, pooling, preprocessing, weights",
    ):
        build_backend("hf", {"weights": str(directory), "poolling": "mean"})


def test_hf_fingerprint_follows_weights_dtype_and_processor(vit_dir, dinov2_dir, photos, tmp_path):
    directory, _ = vit_dir
    base = load_backend("hf-automodel", weights=directory)
    assert base.info().fingerprint == load_backend("hf-automodel", weights=directory).info().fingerprint
    assert base.info().fingerprint != load_backend("hf-automodel", weights=dinov2_dir[0]).info().fingerprint

    bf16 = load_backend("hf-automodel", weights=directory, dtype="bfloat16")
    assert bf16.info().details["compute_dtype"] == "bfloat16"
    assert bf16.info().fingerprint != base.info().fingerprint
    vectors = _backend_vectors(bf16, photos[:2])
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors, _backend_vectors(base, photos[:2]), atol=0.1, rtol=0.05)

    # Same weights, one processor value changed (the mean): another fingerprint.
    changed = tmp_path / "vit-other-mean"
    changed.mkdir()
    for file in directory.iterdir():
        (changed / file.name).write_bytes(file.read_bytes())
    config = json.loads((directory / "preprocessor_config.json").read_text())
    save_processor_config(changed, {**config, "image_mean": [0.4, 0.4, 0.4]})
    assert load_backend("hf-automodel", weights=changed).info().fingerprint != base.info().fingerprint
