"""The report's open models as data, registered with the backend registry on import.

The registry imports this module the first time a spec is looked up (registry.SPEC_MODULES).
Nothing here imports a model library: each kind's loader is a "module:function" string, and its
options model (services.embedder.backends.options) is plain pydantic.

These models are preprocessed by their own library (image processor, open_clip transform, remote
code), so `preprocessing` is None and `preprocessing_note` states what the published checkpoint's
config says; a loaded backend reports what it actually applies in `info().preprocessing`.
`weights` is the Hugging Face id searched in the offline hub cache when no --weights is given.
"""

from __future__ import annotations

from services.embedder.backends.options import JinaOptions, NomicOptions, OpenClipOptions, TransformersOptions
from services.embedder.backends.registry import BackendKind, RegisteredModel, register, register_kind

HF_KINDS: tuple[BackendKind, ...] = (
    BackendKind(
        "hf",
        TransformersOptions,
        "services.embedder.backends.hf:load",
        "a transformers vision model with its own image processor and a named pooling",
    ),
    BackendKind(
        "open_clip",
        OpenClipOptions,
        "services.embedder.backends.open_clip_backend:load",
        "any open_clip model (hub checkpoint, or config name + pretrained tag / weights file) with the "
        "transform open_clip builds (extra 'openclip')",
    ),
    BackendKind(
        "jina",
        JinaOptions,
        "services.embedder.backends.jina:load",
        "Jina Embeddings v4 through its own remote code",
    ),
    BackendKind(
        "nomic",
        NomicOptions,
        "services.embedder.backends.nomic:load",
        "Nomic Embed Multimodal through colpali-engine (extra 'nomic')",
    ),
)

_IMAGENET = "mean=[0.485, 0.456, 0.406] std=[0.229, 0.224, 0.225]"
_HALF = "mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5]"
_QWEN_VL = "Qwen2.5-VL dynamic resolution: smart_resize to multiples of 28 within 3,136..602,112 pixels"

