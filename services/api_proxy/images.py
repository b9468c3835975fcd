"""Make an image acceptable to a vendor and say what was done to it.

The original bytes go out untouched whenever the vendor accepts them (format, byte size, pixel
limits): results then describe exactly what the vendor saw. Otherwise the image is re-encoded
(EXIF orientation applied, alpha flattened on white) and, when over a pixel limit, downscaled
with Lanczos; every change is recorded on the PreparedImage and counted in the run's usage.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from services.common.images import DEFAULT_MAX_ASPECT_RATIO, shape_problem
from services.common.types import ErrorCode

# PIL names some camera JPEGs "MPO" (multi-picture); the bytes are a valid baseline JPEG.
_FORMAT_ALIASES = {"mpo": "jpeg", "jpg": "jpeg"}
MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}
# Tried in order when an over-size image must shrink in bytes (quality first, then pixels).
_JPEG_QUALITIES = (95, 90, 85, 75)
# Larger than any product photo, small enough that a decompression bomb is refused before decoding.
DEFAULT_MAX_INPUT_PIXELS = 64_000_000
# libjpeg cannot write a side longer than 65535 pixels; re-encoding to JPEG shrinks to fit first.
_JPEG_MAX_SIDE = 65_500


class ImageRejected(Exception):
    """An item that cannot be sent; carries the per-item error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What a vendor accepts for one image."""

    formats: frozenset[str]
    max_bytes: int
    max_pixels: int | None = None
    max_side: int | None = None
    # Vendors that count base64 text against max_bytes need the limit applied to 4/3 of the size.
    base64_counts: bool = False
    reencode_format: str = "jpeg"

    def fits_bytes(self, size: int) -> bool:
        encoded = math.ceil(size / 3) * 4 if self.base64_counts else size
        return encoded <= self.max_bytes

    def fits_pixels(self, width: int, height: int) -> bool:
        if self.max_pixels is not None and width * height > self.max_pixels:
            return False
        return self.max_side is None or max(width, height) <= self.max_side

    def describe(self) -> str:
        parts = [
            f"original bytes sent when format in {{{', '.join(sorted(self.formats))}}}",
            f"<= {self.max_bytes / 1_000_000:g} MB" + (" as base64" if self.base64_counts else ""),
        ]
        if self.max_pixels:
            parts.append(f"<= {self.max_pixels:,} pixels")
        if self.max_side:
            parts.append(f"<= {self.max_side} px per side")
        return (
            ", ".join(parts)
            + f"; otherwise re-encoded to {self.reencode_format.upper()} (EXIF orientation applied, alpha "
            "flattened on white, JPEG quality 95 lowered to 75 only if still too large) and downscaled "
            "with Lanczos to fit"
        )


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """The exact bytes that will be sent, with what was changed to get them."""

    data: bytes
    format: str
    width: int
    height: int
    sha256: str
    reencoded: bool = False
    downscaled: bool = False
    note: str = ""

    @property
    def mime(self) -> str:
        return MIME_TYPES[self.format]


def _open(data: bytes, max_input_pixels: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO):
    from PIL import Image

    if not data:
        raise ImageRejected(ErrorCode.INVALID_IMAGE, "empty image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own guard fires before ours above ~179 MP
        raise ImageRejected(ErrorCode.IMAGE_TOO_LARGE, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for garbage
        raise ImageRejected(ErrorCode.INVALID_IMAGE, f"not a readable image: {type(exc).__name__}") from None
    # The embedder's rule (pixels and aspect ratio), checked on the header before any decoding:
    # a thin image would cost the vendor (and our re-encoding) a resize to billions of pixels.
    problem = shape_problem(*image.size, max_input_pixels, max_aspect_ratio)
    if problem is not None:
        raise ImageRejected(ErrorCode.IMAGE_TOO_LARGE, problem)
    return image


def _decode_check(image) -> None:
    """Decode fully (at reduced scale for JPEG) so a truncated file fails here, not at the vendor."""
    try:
        if image.format == "JPEG" or image.format == "MPO":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(ErrorCode.INVALID_IMAGE, f"image does not decode: {exc}") from None


def _fit_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """Never larger than the input: re-encoding only shrinks, so its work is bounded by the input."""
    scale = 1.0
    max_side = limits.max_side
    if limits.reencode_format == "jpeg":
        max_side = min(max_side or _JPEG_MAX_SIDE, _JPEG_MAX_SIDE)
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if limits.max_pixels is not None:
        scale = min(scale, math.sqrt(limits.max_pixels / (width * height)))
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _encode(image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    try:
        if fmt == "jpeg":
            image.save(out, format="JPEG", quality=quality)
        else:
            image.save(out, format=fmt.upper())
    except (OSError, ValueError) as exc:  # an encoder's own size limits: this item's error only
        raise ImageRejected(
            ErrorCode.IMAGE_TOO_LARGE, f"cannot encode {image.width}x{image.height} as {fmt.upper()}: {exc}"
        ) from None
    return out.getvalue()


def _flatten(image):
    from PIL import ImageOps

    from services.common.images import to_rgb

    return to_rgb(ImageOps.exif_transpose(image))


def prepare(
    data: bytes,
    limits: ImageLimits,
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> PreparedImage:
    """The bytes to send for one image; raises ImageRejected for unusable input (over
    `max_input_pixels`, or longer side / shorter side over `max_aspect_ratio`)."""
    image = _open(data, max_input_pixels, max_aspect_ratio)
    source_format = (image.format or "").lower()
    source_format = _FORMAT_ALIASES.get(source_format, source_format)
    width, height = image.size
    _decode_check(image)
    if (
        source_format in limits.formats
        and limits.fits_bytes(len(data))
        and limits.fits_pixels(width, height)
    ):
        return PreparedImage(
            data=data, format=source_format, width=width, height=height,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    # Reopen: draft() above may have decoded at reduced scale.
    image = _flatten(_open(data, max_input_pixels, max_aspect_ratio))
    original_size = image.size
    target = limits.reencode_format
    fitted = _fit_size(image.width, image.height, limits)
    if fitted != image.size:
        image = image.resize(fitted, resample=_lanczos(), reducing_gap=3.0)
    qualities = _JPEG_QUALITIES if target == "jpeg" else (None,)
    while True:
        for quality in qualities:
            encoded = _encode(image, target, quality or 0)
            if limits.fits_bytes(len(encoded)):
                downscaled = image.size != original_size
                note = f"{source_format or 'unknown'}->{target}"
                if quality is not None:
                    note += f" q{quality}"
                if downscaled:
                    note += f" {original_size[0]}x{original_size[1]}->{image.width}x{image.height}"
                return PreparedImage(
                    data=encoded, format=target, width=image.width, height=image.height,
                    sha256=hashlib.sha256(encoded).hexdigest(), reencoded=True,
                    downscaled=downscaled, note=note,
                )
        if min(image.size) <= 16:
            raise ImageRejected(ErrorCode.IMAGE_TOO_LARGE, "cannot encode the image under the vendor's byte limit")
        # Still too many bytes at the lowest quality: shrink by 3/4 per side and try again.
        image = image.resize(
            (max(1, image.width * 3 // 4), max(1, image.height * 3 // 4)), resample=_lanczos(), reducing_gap=3.0
        )


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS
