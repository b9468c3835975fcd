"""open_clip models against open_clip itself: PE-Core L/14-336 at its real size, and any open_clip
config + pretrained tag (ViT-B-32 / laion2b_s34b_b79k here), weights from an offline hub cache.

Reference: `open_clip.create_model_and_transforms(name, pretrained=tag)` + `encode_image`, the
documented use, reading the same hub cache offline. Served: vsbench's open_clip backend, loaded the
way a user loads it (registered name, or kind + options), over gRPC.
"""

from __future__ import annotations

import copy
import gc
import json

import numpy as np
import pytest

from services.embedder.backends.errors import BackendLoadError, WeightsNotFoundError
from services.embedder.backends.registry import build_backend, load_backend
from tests.models.parity import (
    SEED,
    check_and_record,
    embed_over_grpc,
    load_photo,
    photo_paths,
    write_hub_cache,
)

# Real-size models on shared CPUs: generous per-test limit (pyproject's default is 600 s).
pytestmark = pytest.mark.timeout(1800)

PE_CORE = "PE-Core-L-14-336"
PE_CORE_REPO = "timm/PE-Core-L-14-336"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache as HF_HUB_CACHE, with huggingface_hub in offline mode (no request leaves)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def random_open_clip_checkpoint(name: str, tmp_path):
    """A randomly initialised open_clip model (fixed seed) and its state dict saved as open_clip's
    hub weights file."""
    import open_clip
    import torch

    torch.manual_seed(SEED)
    model = open_clip.create_model(name).eval()
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), weights)
    del model
    gc.collect()
    return weights