HF_MODEL_SPECS: tuple[RegisteredModel, ...] = (
    RegisteredModel(
        name="dinov2-large",
        kind="hf",
        weights="facebook/dinov2-large",
        preprocessing_note="resize shortest edge 256 bicubic; center crop 224x224; rescale 1/255; "
        f"normalize {_IMAGENET}",
        pooling="pooler_output: CLS token of the layer-normed sequence",
        dim=1024,
        notes="DINOv2 ViT-L/14 (Dinov2Model), self-supervised on LVD-142M.",
        licence="Apache-2.0",
        options={"model_class": "AutoModel", "pooling": "pooler"},
    ),
    RegisteredModel(
        name="dinov3-vitl16",
        kind="hf",
        weights="facebook/dinov3-vitl16-pretrain-lvd1689m",
        # The official transform (facebookresearch/dinov3 README, make_transform): the uint8 image is
        # resized, then scaled; transformers' processor scales first (hf_processors has the port).
        preprocessing_note="resize 224x224 (aspect not kept) bilinear antialias on the uint8 image; "
        f"rescale 1/255; normalize {_IMAGENET}",
        pooling="pooler_output: CLS token of the normed sequence",
        dim=1024,
        notes="DINOv3 ViT-L/16 distilled (DINOv3ViTModel); gated on the Hub (licence to accept).",
        licence="DINOv3 License",
        options={"model_class": "AutoModel", "pooling": "pooler"},
    ),
    RegisteredModel(
        name="siglip2-so400m-384",
        kind="hf",
        weights="google/siglip2-so400m-patch14-384",
        # google/siglip2-so400m-patch14-384 preprocessor_config.json: SiglipImageProcessor, size
        # 384x384, rescale_factor 1/255, image_mean = image_std = [0.5]*3, resample 2 (bilinear; as
        # recalled from the published file, which cannot be fetched here to re-check: the backend
        # applies whatever the checkpoint's own file says, and records it).
        preprocessing_note=f"resize 384x384 (aspect not kept) bilinear (resample 2, read from "
        f"preprocessor_config.json at load); rescale 1/255; normalize {_HALF}",
        pooling="map: vision tower pooler_output (attention-pooling head), = SiglipModel.get_image_features",
        dim=1152,
        notes="SigLIP 2 So400m/14 FixRes 384. The FixRes checkpoints are SigLIP-v1 graphs (model_type "
        "'siglip'); only the vision tower (SiglipVisionModel) is loaded.",
        licence="Apache-2.0",
        options={"model_class": "SiglipVisionModel", "pooling": "pooler"},
    ),
    # Any local transformers directory with a preprocessor_config.json (needs --weights); the
    # pooling can also be overridden per load (load_backend(..., pooling="mean")).
    RegisteredModel(
        name="hf-automodel",
        kind="hf",
        preprocessing_note="the directory's own preprocessor_config.json",
        pooling="pooler_output",
        notes="Generic transformers AutoModel; pooling options: pooler, cls, mean.",
        options={"model_class": "AutoModel", "pooling": "pooler"},
    ),
    RegisteredModel(
        name="hf-automodel-cls",
        kind="hf",
        preprocessing_note="the directory's own preprocessor_config.json",
        pooling="cls: last_hidden_state[:, 0]",
        notes="Generic transformers AutoModel, first token of the last hidden state.",
        options={"model_class": "AutoModel", "pooling": "cls"},
    ),
    RegisteredModel(
        name="hf-automodel-mean",
        kind="hf",
        preprocessing_note="the directory's own preprocessor_config.json",
        pooling="mean: last_hidden_state averaged over all tokens",
        notes="Generic transformers AutoModel, mean of the last hidden state.",
        options={"model_class": "AutoModel", "pooling": "mean"},
    ),
    RegisteredModel(
        name="pe-core-l14-336",
        kind="open_clip",
        weights="timm/PE-Core-L-14-336",
        preprocessing_note="open_clip transform: resize 336x336 (aspect not kept) bilinear; rescale 1/255; "
        f"normalize {_HALF}",
        pooling="map: model.encode_image (attention-pooling head of the image tower)",
        dim=1024,
        notes="Perception Encoder Core L/14 @336 via open_clip config PE-Core-L-14-336 "
        "(timm vit_pe_core_large_patch14_336; open_clip tag 'meta' names the same hub repo). "
        "Needs the 'openclip' extra (torchvision).",
        options={"open_clip_name": "PE-Core-L-14-336"},
    ),
    RegisteredModel(
        name="jina-embeddings-v4",
        kind="jina",
        weights="jinaai/jina-embeddings-v4",
        preprocessing_note=f"{_QWEN_VL}; inside the model's encode_image",
        pooling="encode_image(task='retrieval', return_multivector=False): "
        "mean over the image tokens, L2-normalised",
        dim=2048,
        normalized=True,
        notes="Qwen2.5-VL-3B with LoRA task adapters, loaded from its own remote code "
        "(trust_remote_code, peft); bf16 on GPU, fp32 on CPU. "
        "Matryoshka: the first 128..1024 dims are usable alone.",
        options={"task": "retrieval", "min_pixels": 3136, "max_pixels": 602112},
    ),
    RegisteredModel(
        name="nomic-embed-multimodal-3b",
        kind="nomic",
        weights="nomic-ai/nomic-embed-multimodal-3b",
        preprocessing_note=f"BiQwen2_5_Processor.process_images ({_QWEN_VL.split(':')[0]})",
        pooling="last token of the left-padded sequence, L2-normalised (BiQwen2_5)",
        dim=2048,
        normalized=True,
        notes="LoRA adapter on Qwen2.5-VL-3B through colpali-engine; the base model must be available "
        "offline too. Needs the 'nomic' extra (colpali-engine, torchvision).",
    ),
)


def register_all() -> None:
    for kind in HF_KINDS:
        register_kind(kind, replace=True)
    for spec in HF_MODEL_SPECS:
        register(spec)


register_all()
