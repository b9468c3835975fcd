"""The timm kind's parts that need no timm: pretrained_cfg -> preprocessing as data (hand-computed
sizes, pixels against a hand-built pipeline on a real photo), options, weights in a hub cache, and
the missing-extra error. Loading real timm models is in tests/models/test_timm_parity.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.embedder.backends.errors import BackendLoadError, BackendOptionsError, MissingExtraError, WeightsNotFoundError
from services.embedder.backends.options import TimmOptions
from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.registry import build_backend, get_kind, validate_definition
from services.embedder.backends.timm_backend import (
    TorchvisionShortestEdge,
    data_config_record,
    preprocessing_from_data_config,
    resolve_timm_weights,
)

PHOTOS = Path(__file__).resolve().parents[2] / "services" / "evaluator" / "quickstart" / "photos"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def config(**overrides):
    return {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
            **IMAGENET, **overrides}


@pytest.mark.parametrize(
    "crop_pct, scale",
    [(0.875, 256), (0.95, 235), (0.9, 248), (1.0, 224)],  # floor(224 / crop_pct)
)
def test_center_mode_is_shortest_edge_to_size_over_crop_pct_then_centre_crop(crop_pct, scale):
    pre = preprocessing_from_data_config(config(crop_pct=crop_pct))
    assert isinstance(pre, TorchvisionShortestEdge)
    assert (pre.resize, pre.resize_to, pre.crop_hw, pre.resample) == ("shortest", scale, (224, 224), "bicubic")
    assert pre.mean == IMAGENET["mean"] and pre.std == IMAGENET["std"] and pre.rescale == pytest.approx(1 / 255)
    assert pre.layout == "CHW" and pre.channel_order == "RGB"


def test_missing_crop_pct_mode_and_interpolation_take_timms_defaults():
    pre = preprocessing_from_data_config({"input_size": (3, 224, 224), **IMAGENET})
    assert (pre.resize, pre.resize_to, pre.resample) == ("shortest", 256, "bilinear")  # 0.875, center


def test_squash_mode_resizes_both_edges_without_keeping_aspect():
    pre = preprocessing_from_data_config(config(input_size=(3, 384, 384), crop_pct=1.0, crop_mode="squash"))
    assert type(pre) is Preprocessing
    assert (pre.resize, pre.resize_to, pre.crop_hw) == ("squash", (384, 384), (384, 384))
    assert pre.resized_size(640, 427) == (384, 384)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"crop_mode": "border"}, "crop_mode 'border'"),
        ({"input_size": (3, 224, 320)}, "non-square input 224x320"),
        ({"interpolation": "random"}, "interpolation 'random'"),
        ({"input_size": (1, 224, 224)}, r"not \(3, H, W\)"),
        ({"crop_border_pixels": 2}, "crop_border_pixels"),
    ],
)
def test_configs_that_are_not_expressible_as_data_are_refused(overrides, message):
    with pytest.raises(BackendLoadError, match=message):
        preprocessing_from_data_config(config(**overrides))


def test_longer_edge_is_truncated_as_torchvision_does_where_preprocessing_rounds():
    pre = preprocessing_from_data_config(config())  # shortest edge 256
    assert pre.resized_size(640, 427) == (383, 256)  # int(256 * 640 / 427) = int(383.70)
    assert pre.resized_size(471, 640) == (256, 347)  # int(256 * 640 / 471) = int(347.84)
    assert pre.resized_size(500, 500) == (256, 256)
    rounded = Preprocessing(crop_size=224, resize="shortest", resize_to=256)
    assert rounded.resized_size(640, 427) == (384, 256)
    assert "int()-truncated" in pre.describe()


def test_pixels_equal_a_hand_built_resize_crop_normalise_on_a_real_photo():
    image = Image.open(PHOTOS / "sklearn_china.jpg").convert("RGB")
    assert image.size == (640, 427)
    pre = preprocessing_from_data_config(config())
    resized = image.resize((383, 256), Image.Resampling.BICUBIC)
    left, top = round((383 - 224) / 2), round((256 - 224) / 2)  # 80, 16 (Python rounds 79.5 to 80)
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    expected = ((crop - np.array(IMAGENET["mean"])) / np.array(IMAGENET["std"])).transpose(2, 0, 1)
    got = pre(image)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_data_config_record_is_json_data_of_the_pixel_deciding_keys():
    record = data_config_record({**config(), "extra": 1})
    assert record == {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": list(IMAGENET["mean"]),
                      "std": list(IMAGENET["std"]), "crop_pct": 0.875, "crop_mode": "center"}


# --- options and the kind -------------------------------------------------------------------------


def test_kind_is_listed_and_its_module_imports_no_timm_or_torch():
    kind = get_kind("timm")
    assert kind.options is TimmOptions
    assert {o["name"] for o in kind.to_dict()["options"]} >= {"model_name", "weights", "dtype", "pooling"}
    code = (
        "import sys, services.embedder.backends.timm_backend; "
        "assert 'timm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_options_are_typed_and_unknown_ones_refused():
    valid = validate_definition("timm", {"model_name": "resnet18.a1_in1k"})
    assert (valid.pooling, valid.dtype, valid.hub_cache, valid.weights) == ("pre_logits", "float32", True, None)
    with pytest.raises(BackendOptionsError, match="unknown option 'pretrained'.*model_name"):
        validate_definition("timm", {"model_name": "resnet18", "pretrained": True})
    with pytest.raises(BackendOptionsError, match="option 'pooling'"):
        validate_definition("timm", {"model_name": "resnet18", "pooling": "mean"})
    with pytest.raises(BackendOptionsError, match="option 'model_name' is required"):
        validate_definition("timm", {})
    custom = validate_definition("timm", {"model_name": "x", "preprocessing": {"crop_size": 256, "resample": "bilinear"}})
    assert custom.preprocessing == Preprocessing(crop_size=256, resample="bilinear")


def test_without_timm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # an import of timm now fails, in any environment
    with pytest.raises(MissingExtraError, match=r"pip install 'vsbench\[timm\]'"):
        build_backend("timm", {"model_name": "resnet18.a1_in1k"}, name="r18")


# --- weights ---------------------------------------------------------------------------------------


def hub_cache_with(root: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """The layout huggingface_hub writes: refs/main names the snapshot holding the file."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(data)
    return snapshot / filename


