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

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


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


def _save_processor_config(directory: Path, config: dict) -> None:
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


# ------------------------------------------------------------------ tiny checkpoints, real classes


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("dinov2")
    model = transformers.Dinov2Model(
        transformers.Dinov2Config(image_size=224, patch_size=14, **TINY_VIT)
    ).eval()
    model.save_pretrained(directory)
    # facebook/dinov2-large's preprocessor_config.json
    _save_processor_config(
        directory,
        {
            "image_processor_type": "BitImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": 256},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
            "do_convert_rgb": True,
        },
    )
    return directory, model


@pytest.fixture(scope="module")
def dinov3_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("dinov3")
    config = transformers.DINOv3ViTConfig(image_size=224, patch_size=16, num_register_tokens=4, **TINY_VIT)
    model = transformers.DINOv3ViTModel(config).eval()
    model.save_pretrained(directory)
    # facebook/dinov3-vitl16-pretrain-lvd1689m's preprocessor_config.json
    _save_processor_config(
        directory,
        {
            "image_processor_type": "DINOv3ViTImageProcessorFast",
            "do_resize": True,
            "size": {"height": 224, "width": 224},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
        },
    )
    return directory, model


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("siglip2")
    config = transformers.SiglipConfig(
        vision_config=dict(image_size=384, patch_size=14, **TINY_VIT),
        text_config=dict(vocab_size=64, max_position_embeddings=16, **TINY_VIT),
    )
    model = transformers.SiglipModel(config).eval()  # the FixRes checkpoints' class (model_type siglip)
    model.save_pretrained(directory)
    _save_processor_config(
        directory,
        {
            "image_processor_type": "SiglipImageProcessor",
            "do_resize": True,
            "size": {"height": 384, "width": 384},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    )
    return directory, model


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("vit")
    model = transformers.ViTModel(transformers.ViTConfig(image_size=64, patch_size=16, **TINY_VIT)).eval()
    model.save_pretrained(directory)
    _save_processor_config(
        directory,
        {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": 64, "width": 64},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    )
    return directory, model


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


def test_dinov3_preprocessing_matches_pil_float_resize(dinov3_dir, photos):
    """transformers ships DINOv3's processor on torchvision only; the backend's torch port must
    equal the same steps done independently: PIL's antialiased bilinear resize in float mode."""
    directory, _ = dinov3_dir
    if transformers.utils.is_torchvision_available():  # pragma: no cover - not in this environment
        pytest.fail("torchvision must not be installed next to the embedder")
    backend = load_backend("dinov3-vitl16", weights=directory)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    for image in photos:
        scaled = np.asarray(image, dtype=np.float32) / 255.0
        channels = [
            np.asarray(
                Image.fromarray(scaled[:, :, c], mode="F").resize((224, 224), Image.Resampling.BILINEAR)
            )
            for c in range(3)
        ]
        expected = (np.stack(channels) - mean) / std
        np.testing.assert_allclose(backend.preprocess(image), expected, atol=5e-4)


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
    with pytest.raises(BackendOptionsError, match=r"option 'pooling': Input should be 'pooler', 'cls' or 'mean'"):
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

_JINA_CONFIG_CODE = """
from transformers import PretrainedConfig


class TinyJinaConfig(PretrainedConfig):
    model_type = "tiny_jina_v4_test"

    def __init__(self, hidden_size=8, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""

# Stands in for the checkpoint's modeling file (which cannot be downloaded here) with the same
# encode_image signature; what is under test is the loader: local remote code, dtype, arguments.
_JINA_MODEL_CODE = """
import numpy as np
import peft  # noqa: F401  the real remote code imports peft as well
import torch
from transformers import PreTrainedModel

from .configuration_tiny_jina import TinyJinaConfig


class TinyJinaModel(PreTrainedModel):
    config_class = TinyJinaConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(3, config.hidden_size)
        self.calls = []
        self.post_init()

    def encode_image(self, images, task=None, batch_size=8, return_multivector=False,
                     return_numpy=False, truncate_dim=None, max_pixels=None):
        self.calls.append(dict(task=task, batch_size=batch_size, return_multivector=return_multivector,
                               max_pixels=max_pixels, count=len(images)))
        means = [np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0) / 255 for image in images]
        vectors = self.proj(torch.from_numpy(np.stack(means)).to(self.dtype))
        return list(torch.nn.functional.normalize(vectors, dim=-1))
"""


def _write_jina_code(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_tiny_jina.py").write_text(_JINA_CONFIG_CODE)
    (directory / "modeling_tiny_jina.py").write_text(_JINA_MODEL_CODE)
    auto_map = {
        "AutoConfig": "configuration_tiny_jina.TinyJinaConfig",
        "AutoModel": "modeling_tiny_jina.TinyJinaModel",
    }
    (directory / "config.json").write_text(
        json.dumps({"model_type": "tiny_jina_v4_test", "hidden_size": 8, "auto_map": auto_map})
    )


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("jina") / "tiny-jina-v4"
    _write_jina_code(directory)
    config = transformers.AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    transformers.AutoModel.from_config(config, trust_remote_code=True).save_pretrained(str(directory))
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
