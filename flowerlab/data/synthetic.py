"""Embedded, deterministic flower-like dataset: 102 classes that differ in structure, not colour.

A class is a combination of petal count, petal form and colour pattern. Hues are drawn per
image from the full colour wheel, so mean colour carries no class information; pose, scale,
position, background and noise vary within each class.
"""

from __future__ import annotations

import colorsys
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PETAL_COUNTS = (3, 5, 8)
PETAL_FORMS = ("oval", "pointed", "spoon", "slender")
COLOUR_PATTERNS = ("solid", "tipped", "alternating", "striped", "ringed", "eyed", "outlined",
                   "halved", "dotted")
NUM_CLASSES = 102
SUPERSAMPLE = 2

# 108 structural combinations in a fixed order; dropping the last of every 18 leaves 102.
_COMBINATIONS = [combo for i, combo in
                 enumerate(itertools.product(PETAL_COUNTS, PETAL_FORMS, COLOUR_PATTERNS))
                 if i % 18 != 17]


def class_names() -> list[str]:
    """Readable names such as ``5-petal pointed veined``, one per class id."""
    return [f"{n}-petal {form} {pattern}" for n, form, pattern in _COMBINATIONS]


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _half_width(form: str, t: np.ndarray) -> np.ndarray:
    """Petal half-width along its axis (t from 0 at the centre to 1 at the tip)."""
    if form == "oval":
        return 0.42 * np.sin(np.pi * t)
    if form == "pointed":
        return 0.45 * np.sin(np.pi * t) ** 0.6 * (1 - t) ** 0.8
    if form == "spoon":
        return 0.5 * t**1.4 * np.sqrt(np.clip(1 - t**2, 0, 1)) + 0.05 * (1 - t)
    return 0.25 * np.sin(np.pi * t) ** 0.7  # slender


def _petal_polygon(form, cx, cy, angle, inner, length, width):
    t = np.linspace(0, 1, 24)
    h = _half_width(form, t) * width
    along = inner + t * length
    ca, sa = math.cos(angle), math.sin(angle)
    side = [(cx + a * ca - w * sa, cy + a * sa + w * ca) for a, w in zip(along, h)]
    other = [(cx + a * ca + w * sa, cy + a * sa - w * ca) for a, w in zip(along[::-1], h[::-1])]
    return side + other


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A soft two-colour gradient with a few out-of-focus leaf blobs."""
    c0 = np.array(_hsv(rng.uniform(0.15, 0.45), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.8)))
    c1 = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.9)))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    pixels = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.18) * size
        colour = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6))
        draw.ellipse((x - r, y - r * 0.5, x + r, y + r * 0.5), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(size / 40))


def render_flower(class_id: int, rng: np.random.Generator, image_size: int) -> Image.Image:
    """Draw one image of ``class_id`` with pose, scale, colours and noise drawn from ``rng``."""
    n_petals, form, pattern = _COMBINATIONS[class_id]
    size = image_size * SUPERSAMPLE
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)

    scale = rng.uniform(0.36, 0.47) * size
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
    rotation = rng.uniform(0, 2 * np.pi)
    hue = rng.uniform(0, 1)
    saturation, value = rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0)
    main = _hsv(hue, saturation, value)
    accent = _hsv(hue + rng.uniform(0.3, 0.7), saturation, value * rng.uniform(0.5, 0.9))
    centre_colour = _hsv(rng.uniform(0.08, 0.17), rng.uniform(0.6, 1), rng.uniform(0.3, 0.9))
    core = 0.16 * scale
    width = scale * (0.9 if n_petals <= 4 else 0.75 if n_petals <= 6 else 0.6)

    for i in range(n_petals):
        angle = rotation + 2 * np.pi * i / n_petals + rng.normal(0, 0.05)
        length = scale * rng.uniform(0.85, 1.0)
        colour = accent if pattern == "alternating" and i % 2 else main
        petal = _petal_polygon(form, cx, cy, angle, core * 0.5, length, width)
        outline = accent if pattern == "outlined" else None
        draw.polygon(petal, fill=colour, outline=outline, width=max(2, size // 24))
        if pattern == "halved":
            draw.polygon(petal[: len(petal) // 2], fill=accent)  # one side of the petal's axis
        if pattern == "dotted":
            r = 0.14 * scale
            dx, dy = cx + 0.62 * length * math.cos(angle), cy + 0.62 * length * math.sin(angle)
            draw.ellipse((dx - r, dy - r, dx + r, dy + r), fill=accent)
        if pattern == "tipped":
            tip = _petal_polygon(form, cx, cy, angle, core * 0.5 + 0.55 * length, 0.45 * length, width)
            draw.polygon(tip, fill=accent)
        if pattern == "striped":
            stripe = _petal_polygon(form, cx, cy, angle, core * 0.5, 0.95 * length, 0.45 * width)
            draw.polygon(stripe, fill=accent)

    if pattern == "eyed":
        core *= 2.2
        centre_colour = accent
    draw.ellipse((cx - core, cy - core, cx + core, cy + core), fill=centre_colour)
    if pattern == "ringed":
        ring = core * 2.1
        draw.ellipse((cx - ring, cy - ring, cx + ring, cy + ring), outline=accent,
                     width=max(2, int(size / 30)))

    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, rng.uniform(2, 7), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate(samples_per_class: int, image_size: int, seed: int):
    """Yield ``(image, class_id)`` for every sample, in a fixed order derived from ``seed``."""
    for class_id in range(NUM_CLASSES):
        for index in range(samples_per_class):
            rng = np.random.default_rng([seed, class_id, index])
            yield render_flower(class_id, rng, image_size), class_id
