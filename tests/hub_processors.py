"""The published checkpoints' preprocessor_config.json values, as the hub repos ship them: shared by
the tiny checkpoints of the contract tests and the full-size random checkpoints of tests/models."""

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# facebook/dinov2-large
DINOV2_PROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "do_convert_rgb": True,
}

# facebook/dinov3-vitl16-pretrain-lvd1689m
DINOV3_PROCESSOR = {
    "image_processor_type": "DINOv3ViTImageProcessorFast",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}

# google/siglip2-so400m-patch14-384
SIGLIP_384_PROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
