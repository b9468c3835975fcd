"""timm models through vsbench's "timm" kind against timm itself (model-test environment: timm
imports torchvision).

Reference: `timm.data.resolve_data_config({}, model=m)` + `timm.data.create_transform(**config)`
(torchvision) + `m.forward_head(m.forward_features(x), pre_logits=True)`, the documented use.
Served: `build_backend("timm", {"model_name": ...})` over a real gRPC server on loopback, weights
read from an offline Hugging Face hub cache by the pretrained_cfg's hf_hub_id (or from a file).
Real architectures with random weights (fixed seed); one model per crop mode timm's eval
transform has: 'center' with crop_pct 0.95 and 0.9 (bicubic), and 'squash' at 384.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from services.common.grpc_server import BackgroundServer
from services.common.types import ImageItem
from services.embedder.backends.errors import BackendLoadError
from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.registry import build_backend
from services.embedder.batching import BatchingEmbedder
from services.evaluator.clients.grpc import GrpcEmbeddingClient
from services.evaluator.probe import run_probe

PHOTOS = Path(__file__).resolve().parents[2] / "services" / "evaluator" / "quickstart" / "photos"
PARITY_MIN_COS = 0.9999
BF16_MIN_COS = 0.99
SEED = 0
MODELS = [
    "resnet18.a1_in1k",  # center, crop_pct 0.95, bicubic, ImageNet mean/std
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k",  # center, crop_pct 0.9, bicubic, mean/std 0.5
    "convnext_tiny.in12k_ft_in1k_384",  # squash, crop_pct 1.0, 384x384
]


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    import torch

    torch.set_num_threads(2)


def photo_paths(count: int = 4) -> list[Path]:
    # every 10th photo: different scenes, sizes and aspect ratios
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() == ".jpg")[::10][:count]
    assert len(paths) == count
    return paths


def load_photo(path: Path) -> Image.Image:
    with Image.open(path) as image:  # EXIF orientation, as the embedder's decoder applies it
        return ImageOps.exif_transpose(image).convert("RGB")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def write_hub_cache(cache: Path, repo_id: str, name: str, source: Path) -> None:
    """huggingface_hub's layout: refs/main names the snapshot holding the file."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / name).symlink_to(source)


