"""Images reach each vendor within its limits; what was changed is recorded, nothing else is touched."""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest
from PIL import Image

from services.api_proxy.images import ImageLimits, ImageRejected, prepare
from services.api_proxy.providers.registry import PROVIDERS
from services.common.types import ErrorCode, ImageItem
from tests.fakes.images import make_image
from tests.fakes.proxy import proxied

JPEG_PNG = ImageLimits(formats=frozenset({"jpeg", "png"}), max_bytes=1_000_000, max_side=256)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_accepted_images_go_out_byte_for_byte():
    original = make_image(1, fmt="PNG")
    prepared = prepare(original, JPEG_PNG)
    assert prepared.data is original and not prepared.reencoded and prepared.note == ""
    assert prepared.sha256 == hashlib.sha256(original).hexdigest() and prepared.mime == "image/png"


def test_an_unaccepted_format_is_reencoded_to_jpeg_and_said_so():
    prepared = prepare(make_image(2, fmt="WEBP", quality=90), JPEG_PNG)
    assert prepared.reencoded and not prepared.downscaled
    assert prepared.note == "webp->jpeg q95" and decoded(prepared.data).format == "JPEG"


def test_oversized_images_are_downscaled_keeping_the_aspect_ratio():
    prepared = prepare(make_image(3, size=(600, 300)), JPEG_PNG)
    assert prepared.downscaled and (prepared.width, prepared.height) == (256, 128)
    assert decoded(prepared.data).size == (256, 128)
    assert "600x300->256x128" in prepared.note


def test_pixel_limits_downscale_under_the_cap():
    limits = ImageLimits(formats=frozenset({"jpeg"}), max_bytes=10_000_000, max_pixels=10_000)
    prepared = prepare(make_image(4, size=(200, 100)), limits)
    assert prepared.width * prepared.height <= 10_000 and prepared.downscaled


def test_byte_limits_lower_quality_then_pixels_until_it_fits():
    noisy = make_image(5, size=(400, 400), fmt="PNG")
    limits = ImageLimits(formats=frozenset({"jpeg"}), max_bytes=40_000, base64_counts=True)
    prepared = prepare(noisy, limits)
    assert limits.fits_bytes(len(prepared.data)) and prepared.reencoded
    assert len(prepared.data) * 4 / 3 <= 40_000 + 4


def test_alpha_is_flattened_on_white_and_exif_orientation_applied():
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    prepared = prepare(out.getvalue(), ImageLimits(formats=frozenset({"jpeg"}), max_bytes=10**6))
    assert decoded(prepared.data).getpixel((5, 5)) == pytest.approx((255, 255, 255), abs=3)

    rotated = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = io.BytesIO()
    rotated.save(out, format="WEBP", exif=exif.tobytes())
    prepared = prepare(out.getvalue(), ImageLimits(formats=frozenset({"jpeg"}), max_bytes=10**6))
    assert (prepared.width, prepared.height) == (20, 40)


@pytest.mark.parametrize("data,code", [
    (b"", ErrorCode.INVALID_IMAGE),
    (b"not an image at all", ErrorCode.INVALID_IMAGE),
    (make_image(6)[:200], ErrorCode.INVALID_IMAGE),
])
def test_unusable_input_is_refused_with_a_code(data, code):
    with pytest.raises(ImageRejected) as error:
        prepare(data, JPEG_PNG)
    assert error.value.code == code


def test_decompression_bombs_are_refused_before_decoding():
    out = io.BytesIO()
    Image.new("L", (3000, 3000)).save(out, format="PNG")  # 9 Mpx in a few KB
    with pytest.raises(ImageRejected) as error:
        prepare(out.getvalue(), JPEG_PNG, max_input_pixels=1_000_000)
    assert error.value.code == ErrorCode.IMAGE_TOO_LARGE


def test_pillows_own_bomb_guard_is_image_too_large_not_invalid(monkeypatch):
    # Pillow refuses headers over 2x MAX_IMAGE_PIXELS inside Image.open, before our own check.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    out = io.BytesIO()
    Image.new("L", (3000, 3000)).save(out, format="PNG")
    with pytest.raises(ImageRejected) as error:
        prepare(out.getvalue(), JPEG_PNG)
    assert error.value.code == ErrorCode.IMAGE_TOO_LARGE

def test_titan_gets_jpeg_within_2048_pixels_and_the_run_counts_it(monkeypatch):
    """A 2600x1300 WebP goes to Titan (JPEG/PNG, <= 2048 per side) re-encoded and downscaled."""
    big = Image.new("RGB", (2600, 1300), (120, 30, 200))
    out = io.BytesIO()
    big.save(out, format="WEBP")

    async def scenario():
        async with proxied("titan", monkeypatch) as (fake, model):
            results = await model.embed([ImageItem("big", out.getvalue()), ImageItem("bad", b"\x00garbage")])
            return fake, results, model.usage(), model.info()

    fake, (good, bad), usage, info = asyncio.run(scenario())
    assert good.ok and fake.rejections == []
    sent = decoded(fake.images_embedded[0])
    assert sent.format == "JPEG" and sent.size == (2048, 1024)
    assert bad.error.code == ErrorCode.INVALID_IMAGE
    assert usage["images_reencoded"] == 1 and usage["images_downscaled"] == 1
    assert "2048 px per side" in info.preprocessing and "re-encoded to JPEG" in info.preprocessing


def test_every_provider_declares_formats_it_can_reencode_to():
    for provider in PROVIDERS.values():
        for spec in provider.models.values():
            assert spec.images.reencode_format in spec.images.formats, provider.name


def test_re_encoding_uses_the_embedders_rgb_conversion():
    """One conversion for both services: 16-bit grey is scaled by range (not clipped), PA works."""
    import numpy as np
    from PIL import Image

    from services.common.images import to_rgb

    grey16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("PA", (4, 4))).mode == "RGB"


def thin_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 90).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("size", [(60000, 1), (1, 20000)])
def test_thin_images_are_refused_before_reencoding_or_sending(size):
    data = thin_png(*size)
    for limits in (JPEG_PNG, ImageLimits(formats=frozenset({"jpeg"}), max_bytes=10_000_000)):
        with pytest.raises(ImageRejected) as error:
            prepare(data, limits)
        assert error.value.code == ErrorCode.IMAGE_TOO_LARGE and "aspect ratio" in str(error.value)


def test_aspect_ratio_limit_is_a_parameter():
    data = thin_png(3000, 10)
    limits = ImageLimits(formats=frozenset({"png"}), max_bytes=1_000_000)
    prepared = prepare(data, limits, max_aspect_ratio=1000)
    assert (prepared.width, prepared.height, prepared.reencoded) == (3000, 10, False)
    with pytest.raises(ImageRejected):
        prepare(data, limits)


def test_jpeg_reencoding_shrinks_past_libjpegs_side_limit_instead_of_failing():
    data = thin_png(70000, 100)  # PNG is not accepted below: must become a JPEG
    limits = ImageLimits(formats=frozenset({"jpeg"}), max_bytes=10_000_000)
    prepared = prepare(data, limits, max_aspect_ratio=1000)
    assert prepared.format == "jpeg" and prepared.downscaled and prepared.width <= 65_500
    assert decoded(prepared.data).size == (prepared.width, prepared.height)
