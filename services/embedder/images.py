"""Encoded bytes -> one RGB PIL image, the way users actually send them.

Every failure is an `ImageError` carrying its `ErrorCode`, so one bad upload becomes one per-item
error and never an exception that escapes a batch or crashes the server.

Choices (recorded here because they change vectors):
- EXIF orientation is applied (phones store rotated pixels plus a tag).
- Transparency (RGBA, LA, palette with a transparent colour, PA) is composited on WHITE: product
  photos are shot and cut out on white, and a transparent cut-out pasted on black would look like
  a different image to the model.
- 16-bit and 32-bit integer greyscale is scaled to 8 bit by its type's range, not clipped
  (Pillow's own convert("RGB") clips I;16 at 255, turning most photos white).
- CMYK uses Pillow's conversion (Adobe-inverted JPEGs are handled by the decoder); embedded ICC
  profiles are not applied.
- Animated images (GIF, APNG, WebP) and multi-page files (TIFF, MPO) give their first frame.
- Aspect-ratio limit (default 32:1): models resize the SHORT side to their input size, so a thin
  image (60000x1, 256 bytes) would grow to billions of pixels after resizing; refused from the
  header, before any pixel is decoded (services.common.images.shape_problem).
- Pixel limit: our own check on the header size before any pixel is decoded (default 64 MP,
  below Pillow's 89 MP default). Pillow's global MAX_IMAGE_PIXELS guard may fire first for even
  larger headers; both answer IMAGE_TOO_LARGE, so Pillow's setting never decides the outcome for
  images under our limit unless someone lowered it below ours.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.images import DEFAULT_MAX_ASPECT_RATIO, shape_problem, to_rgb
from services.common.types import ErrorCode

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024



class ImageError(Exception):
    """A per-item failure while decoding; `code` is what the caller reports."""

    code: ErrorCode = ErrorCode.INVALID_IMAGE


class InvalidImage(ImageError):
    code = ErrorCode.INVALID_IMAGE


class ImageTooLarge(ImageError):
    code = ErrorCode.IMAGE_TOO_LARGE


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO


DEFAULT_LIMITS = DecodeLimits()


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode `data` into a fully loaded RGB image or raise ImageError."""
    if not data:
        raise InvalidImage("empty image data (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    image = _open(data, limits)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise InvalidImage(f"cannot decode {image.format or 'image'}: {exc}") from exc
    image = _apply_orientation(image)
    try:
        return to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InvalidImage(f"cannot convert mode {image.mode} to RGB: {exc}") from exc


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Lazy open (reads the header only) plus our own pixel and aspect-ratio limits."""
    try:
        # Not wrapped in warnings.catch_warnings: that swaps process-global state and is unsafe on
        # decode threads. Pillow's DecompressionBombWarning is only an exception when warnings
        # are turned into errors; either way the image is over Pillow's limit.
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a recognised image format") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt header can raise almost anything
        raise InvalidImage(f"cannot read image header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    problem = shape_problem(width, height, limits.max_pixels, limits.max_aspect_ratio)
    if problem is not None:
        raise ImageTooLarge(problem)
    return image


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a decodable image
        return image