def random_checkpoint(name: str, folder: Path):
    """timm's model at its real architecture, random weights (fixed seed), saved as timm's hub
    file model.safetensors; returns (model in eval mode, file)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model = timm.create_model(name, pretrained=False).eval()
    path = folder / "model.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return model, path


def timm_reference(model, images: list[Image.Image]) -> np.ndarray:
    import torch
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    batch = torch.stack([transform(image) for image in images])
    with torch.inference_mode():
        return model.forward_head(model.forward_features(batch), pre_logits=True).numpy()


def served_over_grpc(backend, paths: list[Path]) -> np.ndarray:
    embedder = BatchingEmbedder(backend, max_batch=2, max_wait_ms=20, decode_workers=1)  # > 1 batch
    with BackgroundServer(embedder) as server, GrpcEmbeddingClient(server.address) as client:
        results = {r.id: r for r in client.embed([ImageItem(p.name, p.read_bytes()) for p in paths])}
    assert all(r.ok for r in results.values()), {k: str(r.error) for k, r in results.items() if not r.ok}
    return np.stack([results[p.name].vector for p in paths])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", MODELS)
def test_timm_kind_matches_timm_over_grpc(name, tmp_path, hub_cache):
    model, weights = random_checkpoint(name, tmp_path)
    write_hub_cache(hub_cache, model.pretrained_cfg["hf_hub_id"], "model.safetensors", weights)
    paths = photo_paths()
    images = [load_photo(p) for p in paths]
    reference = timm_reference(model, images)

    backend = build_backend("timm", {"model_name": name}, name=name, threads=2)  # hub cache, by hf_hub_id
    info = backend.info()
    assert info.dim == reference.shape[1] and info.backend == "timm"
    assert info.details["preprocessing_source"] == "timm pretrained_cfg"
    assert Path(info.details["weights"]).resolve() == weights.resolve()

    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    assert similarity.max() < 0.999, "the random model maps different photos to one vector"

    # A plausible slip on the same weights must fall below the bar, or the check proves nothing:
    # the shortest-edge resize rounded instead of truncated (vsbench's plain Preprocessing) for
    # 'center' models, 'center' instead of 'squash' for a squash model.
    pre = backend._preprocessing  # noqa: SLF001 - the test builds the slip from the served steps
    fields = {f.name: getattr(pre, f.name) for f in dataclasses.fields(Preprocessing)}
    if pre.resize == "shortest":
        slip, slip_what = Preprocessing(**fields), "long edge rounded, not truncated"
        # photos whose longer edge the two rules size differently (the rest are identical)
        slip_paths = [p for p in sorted(PHOTOS.glob("*.jpg"))
                      if pre.resized_size(*Image.open(p).size) != slip.resized_size(*Image.open(p).size)][:2]
        assert slip_paths
    else:
        slip = Preprocessing(**{**fields, "resize": "shortest", "resize_to": pre.crop_hw[0]})
        slip_what = "aspect kept and centre-cropped, not squashed"
        slip_paths = paths
    slip_images = [load_photo(p) for p in slip_paths]
    slipped = float(cosines(timm_reference(model, slip_images), backend.forward([slip(i) for i in slip_images])).min())

    served = served_over_grpc(backend, paths)  # the server closes the backend when it stops
    parity = float(cosines(reference, served).min())

    bf16_backend = build_backend("timm", {"model_name": name, "weights": str(weights), "dtype": "bfloat16"}, threads=2)
    bf16 = float(cosines(reference, bf16_backend.forward([bf16_backend.preprocess(i) for i in images])).min())
    print(f"{name}: parity {parity:.7f}, bf16 vs fp32 {bf16:.5f}, slip ({slip_what}) {slipped:.6f}")
    assert parity >= PARITY_MIN_COS
    assert bf16 >= BF16_MIN_COS
    assert slipped < PARITY_MIN_COS, f"parity cannot see the slip {slip_what}"
    assert bf16_backend.info().fingerprint != info.fingerprint  # compute dtype is part of it


def test_fingerprint_is_stable_and_follows_the_weights(tmp_path):
    name = "resnet18.a1_in1k"
    _, weights = random_checkpoint(name, tmp_path)
    first = build_backend("timm", {"model_name": name, "weights": str(weights)}, threads=2).info()
    again = build_backend("timm", {"model_name": name, "weights": str(weights)}, threads=2).info()
    assert first.fingerprint == again.fingerprint and first.fingerprint.startswith("sha256:")
    from safetensors.torch import load_file, save_file

    changed = load_file(str(weights))
    changed["fc.bias"] = changed["fc.bias"] + 1  # even the unused classifier is part of the file
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in changed.items()}, str(other))
    assert build_backend("timm", {"model_name": name, "weights": str(other)}).info().fingerprint != first.fingerprint


def test_probe_reports_parity_with_timm_and_refuses_it_for_given_preprocessing(tmp_path):
    name = "resnet18.a1_in1k"
    _, weights = random_checkpoint(name, tmp_path)
    items = [ImageItem(p.name, p.read_bytes()) for p in photo_paths()]

    def probe(options):
        backend = build_backend("timm", {"model_name": name, "weights": str(weights), **options}, threads=2)
        with BackgroundServer(BatchingEmbedder(backend, max_batch=32)) as server:
            return run_probe(lambda size: GrpcEmbeddingClient(server.address, batch_size=size, max_in_flight=1),
                             items, target=server.address, source=str(PHOTOS), throughput_batches=(1, 2),
                             throughput_images=2)

    result = probe({})
    assert result.ok, result.problems
    assert result.parity.status == "ok" and result.parity.min_cos >= PARITY_MIN_COS
    assert result.dim == 512 and result.determinism_max_abs_diff <= 1e-5 and result.batch_invariance_min_cos >= 0.9999
    given = probe({"preprocessing": {"crop_size": 224, "resize_to": 256, "resample": "bilinear"}})
    assert given.parity.status == "unavailable" and "given" in given.parity.detail


def test_wrong_weights_and_unknown_names_are_refused_clearly(tmp_path):
    _, weights = random_checkpoint("resnet18.a1_in1k", tmp_path)
    with pytest.raises(BackendLoadError, match="do not fit timm model 'vit_tiny_patch16_224'"):
        build_backend("timm", {"model_name": "vit_tiny_patch16_224", "weights": str(weights)})
    with pytest.raises(BackendLoadError, match="has no model 'resnet_does_not_exist'"):
        build_backend("timm", {"model_name": "resnet_does_not_exist", "weights": str(weights)})
