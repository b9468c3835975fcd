"""Turn a clean catalog photo into a "user-captured" query, the way the seed report describes real
queries: another viewpoint and framing, cluttered backgrounds, occlusion, uneven lighting and
reflections, blur, low resolution and compression.

Pillow + numpy only. Every random choice comes from the caller's numpy Generator, so a query is a
pure function of (photo, backgrounds, seed); each step returns the parameters it drew, which the
build records next to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Params = dict[str, Any]


@dataclass(frozen=True)
class Photo:
    name: str
    image: Image.Image  # RGB


# ---- geometry -----------------------------------------------------------------------------


def perspective_coefficients(output_quad: np.ndarray, input_quad: np.ndarray) -> tuple[float, ...]:
    """The 8 numbers Image.transform(PERSPECTIVE) wants: they map each output pixel (x, y) to the
    input pixel ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1)); solved from
    four corner correspondences."""
    system = np.zeros((8, 8))
    rhs = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(output_quad, input_quad)):
        system[2 * i] = [x, y, 1, 0, 0, 0, -x * u, -y * u]
        system[2 * i + 1] = [0, 0, 0, x, y, 1, -x * v, -y * v]
        rhs[2 * i], rhs[2 * i + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(system, rhs))


def random_crop_box(
    rng: np.random.Generator, size: tuple[int, int], area: tuple[float, float], aspect: float | None = None
) -> tuple[int, int, int, int]:
    """A box covering a random fraction of the image; with `aspect` (w/h) it has that shape."""
    width, height = size
    fraction = rng.uniform(*area)
    if aspect is None:
        aspect = (width / height) * float(np.exp(rng.uniform(-0.25, 0.25)))
    box_w = min(width, np.sqrt(fraction * width * height * aspect))
    box_h = min(height, box_w / aspect)
    box_w = min(width, box_h * aspect)
    left = rng.uniform(0, width - box_w)
    top = rng.uniform(0, height - box_h)
    return (round(left), round(top), round(left + box_w), round(top + box_h))


def rectangle(width: float, height: float) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=float)


def rotate_points(points: np.ndarray, degrees: float) -> np.ndarray:
    centre = points.mean(axis=0)
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ rotation.T + centre


def background_canvas(
    rng: np.random.Generator, backgrounds: Sequence[Photo], size: tuple[int, int]
) -> tuple[Image.Image, Params]:
    """A crop of a clutter photo, tinted and possibly mirrored, at the canvas size."""
    photo = backgrounds[int(rng.integers(len(backgrounds)))]
    box = random_crop_box(rng, photo.image.size, (0.3, 1.0), aspect=size[0] / size[1])
    canvas = photo.image.crop(box).resize(size, Image.Resampling.BILINEAR)
    mirrored = bool(rng.random() < 0.5)
    if mirrored:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    tint = rng.uniform(0.75, 1.2, size=3)
    canvas = Image.fromarray(np.clip(np.asarray(canvas, dtype=np.float32) * tint, 0, 255).astype(np.uint8))
    return canvas, {
        "background": photo.name,
        "background_box": list(box),
        "mirrored": mirrored,
        "tint": np.round(tint, 3).tolist(),
    }


# ---- framing: how the object lands in the picture -----------------------------------------


def frame_filled(
    rng: np.random.Generator, photo: Image.Image, canvas_size: tuple[int, int], backgrounds: Sequence[Photo]
) -> tuple[Image.Image, Params]:
    """The object fills the frame: a closer, tilted view of part of it (no background visible)."""
    box = random_crop_box(rng, photo.size, (0.45, 0.9))
    left, top, right, bottom = box
    quad = rectangle(right - left, bottom - top) + [left, top]
    jitter = rng.uniform(-0.12, 0.12, size=(4, 2)) * [right - left, bottom - top]
    angle = float(np.clip(rng.normal(0, 8), -20, 20))
    quad = rotate_points(quad + jitter, angle)
    quad = np.clip(quad, 0, [photo.width - 1, photo.height - 1])
    aspect = (right - left) / (bottom - top)
    canvas_long = max(canvas_size)
    size = (
        (canvas_long, max(1, round(canvas_long / aspect)))
        if aspect >= 1
        else (max(1, round(canvas_long * aspect)), canvas_long)
    )
    coefficients = perspective_coefficients(rectangle(*size), quad)
    image = photo.transform(size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR)
    return image, {
        "framing": "filled",
        "crop": list(box),
        "corner_jitter": np.round(jitter, 1).tolist(),
        "rotation_deg": round(angle, 2),
    }


def frame_pasted(
    rng: np.random.Generator, photo: Image.Image, canvas_size: tuple[int, int], backgrounds: Sequence[Photo]
) -> tuple[Image.Image, Params]:
    """The object, seen at an angle, lies in a cluttered scene (possibly cut by the frame), with
    a soft shadow under it."""
    box = random_crop_box(rng, photo.size, (0.6, 1.0))
    obj = photo.crop(box)
    scale = rng.uniform(0.5, 0.85) * max(canvas_size) / max(obj.size)
    obj = obj.resize(
        (max(8, round(obj.width * scale)), max(8, round(obj.height * scale))), Image.Resampling.BICUBIC
    )
    # Viewpoint: the object's rectangle lands on a random quadrilateral inside its own box.
    inset = rng.uniform(0, 0.2, size=(4, 2)) * obj.size
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    target = rectangle(*obj.size) + signs * inset
    coefficients = perspective_coefficients(target, rectangle(*obj.size))
    rgba = obj.convert("RGBA")
    warped = rgba.transform(
        obj.size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0, 0)
    )
    quarter_turn = bool(rng.random() < 0.15)
    angle = float(np.clip(rng.normal(0, 15), -35, 35)) + (90.0 * rng.choice([-1, 1]) if quarter_turn else 0.0)
    warped = warped.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0, 0))
    canvas, params = background_canvas(rng, backgrounds, canvas_size)
    # Keep most of the object in view; a little may fall outside the frame.
    margin_x = max(0, canvas.width - warped.width) + 0.15 * warped.width
    margin_y = max(0, canvas.height - warped.height) + 0.15 * warped.height
    x = round(rng.uniform(0, margin_x) - 0.075 * warped.width - max(0, warped.width - canvas.width) / 2)
    y = round(rng.uniform(0, margin_y) - 0.075 * warped.height - max(0, warped.height - canvas.height) / 2)
    alpha = warped.getchannel("A").filter(ImageFilter.BoxBlur(1))
    shadow = bool(rng.random() < 0.6)
    if shadow:
        offset = rng.integers(3, 12, size=2)
        darkness = rng.uniform(0.3, 0.6)
        # A soft shadow needs no detail: blur at a quarter of the size.
        quarter = alpha.resize(
            (max(1, alpha.width // 4), max(1, alpha.height // 4)), Image.Resampling.BILINEAR
        )
        shade = quarter.filter(ImageFilter.GaussianBlur(1.5)).resize(alpha.size, Image.Resampling.BILINEAR)
        shade = shade.point(lambda v, d=darkness: round(v * d))
        canvas.paste((0, 0, 0), (x + int(offset[0]), y + int(offset[1])), shade)
        params["shadow"] = {"offset": offset.tolist(), "darkness": round(float(darkness), 3)}
    canvas.paste(warped.convert("RGB"), (x, y), alpha)
    params.update(
        {
            "framing": "pasted",
            "crop": list(box),
            "scale": round(float(scale), 3),
            "corner_inset": np.round(inset, 1).tolist(),
            "rotation_deg": round(angle, 2),
            "position": [x, y],
        }
    )
    return canvas, params


FRAMINGS = {"filled": frame_filled, "pasted": frame_pasted}
FRAMING_WEIGHTS = {"filled": 0.4, "pasted": 0.6}


# ---- photometric steps, on float32 HxWx3 arrays in 0..255 -----------------------------------


def occlude(rng: np.random.Generator, pixels: np.ndarray, backgrounds: Sequence[Photo]) -> Params | None:
    """Something in front of the object (a hand, a tool): a soft-edged blob of another photo."""
    if rng.random() >= 0.3:
        return None
    height, width = pixels.shape[:2]
    photo = backgrounds[int(rng.integers(len(backgrounds)))]
    radius = rng.uniform(0.12, 0.25, size=2) * min(width, height)
    centre = rng.uniform([0, 0], [width, height])
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([*(centre - radius), *(centre + radius)], fill=255)
    weight = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)[..., None] / 255
    box = random_crop_box(rng, photo.image.size, (0.1, 0.4), aspect=width / height)
    patch = np.asarray(
        photo.image.crop(box).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    pixels *= 1 - weight
    pixels += weight * patch
    return {
        "occluder": photo.name,
        "centre": np.round(centre, 1).tolist(),
        "radius": np.round(radius, 1).tolist(),
    }


def relight(rng: np.random.Generator, pixels: np.ndarray) -> Params:
    """Exposure, contrast, white balance, and light falling off across the scene."""
    height, width = pixels.shape[:2]
    exposure = rng.uniform(0.6, 1.3)
    contrast = rng.uniform(0.7, 1.15)
    white_balance = rng.uniform(0.85, 1.15, size=3)
    gamma = rng.uniform(0.75, 1.35)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    falloff = rng.uniform(0.0, 0.45)
    across = (np.arange(width, dtype=np.float32) / width - 0.5) * direction[0]
    down = (np.arange(height, dtype=np.float32) / height - 0.5) * direction[1]
    light = 1 - falloff * np.clip(down[:, None] + across[None, :] + 0.5, 0, 1)
    mean = pixels.mean()
    pixels -= mean
    pixels *= contrast
    pixels += mean
    pixels *= light[..., None]
    pixels *= (exposure * white_balance).astype(np.float32)
    np.clip(pixels, 0, 255, out=pixels)
    # Gamma through a 256-entry table: a power over every pixel costs several times more.
    curve = (255 * (np.arange(256, dtype=np.float32) / 255) ** gamma).astype(np.float32)
    pixels[:] = curve[pixels.astype(np.uint8)]
    return {
        "exposure": round(float(exposure), 3),
        "contrast": round(float(contrast), 3),
        "white_balance": np.round(white_balance, 3).tolist(),
        "gamma": round(float(gamma), 3),
        "light_falloff": round(float(falloff), 3),
    }


def reflect(rng: np.random.Generator, pixels: np.ndarray) -> Params | None:
    """A specular highlight (glossy packaging, glass, metal)."""
    if rng.random() >= 0.3:
        return None
    height, width = pixels.shape[:2]
    centre = rng.uniform([0, 0], [width, height])
    sigma = rng.uniform(0.05, 0.15) * max(width, height)
    strength = rng.uniform(80, 180)
    # A round Gaussian is the outer product of two 1-D ones.
    across = np.exp(-((np.arange(width, dtype=np.float32) - centre[0]) ** 2) / (2 * sigma**2))
    down = np.exp(-((np.arange(height, dtype=np.float32) - centre[1]) ** 2) / (2 * sigma**2))
    pixels += (strength * np.outer(down, across)).astype(np.float32)[..., None]
    return {
        "centre": np.round(centre, 1).tolist(),
        "sigma": round(float(sigma), 1),
        "strength": round(float(strength), 1),
    }


def motion_blur(pixels: np.ndarray, length: int, angle_deg: float) -> np.ndarray:
    """Mean of the image shifted along a line: camera shake."""
    height, width = pixels.shape[:2]
    pad = length
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(pixels)
    dx, dy = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    for step in np.linspace(-(length - 1) / 2, (length - 1) / 2, length):
        sx, sy = round(step * dx), round(step * dy)
        out += padded[pad + sy : pad + sy + height, pad + sx : pad + sx + width]
    return out / length


def blur(rng: np.random.Generator, pixels: np.ndarray) -> Params | None:
    """Out of focus or shaken."""
    kind = rng.choice(["none", "focus", "motion"], p=[0.4, 0.35, 0.25])
    if kind == "focus":
        radius = rng.uniform(0.6, 2.2)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius)
        )
        pixels[:] = np.asarray(image, dtype=np.float32)
        return {"kind": "focus", "radius": round(float(radius), 2)}
    if kind == "motion":
        length = int(rng.integers(4, 12))
        angle = rng.uniform(0, 180)
        pixels[:] = motion_blur(pixels, length, angle)
        return {"kind": "motion", "length": length, "angle_deg": round(float(angle), 1)}
    return None


def sensor_noise(rng: np.random.Generator, pixels: np.ndarray) -> Params:
    """Zero-mean noise of standard deviation sigma (uniform: several times cheaper than normal,
    and no model can tell at these levels)."""
    sigma = rng.uniform(1.0, 7.0)
    noise = rng.random(size=pixels.shape, dtype=np.float32)
    noise -= 0.5
    noise *= sigma * np.sqrt(12.0)
    pixels += noise
    return {"sigma": round(float(sigma), 2)}


PHOTOMETRIC_STEPS = (("reflection", reflect), ("lighting", relight), ("blur", blur), ("noise", sensor_noise))


# ---- the whole capture --------------------------------------------------------------------


def user_capture(
    rng: np.random.Generator, photo: Image.Image, backgrounds: Sequence[Photo], max_side: int
) -> tuple[Image.Image, int, Params]:
    """A synthetic query from a catalog photo: (image, JPEG quality to save at, parameters)."""
    aspect = float(rng.choice([4 / 3, 3 / 4, 1.0, 16 / 9]))
    canvas_long = round(max_side * rng.uniform(0.75, 1.0))
    canvas_size = (
        (canvas_long, round(canvas_long / aspect))
        if aspect >= 1
        else (round(canvas_long * aspect), canvas_long)
    )
    framing = str(rng.choice(list(FRAMING_WEIGHTS), p=list(FRAMING_WEIGHTS.values())))
    image, framing_params = FRAMINGS[framing](rng, photo, canvas_size, backgrounds)
    params: Params = {"framing": framing_params}
    pixels = np.asarray(image, dtype=np.float32).copy()
    params["occlusion"] = occlude(rng, pixels, backgrounds)
    for name, step in PHOTOMETRIC_STEPS:
        params[name] = step(rng, pixels)
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.35:  # a low-resolution camera or a digital zoom
        factor = rng.uniform(0.35, 0.7)
        small = image.resize(
            (max(8, round(image.width * factor)), max(8, round(image.height * factor))),
            Image.Resampling.BILINEAR,
        )
        image = small.resize(image.size, Image.Resampling.BILINEAR)
        params["low_resolution"] = round(float(factor), 3)
    quality = int(rng.integers(30, 81))
    params["jpeg_quality"] = quality
    return image, quality, params


def detail_shot(rng: np.random.Generator, photo: Image.Image, max_side: int) -> tuple[Image.Image, Params]:
    """A close-up of part of the product, as catalogs often hold next to the main picture."""
    box = random_crop_box(rng, photo.size, (0.25, 0.4))
    crop = photo.crop(box)
    scale = 0.75 * max_side / max(crop.size)
    crop = crop.resize(
        (max(8, round(crop.width * scale)), max(8, round(crop.height * scale))), Image.Resampling.BICUBIC
    )
    return crop, {"crop": list(box)}
