"""Tiny randomly initialised checkpoints of the real model classes, saved with the real checkpoints'
image-processor settings: what the tests load where the real weights are large or cannot be
downloaded here. Each builder writes into `directory` and returns the model it saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.hub_processors import (  # noqa: F401 - IMAGENET_*: also imported from here by unit tests
    DINOV2_PROCESSOR,
    DINOV3_PROCESSOR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_384_PROCESSOR,
)

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_WIDTH = TINY_VIT["hidden_size"]


def save_processor_config(directory: Path, config: dict) -> None:
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def build_dinov2(directory: Path) -> Any:
    import transformers

    model = transformers.Dinov2Model(
        transformers.Dinov2Config(image_size=224, patch_size=14, **TINY_VIT)
    ).eval()
    model.save_pretrained(directory)
    save_processor_config(directory, DINOV2_PROCESSOR)  # facebook/dinov2-large's
    return model


def build_dinov3(directory: Path) -> Any:
    import transformers

    config = transformers.DINOv3ViTConfig(image_size=224, patch_size=16, num_register_tokens=4, **TINY_VIT)
    model = transformers.DINOv3ViTModel(config).eval()
    model.save_pretrained(directory)
    save_processor_config(directory, DINOV3_PROCESSOR)  # facebook/dinov3-vitl16-pretrain-lvd1689m's
    return model


def build_siglip(directory: Path) -> Any:
    import transformers

    config = transformers.SiglipConfig(
        vision_config=dict(image_size=384, patch_size=14, **TINY_VIT),
        text_config=dict(vocab_size=64, max_position_embeddings=16, **TINY_VIT),
    )
    model = transformers.SiglipModel(config).eval()  # the FixRes checkpoints' class (model_type siglip)
    model.save_pretrained(directory)
    save_processor_config(directory, SIGLIP_384_PROCESSOR)
    return model


def build_vit(directory: Path) -> Any:
    import transformers

    model = transformers.ViTModel(transformers.ViTConfig(image_size=64, patch_size=16, **TINY_VIT)).eval()
    model.save_pretrained(directory)
    save_processor_config(
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
    return model


JINA_CONFIG_CODE = """
from transformers import PretrainedConfig


class TinyJinaConfig(PretrainedConfig):
    model_type = "tiny_jina_v4_test"

    def __init__(self, hidden_size=8, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""

# Stands in for the checkpoint's modeling file (which cannot be downloaded here) with the same
# encode_image signature; what is under test is the loader: local remote code, dtype, arguments.
JINA_MODEL_CODE = """
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
JINA_WIDTH = 8


def write_jina_code(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_tiny_jina.py").write_text(JINA_CONFIG_CODE)
    (directory / "modeling_tiny_jina.py").write_text(JINA_MODEL_CODE)
    auto_map = {
        "AutoConfig": "configuration_tiny_jina.TinyJinaConfig",
        "AutoModel": "modeling_tiny_jina.TinyJinaModel",
    }
    (directory / "config.json").write_text(
        json.dumps({"model_type": "tiny_jina_v4_test", "hidden_size": JINA_WIDTH, "auto_map": auto_map})
    )


def build_jina(directory: Path) -> Any:
    import transformers

    write_jina_code(directory)
    config = transformers.AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    model = transformers.AutoModel.from_config(config, trust_remote_code=True)
    model.save_pretrained(str(directory))
    return model