def test_weights_come_from_the_offline_hub_cache_by_the_cfgs_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    expected = hub_cache_with(tmp_path, "timm/resnet18.a1_in1k", "model.safetensors", b"weights")
    options = TimmOptions(model_name="resnet18.a1_in1k")
    assert resolve_timm_weights("resnet18.a1_in1k", options, {"hf_hub_id": "timm/resnet18.a1_in1k"}) == expected


def test_a_hub_cache_without_the_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    options = TimmOptions(model_name="resnet18.a1_in1k")
    with pytest.raises(WeightsNotFoundError, match=r"hf download timm/resnet18.a1_in1k"):
        resolve_timm_weights("resnet18.a1_in1k", options, {"hf_hub_id": "timm/resnet18.a1_in1k"})
    with pytest.raises(WeightsNotFoundError, match="names no hf_hub_id"):
        resolve_timm_weights("resnet18", options, {})
    with pytest.raises(WeightsNotFoundError, match="hub_cache is off"):
        resolve_timm_weights("resnet18", TimmOptions(model_name="resnet18", hub_cache=False), {"hf_hub_id": "x/y"})


def test_a_given_weights_file_wins_and_must_exist(tmp_path):
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"w")
    given = TimmOptions(model_name="resnet18", weights=str(weights))
    assert resolve_timm_weights("resnet18", given, {"hf_hub_id": "timm/resnet18.a1_in1k"}) == weights
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        resolve_timm_weights("resnet18", TimmOptions(model_name="resnet18", weights=str(tmp_path / "no")), {})
