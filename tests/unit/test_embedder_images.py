"""services.embedder.images: what users really upload decodes to the right RGB image, and
everything else becomes a typed per-item error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.common.types import ErrorCode
from services.embedder.images import DecodeLimits, ImageError, ImageTooLarge, InvalidImage, decode_image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def two_colour(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: shows which way a rotation went."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR for a huge RGB image, with a tiny IDAT: a decompression bomb's
    header (a real bomb's IDAT would inflate to width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def assert_error(data: bytes, code: ErrorCode, limits: DecodeLimits | None = None) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, limits) if limits else decode_image(data)
    assert caught.value.code == code, caught.value
    assert str(caught.value)
    return caught.value


def test_plain_jpeg_decodes_to_rgb_of_its_size():
    image = decode_image(encode(two_colour(), "JPEG", quality=95))
    assert image.mode == "RGB" and image.size == (40, 20)


def test_exif_rotated_jpeg_is_turned_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be rotated 90 degrees clockwise to view
    data = encode(two_colour(40, 20), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data)
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    # Red (stored left) ends up on top after a clockwise turn, blue at the bottom.
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta + yellow: red
    image = decode_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    r, g, b = np.asarray(image)[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_greyscale_png_is_scaled_not_clipped():
    values = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bit
    values[0, 0] = 65535
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = np.asarray(decode_image(data)).astype(int)
    assert abs(pixels[4, 4, 0] - 128) <= 1  # Pillow's own convert("RGB") would give 255
    assert tuple(pixels[0, 0]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    palette_image = Image.new("P", (10, 10), 0)
    palette_image.putpalette([0, 0, 0, 200, 0, 0] + [0] * (256 * 3 - 6))
    palette_image.paste(1, (0, 0, 5, 10))  # left half: colour 1 (dark red), right: colour 0
    data = encode(palette_image, "PNG", transparency=0)  # colour 0 is transparent
    pixels = np.asarray(decode_image(data)).astype(int)
    assert tuple(pixels[5, 2]) == (200, 0, 0)
    assert tuple(pixels[5, 8]) == (255, 255, 255)  # transparent black -> white, not black


@pytest.mark.parametrize("mode,colour", [("RGBA", (0, 0, 255, 0)), ("LA", (0, 0))])
def test_alpha_modes_are_composited_on_white(mode, colour):
    image = Image.new(mode, (6, 6), colour)
    pixels = np.asarray(decode_image(encode(image, "PNG")))
    assert (pixels == 255).all()


def test_half_transparent_rgba_blends_with_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    r, g, b = np.asarray(decode_image(encode(image, "PNG")))[0, 0].astype(int)
    assert 120 <= r <= 135 and r == g == b


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    r, g, b = np.asarray(decode_image(data))[6, 6].astype(int)
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_other_modes_convert_to_rgb(mode):
    image = two_colour().convert(mode)
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.mode == "RGB" and decoded.size == (40, 20)


def test_webp_and_bmp_and_tiff_decode():
    for fmt in ("BMP", "TIFF"):
        assert decode_image(encode(two_colour(), fmt)).size == (40, 20)
    if "WEBP" in Image.registered_extensions().values():
        assert decode_image(encode(two_colour(), "WEBP")).size == (40, 20)


def test_truncated_jpeg_is_invalid_image():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG", quality=90)
    error = assert_error(data[: len(data) // 2], ErrorCode.INVALID_IMAGE)
    assert isinstance(error, InvalidImage)


def test_truncated_png_is_invalid_image():
    data = encode(Image.effect_noise((64, 64), 50), "PNG")
    assert_error(data[: len(data) - 40], ErrorCode.INVALID_IMAGE)


def test_zero_bytes_is_invalid_image():
    error = assert_error(b"", ErrorCode.INVALID_IMAGE)
    assert "empty" in str(error)


def test_text_bytes_are_invalid_image():
    assert_error(b"this is not an image, it is a sentence.\n" * 10, ErrorCode.INVALID_IMAGE)


def test_html_error_page_is_invalid_image():
    assert_error(b"<html><body>403 Forbidden</body></html>", ErrorCode.INVALID_IMAGE)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "width,height",
    [
        (9000, 8000),  # 72 MP: only our 64 MP limit catches it (Pillow's default is 89 MP)
        (12000, 10000),  # 120 MP: Pillow would only warn
        (100000, 100000),  # 10 GP: Pillow itself raises DecompressionBombError
    ],
)
def test_decompression_bomb_header_is_image_too_large(width, height):
    error = assert_error(png_header_claiming(width, height), ErrorCode.IMAGE_TOO_LARGE)
    assert isinstance(error, ImageTooLarge)


def test_pixel_limit_is_configurable():
    data = encode(two_colour(40, 20), "PNG")
    assert_error(data, ErrorCode.IMAGE_TOO_LARGE, DecodeLimits(max_pixels=799))
    assert decode_image(data, DecodeLimits(max_pixels=800)).size == (40, 20)


def test_byte_limit_is_configurable():
    data = encode(two_colour(40, 20), "PNG")
    assert_error(data, ErrorCode.IMAGE_TOO_LARGE, DecodeLimits(max_bytes=len(data) - 1))


def test_pillow_global_limit_lowered_still_gives_a_typed_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert_error(encode(two_colour(40, 20), "PNG"), ErrorCode.IMAGE_TOO_LARGE)  # 800 > 2 * 100


def test_pillow_warning_turned_into_error_still_gives_a_typed_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.warns(Image.DecompressionBombWarning):
        decode_image(encode(two_colour(40, 20), "PNG"))  # 800 px: Pillow warns, ours allows
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert_error(encode(two_colour(40, 20), "PNG"), ErrorCode.IMAGE_TOO_LARGE)


def test_corrupt_bytes_inside_a_valid_header_never_raise_anything_else():
    rng = np.random.default_rng(0)
    data = bytearray(encode(Image.effect_noise((48, 48), 40).convert("RGB"), "JPEG"))
    for _ in range(30):
        damaged = bytearray(data)
        for position in rng.integers(20, len(damaged), size=20):
            damaged[position] = int(rng.integers(0, 256))
        try:
            image = decode_image(bytes(damaged))
        except ImageError as exc:
            # A damaged header can also declare an absurd size or aspect ratio: refused as too
            # large before anything is allocated. (effect_noise is not seeded: any case can occur.)
            assert exc.code in (ErrorCode.INVALID_IMAGE, ErrorCode.IMAGE_TOO_LARGE)
        else:
            assert image.mode == "RGB"


def thin_png(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 128), "PNG")


@pytest.mark.parametrize("size", [(60000, 1), (1, 20000), (3300, 100)])
def test_thin_images_are_refused_from_the_header_by_aspect_ratio(size):
    data = thin_png(*size)
    assert len(data) < 2000  # a few hundred bytes that would resize to billions of pixels
    error = assert_error(data, ErrorCode.IMAGE_TOO_LARGE)
    assert "aspect ratio" in str(error) and "32:1" in str(error)


def test_aspect_ratio_limit_is_configurable_and_inclusive():
    data = thin_png(640, 20)  # 32:1 exactly
    assert decode_image(data).size == (640, 20)
    assert_error(data, ErrorCode.IMAGE_TOO_LARGE, DecodeLimits(max_aspect_ratio=31))
    assert decode_image(thin_png(60000, 1), DecodeLimits(max_aspect_ratio=100000)).size == (60000, 1)
