"""The one set of image rules: which files are images, how they are decoded, converted and resized.

Dataset import and classify both go through ``decode`` and ``prepare`` so they accept the same
files, refuse the rest with the same message, and give a model exactly the pixels it trained on.
The resize geometry is DIGITS's (digits/utils/image.py resize_image). numpy and PIL only.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Files with these extensions are images when folders and archives are listed (.mpo: the
# multi-picture JPEG of 3D cameras, accepted like any JPEG).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".mpo"}
)
# The only PIL decoders ever tried on a file: every other plugin's header parser stays away
# from uploaded bytes. The JPEG one also yields MPO (the multi-picture JPEG of cameras), whose
# first picture is used like any JPEG's.
Image.init()
DECODERS = tuple(f for f in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM") if f in Image.OPEN)
ALLOWED_FORMATS = frozenset({*DECODERS, "MPO"})
# PIL's own bomb threshold; settings.max_image_pixels defaults to it.
DEFAULT_MAX_PIXELS = 89_478_485
# PIL keeps a pointer per row and its resampling a weight table per line of the side it
# shrinks, ~36 bytes per pixel of the long side in all: a 39 KB 1x20,000,000 PNG within the
# pixel limit took 700 MB to classify. No real photo or scan has a side near this.
MAX_SIDE = 1 << 20

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
NOISE_MODES = frozenset({"fill", "half_crop"})
# Above this many pixels an intermediate image is not made at full size: crop resizes only the
# box it keeps. A 1x100000 PNG cropped to 64x64 made a 64x6,400,000 intermediate (3.9 GB).
EXACT_MAX_PIXELS = 4 * 1024 * 1024

_UNREADABLE = "not a readable PNG, JPEG, BMP, GIF, TIFF, WEBP or PPM image"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_REPR = re.compile(r"<[^<>]*>")
_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s'\"]*")
_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageError(ValueError):
    """An image that cannot be used; .message says why in words for the person who sent it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_image_name(name: str) -> bool:
    """True when a file name has one of IMAGE_EXTENSIONS."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _too_large(pixels: int, max_pixels: int, size: str = "") -> ImageError:
    shown = f"{size} pixels" if size else f"{pixels:,} pixels"
    return ImageError(
        f"image too large ({shown}, over the limit of {max_pixels:,}): "
        "refused as a possible decompression bomb"
    )


def _detail(exc: BaseException) -> str:
    """PIL's words for a decoding failure, without object reprs or paths."""
    text = _PATH.sub("", _REPR.sub("", str(exc))).strip(" :'\"")
    return text[:120] or "undecodable data"


def decode(source: bytes | str | os.PathLike[str], *, max_pixels: int) -> Image.Image:
    """Open an image with the allowed decoders, check its size, and load its first frame."""
    try:
        fh = open(source, "rb") if not isinstance(source, bytes) else io.BytesIO(source)  # noqa: SIM115
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("not a file") from None
    except OSError:
        raise ImageError("file not readable") from None
    # Warnings PIL raises as errors (pytest's "error" filter, or a strict deployment) are
    # caught like the errors they stand for; otherwise they stay warnings.
    with fh:
        try:
            img = Image.open(fh, formats=DECODERS)
            if img.format not in ALLOWED_FORMATS:  # a decoder yielding an unexpected subtype
                raise ImageError(_UNREADABLE)
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(width * height, max_pixels, f"{width}x{height}")
            if max(width, height) > MAX_SIDE:
                raise ImageError(
                    f"image too long ({width}x{height} pixels; no side may exceed {MAX_SIDE:,})"
                )
            img.load()
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(_UNREADABLE) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = _PIXELS.search(str(exc))
            raise _too_large(int(found.group(1)) if found else 0, max_pixels) from None
        except MemoryError:
            raise ImageError("image too large to decode") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
            raise ImageError(f"corrupt or unreadable image ({_detail(exc)})") from None
    return img