def hub_config(name: str, tag: str) -> bytes:
    """open_clip_config.json as open_clip's hub export writes it: the model config plus the tag's
    preprocessing."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    preprocess = {key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode")}
    return json.dumps({"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": preprocess}).encode()


def reference_vectors(model, transform, paths, dtype=None) -> np.ndarray:
    import torch

    batch = torch.stack([transform(load_photo(p)) for p in paths])
    if dtype is not None:
        batch = batch.to(dtype)
    with torch.inference_mode():
        return model.encode_image(batch).float().numpy()


def test_pe_core_l14_336_matches_open_clip(tmp_path, offline_hub):
    import open_clip
    import torch

    weights = random_open_clip_checkpoint(PE_CORE, tmp_path)
    write_hub_cache(
        offline_hub,
        PE_CORE_REPO,
        {"open_clip_config.json": hub_config(PE_CORE, "meta"), "open_clip_pytorch_model.bin": weights},
    )
    paths = photo_paths()

    model, _, transform = open_clip.create_model_and_transforms(
        PE_CORE, pretrained="meta", cache_dir=str(offline_hub)
    )
    model.eval()
    reference = reference_vectors(model, transform, paths)
    # The slip: bicubic where PE-Core's transform resizes bilinearly.
    slipped_transform = open_clip.image_transform(
        336, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="squash"
    )
    slipped = reference_vectors(model, slipped_transform, paths)
    bf16 = reference_vectors(copy.deepcopy(model).to(torch.bfloat16), transform, paths, torch.bfloat16)
    del model
    gc.collect()

    backend = load_backend("pe-core-l14-336", threads=2)  # the registered spec, from the hub cache
    served, info = embed_over_grpc(backend, paths)
    assert info.dim == 1024 and info.backend == "open_clip"
    assert "Resize (336, 336) bilinear" in info.preprocessing and "mean=[0.5, 0.5, 0.5]" in info.preprocessing
    check_and_record(
        "pe-core-l14-336",
        reference=reference,
        served=served,
        bf16=bf16,
        slipped=slipped,
        slip_what="bicubic for bilinear",
        architecture="PE-Core-L-14-336 full (vision + text towers), random init",
    )

    # The same model by name + tag (kind open_clip, not the registered spec): same vectors.
    by_tag = build_backend("open_clip", {"open_clip_name": PE_CORE, "pretrained": "meta"}, name="pe-by-tag")
    served_by_tag, tag_info = embed_over_grpc(by_tag, paths[:2])
    np.testing.assert_allclose(served_by_tag, served[:2], rtol=1e-4, atol=1e-5)
    assert tag_info.preprocessing == info.preprocessing


def test_any_open_clip_model_by_name_and_tag(tmp_path, offline_hub):
    """ViT-B-32 with laion2b_s34b_b79k: weights from the offline hub cache, the tag's own
    preprocessing (bicubic, shortest-edge resize + centre crop, OpenAI mean/std)."""
    import open_clip
    import torch

    name, tag = "ViT-B-32", "laion2b_s34b_b79k"
    repo = open_clip.get_pretrained_cfg(name, tag)["hf_hub"].rstrip("/")
    weights = random_open_clip_checkpoint(name, tmp_path)
    write_hub_cache(offline_hub, repo, {"open_clip_pytorch_model.bin": weights})
    paths = photo_paths()

    model, _, transform = open_clip.create_model_and_transforms(
        name, pretrained=tag, cache_dir=str(offline_hub)
    )
    model.eval()
    reference = reference_vectors(model, transform, paths)
    # The slip: the model's default (no tag) preprocessing is bicubic too; squash instead of crop.
    slipped_transform = open_clip.image_transform(
        224,
        is_train=False,
        mean=open_clip.OPENAI_DATASET_MEAN,
        std=open_clip.OPENAI_DATASET_STD,
        interpolation="bicubic",
        resize_mode="squash",
    )
    slipped = reference_vectors(model, slipped_transform, paths)
    bf16 = reference_vectors(copy.deepcopy(model).to(torch.bfloat16), transform, paths, torch.bfloat16)

    backend = build_backend("open_clip", {"open_clip_name": name, "pretrained": tag}, name="vit-b-32-laion2b")
    served, info = embed_over_grpc(backend, paths)
    assert info.name == "vit-b-32-laion2b" and info.dim == 512
    assert "bicubic" in info.preprocessing and "CenterCrop" in info.preprocessing
    assert "0.48145466" in info.preprocessing  # OpenAI mean, from the tag
    check_and_record(
        "open_clip ViT-B-32 laion2b",
        reference=reference,
        served=served,
        bf16=bf16,
        slipped=slipped,
        slip_what="squash for shortest+crop",
        architecture="ViT-B-32 full, random init",
    )

    # The same file given directly, with and without the tag: the tag's preprocessing is what
    # makes the vectors (and the fingerprint) the reference's.
    with_tag = build_backend(
        "open_clip", {"open_clip_name": name, "pretrained": tag, "weights": str(weights)}
    )
    without_tag = build_backend("open_clip", {"open_clip_name": name, "weights": str(weights)})
    try:
        assert with_tag.info().fingerprint == info.fingerprint
        assert without_tag.info().fingerprint != info.fingerprint
        assert with_tag.info().preprocessing == info.preprocessing
    finally:
        with_tag.close()
        without_tag.close()


def test_open_clip_kind_refuses_what_it_cannot_load(tmp_path, offline_hub):
    with pytest.raises(BackendLoadError, match="no model config 'ViT-Nope'"):
        build_backend("open_clip", {"open_clip_name": "ViT-Nope", "pretrained": "x"})
    with pytest.raises(BackendLoadError, match="no pretrained tag 'nope'.*laion2b_s34b_b79k"):
        build_backend("open_clip", {"open_clip_name": "ViT-B-32", "pretrained": "nope"})
    # A known tag whose weights are not in the offline cache: never downloaded, and says where to get them.
    with pytest.raises(WeightsNotFoundError, match=r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K.*hf download"):
        build_backend("open_clip", {"open_clip_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})
    with pytest.raises(WeightsNotFoundError, match="no weights"):
        build_backend("open_clip", {"open_clip_name": "ViT-B-32"})
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(BackendLoadError, match="needs open_clip_name"):
        build_backend("open_clip", {"weights": str(stray)})
