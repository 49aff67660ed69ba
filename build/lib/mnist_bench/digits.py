"""Digit images from files, prepared the way MNIST's digits were.

MNIST's digits were scaled (anti-aliased) to fit a 20x20 box keeping their aspect ratio, then
placed in a 28x28 frame with their centre of mass at its centre: light ink on a black background.
:func:`prepare` repeats those steps on any greyscale picture of one digit. Each step can be
switched off (:class:`Preparation`) to measure what it is worth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

FRAME, BOX = 28, 20
MAX_PIXELS = 25_000_000     # a photo is a few megapixels; larger is refused, not decoded
MAX_FILE_BYTES = 100 * 2**20
INK = 0.25                  # share of the ink's brightness that counts as part of the digit
MIN_CONTRAST = 0.1          # a brightness range below this holds no digit
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy"}


class ImageError(ValueError):
    """A file that cannot be made into a digit image; the message says why, in one line."""


@dataclass(frozen=True)
class Preparation:
    """The steps of :func:`prepare`; each is on by default."""

    invert: str = "auto"  # auto: dark-on-light pictures are inverted; or "always", "never"
    denoise: bool = True  # background (below INK) set to 0, as in MNIST
    crop: bool = True     # cut to the digit's bounding box
    fit: bool = True      # scale the digit into a 20x20 box (else the picture into 28x28)
    center: bool = True   # centre of mass at the frame's centre (else the box's centre)


def read_image(path: Path) -> np.ndarray:
    """Greyscale pixels in [0, 1], shape (H, W), from an image file or a 2-D ``.npy`` array."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageError(f"cannot be read ({err.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise ImageError(f"too large ({size / 2**20:.0f} MiB; at most "
                         f"{MAX_FILE_BYTES / 2**20:.0f} MiB)")
    reader = _read_array if path.suffix.lower() == ".npy" else _read_picture
    try:
        pixels = reader(path)
    except OSError as err:
        raise ImageError(f"cannot be read ({err.strerror or err})") from None
    if pixels.size == 0:
        raise ImageError("empty image (0 pixels)")
    return pixels


def _read_picture(path: Path) -> np.ndarray:
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not an image (PNG, JPEG, BMP, GIF, TIFF, WebP) nor a .npy "
                         "array") from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, before ours
        raise ImageError(f"too large ({err})") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(f"too large ({width} x {height} pixels; at most "
                             f"{MAX_PIXELS / 1e6:.0f} megapixels)")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"damaged image ({err})") from None
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
            if alpha.min() < alpha.max():  # a digit drawn on a transparent sheet: the ink
                return alpha.astype(np.float32) / 255
        if image.mode in ("I", "I;16", "I;16B", "F"):  # 16- and 32-bit greyscale scans
            wide = np.asarray(image, dtype=np.float32)
            return wide / wide.max() if wide.max() > 0 else wide
        return np.asarray(image.convert("L"), dtype=np.float32) / 255


def _read_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ImageError(f"not a plain .npy array ({err})") from None
    array = np.squeeze(array)
    if array.size == 0:
        raise ImageError("empty image (0 pixels)")
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ImageError(f"a .npy image must be one 2-D array of numbers (H, W); this one is "
                         f"{array.dtype} of shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ImageError("the array holds NaN or infinite values")
    return array / 255 if array.max() > 1 else array


def prepare(pixels: np.ndarray, steps: Preparation = Preparation()) -> np.ndarray:
    """One digit picture (H, W) in [0, 1] as MNIST's 28x28 float frame."""
    ink = _as_ink(pixels, steps.invert)
    if steps.denoise:
        ink = np.where(ink < INK, 0.0, ink).astype(np.float32)
    if steps.crop:
        ink = _cropped(ink)
    size = BOX if steps.fit else FRAME
    scale = size / max(ink.shape)
    height, width = (max(1, round(n * scale)) for n in ink.shape)
    patch = np.asarray(Image.fromarray(ink).resize((width, height), Image.LANCZOS))
    return _framed(np.clip(patch, 0, 1), steps.center)


def _as_ink(pixels: np.ndarray, invert: str) -> np.ndarray:
    """Light ink on a background at 0, stretched to [0, 1]."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    dark_on_light = background > 0.5 if invert == "auto" else invert == "always"
    ink = 1 - pixels if dark_on_light else pixels
    floor = 1 - background if dark_on_light else background
    # the brightest 2x2 block, not the brightest pixel: a speck of noise is no stroke
    if min(ink.shape) > 1:
        ink_peak = float((ink[:-1, :-1] + ink[1:, :-1] + ink[:-1, 1:] + ink[1:, 1:]).max()) / 4
    else:
        ink_peak = float(ink.max())
    contrast = ink_peak - floor
    if contrast < MIN_CONTRAST:
        raise ImageError("no digit found (the picture is blank or has almost no contrast)")
    return np.clip((ink - floor) / contrast, 0, 1).astype(np.float32)


def _cropped(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels brighter than INK; lone specks of noise do not count."""
    mask = ink >= INK
    # a pixel counts if one of its 8 neighbours counts too
    padded = np.pad(mask, 1)
    neighbours = sum(np.roll(np.roll(padded, dy, 0), dx, 1)
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1))[1:-1, 1:-1] - mask
    mask &= neighbours > 0
    if not mask.any():
        raise ImageError("no digit found (only isolated specks)")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _framed(patch: np.ndarray, center: bool) -> np.ndarray:
    height, width = patch.shape
    if center and patch.sum() > 0:
        ys, xs = np.indices(patch.shape)
        cy, cx = (float((patch * c).sum() / patch.sum()) for c in (ys, xs))
    else:
        cy, cx = (height - 1) / 2, (width - 1) / 2
    middle = FRAME / 2  # where MNIST's centres of mass lie (mean 13.99, 14.01 on its test set)
    top = min(max(round(middle - cy), 0), FRAME - height)
    left = min(max(round(middle - cx), 0), FRAME - width)
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top:top + height, left:left + width] = patch
    return frame


def image_files(pattern: str) -> list[Path]:
    """The files ``pattern`` names: a file, a folder (its image files), or a glob."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.exists():
        return [path]
    anchor = Path(path.anchor) if path.is_absolute() else Path()
    return sorted(p for p in anchor.glob(str(path.relative_to(anchor))) if p.is_file())