# ----------------------------------------------------------------------------- channels


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images onto an 8-bit grayscale image."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
    elif img.mode == "F":
        finite = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        out = np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    else:  # "I": 32-bit signed; treat values beyond 8 bits as 16-bit data
        if arr.size and int(arr.max()) > 255:
            out = (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        else:
            out = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _premultiplied_grey_over_white(img: Image.Image) -> Image.Image:
    """A "La" image (grey premultiplied by alpha, which PIL cannot convert) over white."""
    arr = np.asarray(img).astype(np.uint16)
    grey, alpha = arr[..., 0], arr[..., 1]
    return Image.fromarray(np.clip(grey + 255 - alpha, 0, 255).astype(np.uint8), "L")


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any decoded image to mode L (channels=1) or RGB (channels=3), alpha over white."""
    if channels not in (1, 3):
        raise ImageError(f"channels must be 1 or 3, not {channels}")
    target = "L" if channels == 1 else "RGB"
    mode = img.mode
    if mode == target:
        return img
    try:
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            img = _to_eight_bit(img)
        elif mode == "La":
            img = _premultiplied_grey_over_white(img)
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in _ALPHA_MODES:
            # Like DIGITS: composite transparent pixels onto a white background.
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        if img.mode != target:
            # PIL has no direct LAB -> L (and a few like it); RGB is always the way through.
            img = img.convert(target) if img.mode in ("L", "RGB", "1") else img.convert("RGB")
            if img.mode != target:
                img = img.convert(target)
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"{mode} images cannot be converted to {target} ({_detail(exc)})"
        ) from None
    return img


# ----------------------------------------------------------------------------- geometry

Box = tuple[float, float, float, float]


def _span(start: float, end: float, out: int, size: int) -> int:
    """Source lines a bilinear filter reads to make out lines from [start, end)."""
    scale = (end - start) / out
    return min(size, int(end - start + 2 * max(scale, 1.0)) + 2)


def _resample(img: Image.Image, size: tuple[int, int], box: Box | None = None) -> Image.Image:
    """Bilinear resize of box (default: all of img) to size, with a bounded intermediate image."""
    w, h = img.size
    out_w, out_h = size
    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(w), float(h))
    # Filtering rows first makes an out_w x rows intermediate (every source row the column
    # filter reads); columns first, w x out_h. The smaller is at most the source or the result.
    # Pillow 13 picks the order itself; older ones always filter rows first, so a thin tall
    # image widened (1x2,000,000 to 64x64) is done in two explicit passes.
    rows_first = out_w * _span(y0, y1, out_h, h)
    if rows_first <= max(EXACT_MAX_PIXELS, out_w * out_h) or rows_first <= w * out_h:
        return img.resize(size, Image.Resampling.BILINEAR, box=box)
    tall = img.resize((w, out_h), Image.Resampling.BILINEAR, box=(0.0, y0, float(w), y1))
    return tall.resize(size, Image.Resampling.BILINEAR, box=(x0, 0.0, x1, float(out_h)))


def _resized(img: Image.Image, width: int, height: int) -> np.ndarray:
    """Bilinear resize to width x height, as an array."""
    return np.asarray(_resample(img, (max(1, width), max(1, height))))


def _resized_part(
    img: Image.Image,
    resize: tuple[int, int],
    start: int,
    length: int,
    wide: bool,
    exact_max_pixels: int = EXACT_MAX_PIXELS,
) -> np.ndarray:
    """What resizing to resize and keeping length columns (wide) or rows from start gives.

    Small results are made exactly so (DIGITS's order). Large ones resize only the box that is
    kept, with the same scale and the same filter centres: equal but for float rounding, within
    one grey level (tests/worker/test_resize.py compares the two).
    """
    resize_w, resize_h = resize
    if resize_w * resize_h <= max(exact_max_pixels, length * (resize_h if wide else resize_w)):
        arr = _resized(img, resize_w, resize_h)
        return arr[:, start : start + length] if wide else arr[start : start + length, :]
    w, h = img.size
    if wide:
        scale = w / resize_w
        box = (start * scale, 0.0, min(float(w), (start + length) * scale), float(h))
        return np.asarray(_resample(img, (length, resize_h), box))
    scale = h / resize_h
    box = (0.0, start * scale, float(w), min(float(h), (start + length) * scale))
    return np.asarray(_resample(img, (resize_w, length), box))


def resize(
    img: Image.Image,
    width: int,
    height: int,
    channels: int,
    mode: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Resize like DIGITS: uint8 HxW (channels=1) or HxWx3 (channels=3)."""
    if mode not in RESIZE_MODES:
        raise ImageError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
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
            start = round((resize_width - width) / 2.0)
            return _resized_part(img, (resize_width, resize_height), start, width, wide=True)
        resize_width = width
        resize_height = round(h / width_ratio)
        start = round((resize_height - height) / 2.0)
        return _resized_part(img, (resize_width, resize_height), start, height, wide=False)

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
        # chop off the ends of the dimension that is still too long
        if width_ratio > height_ratio:
            start = round((resize_width - width) / 2.0)
            arr = _resized_part(img, (resize_width, resize_height), start, width, wide=True)
        else:
            start = round((resize_height - height) / 2.0)
            arr = _resized_part(img, (resize_width, resize_height), start, height, wide=False)

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


def geometry(
    w: int, h: int, width: int, height: int, mode: str
) -> tuple[float, float, float, float]:
    """Where ``resize`` puts a point of a w x h image: (sx, sy, dx, dy), x' = x*sx + dx.

    The same arithmetic as ``resize`` (rounding and odd-padding rules included), so boxes and
    masks land on the pixels their image did; a negative offset is what crop cuts off, a
    positive one the noise that fill pads with.
    """
    if mode not in RESIZE_MODES:
        raise ImageError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    if (h, w) == (height, width):
        return 1.0, 1.0, 0.0, 0.0
    width_ratio = float(w) / width
    height_ratio = float(h) / height
    if mode == "squash" or width_ratio == height_ratio:
        return width / w, height / h, 0.0, 0.0
    wide = width_ratio > height_ratio
    if mode == "crop":
        if wide:
            resize_width = round(w / height_ratio)
            return resize_width / w, height / h, -float(round((resize_width - width) / 2.0)), 0.0
        resize_height = round(h / width_ratio)
        return width / w, resize_height / h, 0.0, -float(round((resize_height - height) / 2.0))
    if mode == "fill":
        if wide:
            resize_height = max(1, round(h / width_ratio))
            resize_height += (height - resize_height) % 2
            return width / w, resize_height / h, 0.0, float((height - resize_height) // 2)
        resize_width = max(1, round(w / height_ratio))
        resize_width += (width - resize_width) % 2
        return resize_width / w, height / h, float((width - resize_width) // 2), 0.0
    new_ratio = (width_ratio + height_ratio) / 2.0  # half_crop
    resize_width = max(1, round(w / new_ratio))
    resize_height = max(1, round(h / new_ratio))
    if wide:
        resize_height += (height - resize_height) % 2
        start = float(round((resize_width - width) / 2.0))
        return resize_width / w, resize_height / h, -start, float((height - resize_height) // 2)
    resize_width += (width - resize_width) % 2
    start = float(round((resize_height - height) / 2.0))
    return resize_width / w, resize_height / h, float((width - resize_width) // 2), -start


def resize_mask(
    mask: np.ndarray, width: int, height: int, mode: str, fill: int = 255
) -> np.ndarray:
    """A class-index mask (uint8 H x W) resized like its image: nearest neighbour, so no
    class is blended into another; what fill or half_crop pads with noise is ``fill``."""
    h, w = mask.shape
    sx, sy, dx, dy = geometry(w, h, width, height, mode)
    cols = np.floor((np.arange(width) + 0.5 - dx) / sx).astype(np.int64)
    rows = np.floor((np.arange(height) + 0.5 - dy) / sy).astype(np.int64)
    good_cols = (cols >= 0) & (cols < w)
    good_rows = (rows >= 0) & (rows < h)
    out = np.full((height, width), fill, dtype=np.uint8)
    out[np.ix_(good_rows, good_cols)] = mask[np.ix_(rows[good_rows], cols[good_cols])]
    return out


def prepare(
    img: Image.Image,
    width: int,
    height: int,
    channels: int,
    resize_mode: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A decoded image as a model input: uint8 height x width x channels."""
    try:
        arr = resize(img, width, height, channels, resize_mode, rng)
    except MemoryError:
        raise ImageError("image too large to resize") from None
    return arr.reshape(height, width, channels)


# ----------------------------------------------------------------------------- import roots


def overlaps_data_dir(folder: Path, data_dir: Path) -> bool:
    """True when a folder's real path holds the data directory or lies inside it."""
    real = Path(os.path.realpath(folder))
    data = Path(os.path.realpath(data_dir))
    return real == data or real in data.parents or data in real.parents
