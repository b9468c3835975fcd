"""A tiny Qwen2.5-VL checkpoint saved the way nomic-ai/nomic-embed-multimodal-3b is used through
colpali-engine: BiQwen2_5 weights + a BiQwen2_5_Processor (Qwen2-VL image processor, a Qwen2
tokenizer holding the chat/vision special tokens). Every layer type of the real model is there
(windowed + full-attention vision blocks, patch merger, M-RoPE decoder); only widths, depths and the
vocabulary are small: the 3B model cannot be initialised and run on this machine's CPUs in a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.models.parity import SEED

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen/Qwen2.5-VL-3B-Instruct's preprocessor_config.json, except max_pixels: 602,112 (768 merged
# visual tokens, the spec's stated bound) instead of 12,845,056, to keep the sequences short.
IMAGE_PROCESSOR = dict(
    min_pixels=3136,
    max_pixels=602112,
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
    resample=3,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)


def byte_level_tokenizer() -> Any:
    """A Qwen2 tokenizer over the 256 byte symbols (no merges) plus Qwen's special tokens."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.Qwen2Tokenizer(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


# Initial weight scale. At the usual 0.02 a two-layer random model's last-token state is mostly the
# token's own embedding, and a resample slip moves it by 3e-5 only; at 0.3 the image reaches it.
INIT_STD = 0.3


def tiny_config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    token = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        initializer_range=INIT_STD,
        text_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            bos_token_id=token("<|endoftext|>"),
            eos_token_id=token("<|im_end|>"),
            pad_token_id=token("<|endoftext|>"),
            initializer_range=INIT_STD,
            # head_dim 16: the three M-RoPE sections (time, height, width) split its 8 frequencies
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=112,
            initializer_range=INIT_STD,
        ),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )


def build_biqwen2_5(directory: Path) -> None:
    """Random BiQwen2_5 weights (seed SEED) and its processor, saved into `directory`."""
    import torch
    import transformers
    from colpali_engine.models import BiQwen2_5, BiQwen2_5_Processor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(SEED)
    BiQwen2_5(tiny_config(tokenizer)).eval().save_pretrained(str(directory))
    processor = BiQwen2_5_Processor(
        image_processor=Qwen2VLImageProcessor(**IMAGE_PROCESSOR),
        tokenizer=tokenizer,
        video_processor=transformers.Qwen2VLVideoProcessor(),
    )
    processor.save_pretrained(str(directory))


def add_lora_adapter(base: Path, directory: Path) -> None:
    """A LoRA adapter on `base` laid out like the published checkpoint (adapter_config.json naming
    its base model + adapter weights + the processor files). Its B matrices are random, not zero,
    so that the adapter changes the vectors."""
    import shutil

    import torch
    from colpali_engine.models import BiQwen2_5
    from peft import LoraConfig, get_peft_model

    from services.embedder.backends.nomic import checkpoint_key_mapping

    model = BiQwen2_5.from_pretrained(str(base), local_files_only=True, key_mapping=checkpoint_key_mapping())
    torch.manual_seed(SEED + 1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(str(directory))
    for path in base.iterdir():
        if path.suffix in (".json", ".jinja") and path.name not in ("config.json", "generation_config.json"):
            shutil.copy(path, directory / path.name)
