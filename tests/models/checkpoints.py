"""The published models' architectures as transformers configs, and random checkpoints of them
(fixed seed) saved the way the hub repos lay them out: config.json + model.safetensors +
preprocessor_config.json. Values come from the named hub repos' config files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hub_processors import DINOV2_PROCESSOR, DINOV3_PROCESSOR, SIGLIP_384_PROCESSOR
from tests.models.parity import SEED


@dataclass(frozen=True)
class HFCheckpoint:
    repo: str  # the hub repo whose config this is
    model_class: str  # transformers class the checkpoint is saved as
    config_class: str
    config: dict[str, Any]
    processor: dict[str, Any] = field(default_factory=dict)  # preprocessor_config.json


# facebook/dinov2-large config.json and preprocessor_config.json.
DINOV2_LARGE = HFCheckpoint(
    repo="facebook/dinov2-large",
    model_class="Dinov2Model",
    config_class="Dinov2Config",
    config=dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        use_swiglu_ffn=False,
    ),
    processor=DINOV2_PROCESSOR,
)

# facebook/dinov3-vitl16-pretrain-lvd1689m config.json. layerscale_value there (1e-5) is only the
# initial gamma: trained gammas are far larger, and at 1e-5 a random network would be the identity
# through all 24 blocks, so the random checkpoint starts them at 1.0.
DINOV3_VITL16 = HFCheckpoint(
    repo="facebook/dinov3-vitl16-pretrain-lvd1689m",
    model_class="DINOv3ViTModel",
    config_class="DINOv3ViTConfig",
    config=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=16,
        image_size=224,
        num_register_tokens=4,
        rope_theta=100.0,
        layer_norm_eps=1e-5,
        query_bias=True,
        key_bias=False,
        value_bias=True,
        proj_bias=True,
        mlp_bias=True,
        use_gated_mlp=False,
        layerscale_value=1.0,
    ),
    processor=DINOV3_PROCESSOR,
)

# google/siglip2-so400m-patch14-384: a FixRes checkpoint saved as SigLIP-v1 classes (model_type
# "siglip"). Vision tower as published; the text tower (unused by image features) is cut to one
# layer and a 256-token vocabulary to save 1.1 GB of random weights.
SIGLIP2_SO400M_384 = HFCheckpoint(
    repo="google/siglip2-so400m-patch14-384",
    model_class="SiglipModel",
    config_class="SiglipConfig",
    config=dict(
        vision_config=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            patch_size=14,
            image_size=384,
        ),
        text_config=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=1,
            num_attention_heads=16,
            vocab_size=256,
            max_position_embeddings=64,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    ),
    # The checkpoint's preprocessor_config.json (the values shipped_specs' note states).
    processor=SIGLIP_384_PROCESSOR,
)


def build_hf_checkpoint(checkpoint: HFCheckpoint, directory: Path) -> Any:
    """Random weights (seed SEED) of `checkpoint`'s architecture saved into `directory`; returns
    the model (eval mode, float32)."""
    import torch
    import transformers

    torch.manual_seed(SEED)
    config = getattr(transformers, checkpoint.config_class)(**checkpoint.config)
    model = getattr(transformers, checkpoint.model_class)(config).eval()
    model.save_pretrained(str(directory))
    if checkpoint.processor:
        (directory / "preprocessor_config.json").write_text(json.dumps(checkpoint.processor, indent=2))
    return model
