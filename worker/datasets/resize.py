"""DIGITS's image resize geometry (digits/utils/image.py resize_image) on top of PIL."""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
NOISE_MODES = frozenset({"fill", "half_crop"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images onto an 8-bit grayscale image."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
    elif img.mode == "F":
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    else:  # "I": 32-bit signed; treat values beyond 8 bits as 16-bit data
        if arr.size and int(arr.max()) > 255:
            out = (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        else:
            out = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to mode L (channels=1) or RGB (channels=3), alpha over white."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    target = "L" if channels == 1 else "RGB"
    mode = img.mode
    if mode == target:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        img = _to_eight_bit(img)
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        # Like DIGITS: composite transparent pixels onto a white background.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    if img.mode != target:
        img = img.convert(target)
    return img


def _resized(img: Image.Image, width: int, height: int) -> np.ndarray:
    """Bilinear resize to width x height, as an array."""
    return np.asarray(img.resize((max(1, width), max(1, height)), Image.Resampling.BILINEAR))


def resize_image(
    img: Image.Image,
    width: int,
    height: int,
    channels: int,
    mode: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Resize like DIGITS: uint8 HxW (channels=1) or HxWx3 (channels=3)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    img = convert_channels(img, channels)
    w, h = img.size
    if (h, w) == (height, width):
        return np.asarray(img)

    width_ratio = float(w) / width
    height_ratio = float(h) / height
    if mode == "squash" or width_ratio == height_ratio:
        return _resized(img, width, height)

    if mode == "crop":
        if width_ratio > height_ratio:
            resize_height = height
            resize_width = round(w / height_ratio)
        else:
            resize_width = width
            resize_height = round(h / width_ratio)
        arr = _resized(img, resize_width, resize_height)
        if width_ratio > height_ratio:
            start = round((resize_width - width) / 2.0)
            return arr[:, start : start + width]
        start = round((resize_height - height) / 2.0)
        return arr[start : start + height, :]

    if mode == "fill":
        if width_ratio > height_ratio:
            resize_width = width
            resize_height = max(1, round(h / width_ratio))
            if (height - resize_height) % 2 == 1:
                resize_height += 1
        else:
            resize_height = height
            resize_width = max(1, round(w / height_ratio))
            if (width - resize_width) % 2 == 1:
                resize_width += 1
        arr = _resized(img, resize_width, resize_height)
    else:  # half_crop
        new_ratio = (width_ratio + height_ratio) / 2.0
        resize_width = max(1, round(w / new_ratio))
        resize_height = max(1, round(h / new_ratio))
        if width_ratio > height_ratio and (height - resize_height) % 2 == 1:
            resize_height += 1
        elif width_ratio < height_ratio and (width - resize_width) % 2 == 1:
            resize_width += 1
        arr = _resized(img, resize_width, resize_height)
        # chop off the ends of the dimension that is still too long
        if width_ratio > height_ratio:
            start = round((resize_width - width) / 2.0)
            arr = arr[:, start : start + width]
        else:
            start = round((resize_height - height) / 2.0)
            arr = arr[start : start + height, :]

    # fill the ends of the dimension that is too short with uniform noise in [0, 255);
    # as in DIGITS the same noise block goes on both sides
    if rng is None:
        rng = np.random.default_rng()
    extra = (channels,) if channels > 1 else ()
    if width_ratio > height_ratio:
        padding = (height - resize_height) // 2
        noise = rng.integers(0, 255, size=(padding, width, *extra), dtype=np.uint8)
        return np.concatenate((noise, arr, noise), axis=0)
    padding = (width - resize_width) // 2
    noise = rng.integers(0, 255, size=(height, padding, *extra), dtype=np.uint8)
    return np.concatenate((noise, arr, noise), axis=1)
