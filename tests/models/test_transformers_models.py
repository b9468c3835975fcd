"""DINOv2-L, DINOv3 ViT-L/16 and SigLIP2 So400m/14-384 (transformers) against their reference
pipelines, at their real architecture with random weights (fixed seed).

References:
- DINOv2: the official repo's eval transform (facebookresearch/dinov2, dinov2/data/transforms.py,
  make_classification_eval_transform: Resize(256, bicubic), CenterCrop(224), ToTensor, Normalize
  with ImageNet mean/std), then the model's CLS output (pooler_output).
- DINOv3: the official repo's transform (facebookresearch/dinov3 README, make_transform: ToImage,
  Resize((224, 224), antialias=True) on the uint8 image, ToDtype(float32, scale=True), Normalize
  with ImageNet mean/std), then pooler_output.
- SigLIP2: the model card's use, processor + SiglipModel.get_image_features.
"""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

from services.embedder.backends.registry import load_backend
from tests.models.checkpoints import (
    DINOV2_LARGE,
    DINOV3_PROCESSOR,
    DINOV3_VITL16,
    SIGLIP2_SO400M_384,
    build_hf_checkpoint,
)
from tests.models.parity import check_and_record, cosines, embed_over_grpc, load_photo, photo_paths

# Real-size models on shared CPUs: generous per-test limit (pyproject's default is 600 s).
pytestmark = pytest.mark.timeout(1800)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def forward(model, pixels, dtype=None) -> np.ndarray:
    import torch

    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        pixels = pixels.to(dtype)
    with torch.inference_mode():
        return model(pixel_values=pixels).pooler_output.float().numpy()


def dinov2_eval_transform(interpolation):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(256, interpolation=interpolation),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def dinov3_transform(interpolation, uint8_resize: bool = True):
    import torch
    from torchvision.transforms import v2

    resize = v2.Resize((224, 224), interpolation=interpolation, antialias=True)
    scale = v2.ToDtype(torch.float32, scale=True)
    steps = [v2.ToImage(), resize, scale] if uint8_resize else [v2.ToImage(), scale, resize]
    return v2.Compose([*steps, v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def batch(transform, paths):
    import torch

    return torch.stack([transform(load_photo(p)) for p in paths])


@pytest.fixture
def paths():
    return photo_paths()


def test_dinov2_large_matches_the_official_eval_transform(tmp_path, paths):
    from torchvision.transforms import InterpolationMode

    model = build_hf_checkpoint(DINOV2_LARGE, tmp_path)
    pixels = batch(dinov2_eval_transform(InterpolationMode.BICUBIC), paths)
    reference = forward(model, pixels)
    slipped = forward(model, batch(dinov2_eval_transform(InterpolationMode.BILINEAR), paths))
    import torch

    bf16 = forward(model, pixels, torch.bfloat16)
    del model
    gc.collect()

    served, info = embed_over_grpc(load_backend("dinov2-large", weights=tmp_path, threads=2), paths)
    assert info.dim == 1024
    check_and_record(
        "dinov2-large",
        reference=reference,
        served=served,
        bf16=bf16,
        slipped=slipped,
        slip_what="bilinear for bicubic",
        architecture="ViT-L/14 (24 x 1024), real config",
    )


def test_dinov3_vitl16_matches_the_official_transform(tmp_path, paths):
    import torch
    from torchvision.transforms import InterpolationMode

    model = build_hf_checkpoint(DINOV3_VITL16, tmp_path)
    pixels = batch(dinov3_transform(InterpolationMode.BILINEAR), paths)
    reference = forward(model, pixels)
    slipped = forward(model, batch(dinov3_transform(InterpolationMode.BICUBIC), paths))
    # transformers' own DINOv3 processor rescales before resizing (float resize): reported only.
    float_resize = forward(
        model, batch(dinov3_transform(InterpolationMode.BILINEAR, uint8_resize=False), paths)
    )
    print(f"dinov3 uint8-resize vs float-resize min cosine: {cosines(reference, float_resize).min():.7f}")
    bf16 = forward(model, pixels, torch.bfloat16)
    del model
    gc.collect()

    backend = load_backend("dinov3-vitl16", weights=tmp_path, threads=2)
    served, info = embed_over_grpc(backend, paths)
    assert info.dim == 1024
    assert "uint8" in info.preprocessing, info.preprocessing
    check_and_record(
        "dinov3-vitl16",
        reference=reference,
        served=served,
        bf16=bf16,
        slipped=slipped,
        slip_what="bicubic for bilinear",
        architecture="ViT-L/16 + 4 registers (24 x 1024), real config",
    )


def test_dinov3_torch_port_gives_the_official_pixels(paths):
    """Where torchvision is absent (the main embedder environment) DINOv3 is preprocessed by
    hf_processors' torch port: it must give the official transform's pixels."""
    from torchvision.transforms import InterpolationMode

    from services.embedder.backends.hf_processors import Uint8ResizeRescaleNormalize

    port = Uint8ResizeRescaleNormalize.from_config(DINOV3_PROCESSOR)
    official = batch(dinov3_transform(InterpolationMode.BILINEAR), paths).numpy()
    ported = port([load_photo(p) for p in paths])["pixel_values"]
    assert ported.shape == official.shape == (len(paths), 3, 224, 224)
    np.testing.assert_allclose(ported, official, atol=1e-5)


def siglip_image_features(model, pixels, dtype=None) -> np.ndarray:
    import torch

    if dtype is not None:
        model, pixels = copy.deepcopy(model).to(dtype), pixels.to(dtype)
    with torch.inference_mode():
        output = model.get_image_features(pixel_values=pixels)
    # transformers 5 returns the vision tower's output; its pooler_output is the MAP head
    return getattr(output, "pooler_output", output).float().numpy()


def test_siglip2_so400m_384_matches_get_image_features(tmp_path, paths):
    import torch
    from transformers import AutoImageProcessor

    model = build_hf_checkpoint(SIGLIP2_SO400M_384, tmp_path)
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))  # the model card's processor

    images = [load_photo(p) for p in paths]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    reference = siglip_image_features(model, pixels)
    slipped = siglip_image_features(
        model, processor(images=images, return_tensors="pt", resample=3)["pixel_values"]
    )
    bf16 = siglip_image_features(model, pixels, torch.bfloat16)
    del model
    gc.collect()

    served, info = embed_over_grpc(load_backend("siglip2-so400m-384", weights=tmp_path, threads=2), paths)
    assert info.dim == 1152
    check_and_record(
        "siglip2-so400m-384",
        reference=reference,
        served=served,
        bf16=bf16,
        slipped=slipped,
        slip_what="bicubic for bilinear",
        architecture="So400m/14 @384 vision tower (27 x 1152), real config; text tower reduced to 1 layer",
    )


def test_checkpoints_are_the_real_architectures():
    """The configs the parity tests build are the published ones (sizes that decide the vectors)."""
    assert DINOV2_LARGE.config["hidden_size"] == 1024 and DINOV2_LARGE.config["num_hidden_layers"] == 24
    assert DINOV3_VITL16.config["num_register_tokens"] == 4 and DINOV3_VITL16.config["patch_size"] == 16
    vision = SIGLIP2_SO400M_384.config["vision_config"]
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["image_size"]) == (1152, 27, 384)
