"""Digit pictures that do not come from MNIST's files, to check ``predict`` off MNIST.

The digits 0-9 are drawn with the fonts that matplotlib ships (DejaVu, STIX, Computer Modern:
typed, not handwritten) on canvases of random size, with random stroke width, slant, rotation
and offset, dark on light or light on dark, plus pixel noise. Same seed, same pictures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf",
         "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf")


def font_path(name: str) -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def render_digit(digit: int, rng: np.random.Generator, dark_on_light: bool) -> Image.Image:
    """One greyscale picture of ``digit``."""
    width = int(rng.integers(32, 200))
    height = int(width * rng.uniform(0.8, 1.5))
    size = int(height * rng.uniform(0.35, 0.75))
    font = ImageFont.truetype(str(font_path(FONTS[rng.integers(len(FONTS))])), size)
    glyph = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(glyph).text((size, size), str(digit), fill=255, font=font, anchor="mm",
                               stroke_width=int(rng.integers(0, max(1, size // 12) + 1)),
                               stroke_fill=255)
    glyph = glyph.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
    glyph = glyph.crop(glyph.getbbox() or (0, 0, 1, 1))
    canvas = Image.new("L", (max(width, glyph.width + 2), max(height, glyph.height + 2)), 0)
    left = int(rng.integers(1, canvas.width - glyph.width))
    top = int(rng.integers(1, canvas.height - glyph.height))
    canvas.paste(glyph, (left, top))
    ink = np.asarray(canvas, dtype=np.float32) / 255
    ink = ink * rng.uniform(0.6, 1.0) + rng.uniform(0.0, 0.15)  # contrast and background level
    ink = ink + rng.normal(0, rng.uniform(0, 0.06), ink.shape)
    pixels = 1 - ink if dark_on_light else ink
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def write_check_set(folder: Path, per_digit: int, seed: int = 0) -> list[tuple[Path, int]]:
    """``per_digit`` pictures of each digit as PNG files ``<n>_digit<d>.png``, half of them
    dark on light; returns (file, digit) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for n in range(per_digit * 10):
        digit = n % 10
        path = folder / f"{n:04d}_digit{digit}.png"
        render_digit(digit, rng, dark_on_light=n // 10 % 2 == 0).save(path)
        written.append((path, digit))
    return written


def digit_of(path: Path) -> int:
    """The digit a file of :func:`write_check_set` shows, from its name."""
    return int(path.stem.rsplit("digit", 1)[1])
