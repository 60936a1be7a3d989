"""Boxes and masks drawn over stored images, for people to look at (PIL only)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours for classes (Glasbey-like), class i gets PALETTE[i % len(PALETTE)].
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
MAX_SCALE = 8
MAX_SIDE = 4096  # a drawing's side (stored side x scale), so one request stays ~50 MB


def _rgb(arr: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    img = img.convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def boxes_png(
    arr: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    scale: int = 1,
    scores: np.ndarray | None = None,
) -> bytes:
    """An H x W x C image with its boxes outlined and named in their class's colour, as PNG."""
    img = _rgb(arr, scale)
    draw = ImageDraw.Draw(img)
    for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        colour = PALETTE[int(label) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=1)
        name = classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))
        if scores is not None:
            name = f"{name} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), name)
        lifted = max(0.0, y0 - (bottom - top) - 2)
        draw.rectangle((x0, lifted, x0 + right - left + 2, lifted + bottom - top + 2), fill=colour)
        draw.text((x0 + 1, lifted), name, fill=(0, 0, 0))
    return _png(img)


def mask_png(
    arr: np.ndarray,
    mask: np.ndarray,
    colors: Sequence[Sequence[int]] | None = None,
    scale: int = 1,
    alpha: float = 0.5,
) -> bytes:
    """An image with its class-index mask blended over it (255, ignored, left as is), as PNG.

    Class 0 is taken for background and left clear; the others take the dataset's colours."""
    base = np.asarray(_rgb(arr, 1), dtype=np.uint16)
    table = np.zeros((256, 3), dtype=np.uint16)
    weight = np.zeros(256, dtype=np.uint16)  # out of 256, so the blend stays in 16 bits
    for i in range(1, 255):
        table[i] = (
            colors[i]
            if colors is not None and i < len(colors)
            else (PALETTE[(i - 1) % len(PALETTE)])
        )
        weight[i] = round(alpha * 256)
    w = weight[mask][..., None]
    out = (base * (256 - w) + table[mask] * w) >> 8
    img = Image.fromarray(out.astype(np.uint8), "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return _png(img)
