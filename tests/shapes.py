"""A synthetic detection and segmentation dataset rendered with Pillow, written in every format.

Squares, circles and triangles of random sizes, colours and places on a cluttered background
(random lines and dots that belong to no class). Boxes are whole pixels, so every format can
state them exactly: COCO [x, y, w, h], VOC 1-based inclusive corners, KITTI corners, YOLO
fractions of the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("square", "circle", "triangle")


@dataclass
class Sample:
    """One rendered image, its boxes (class index, x0, y0, x1, y1) and its class-index mask."""

    image: Image.Image
    boxes: list[tuple[int, int, int, int, int]]
    mask: np.ndarray  # uint8 H x W: 0 background, 1 + class index


def render(n: int, width: int = 96, height: int = 96, seed: int = 0) -> list[Sample]:
    """n images with 1-3 objects each, none overlapping another."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):  # clutter: thin lines and dots of no class
            x, y = (int(v) for v in rng.integers(0, [width, height]))
            colour = tuple(int(v) for v in rng.integers(60, 256, 3))
            if rng.random() < 0.5:
                dx, dy = (int(v) for v in rng.integers(-12, 13, 2))
                draw.line((x, y, x + dx, y + dy), fill=colour, width=1)
            else:
                draw.point((x, y), fill=colour)
        mask = np.zeros((height, width), dtype=np.uint8)
        boxes: list[tuple[int, int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):
                side = int(rng.integers(14, min(width, height) // 2))
                x0 = int(rng.integers(0, width - side))
                y0 = int(rng.integers(0, height - side))
                box = (x0, y0, x0 + side, y0 + side)
                if all(_apart(box, b[1:]) for b in boxes):
                    break
            else:
                continue
            cls = int(rng.integers(0, len(CLASSES)))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            shape = Image.new("L", (width, height), 0)
            pen = ImageDraw.Draw(shape)
            x0, y0, x1, y1 = box
            if cls == 0:
                pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
            elif cls == 1:
                pen.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
            else:
                pen.polygon([(x0, y1 - 1), ((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1)], fill=255)
            img.paste(colour, mask=shape)
            mask[np.asarray(shape) > 127] = cls + 1
            boxes.append((cls, *box))
        samples.append(Sample(img, boxes, mask))
    return samples


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1]


def _images(folder: Path, samples: list[Sample]) -> list[str]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i, s in enumerate(samples):
        name = f"img{i:04d}.png"
        s.image.save(folder / "images" / name)
        names.append(name)
    return names


def write_coco(folder: Path, samples: list[Sample]) -> None:
    """images/ and annotations.json."""
    names = _images(folder, samples)
    doc: dict = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)],
    }
    for i, (name, s) in enumerate(zip(names, samples, strict=True)):
        doc["images"].append({"id": i, "file_name": f"images/{name}", "width": s.image.width})
        for cls, x0, y0, x1, y1 in s.boxes:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]),
                    "image_id": i,
                    "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    (folder / "annotations.json").write_text(json.dumps(doc))


def write_voc(folder: Path, samples: list[Sample]) -> None:
    """JPEGImages/ and Annotations/ (1-based inclusive corners)."""
    names = _images(folder, samples)
    (folder / "images").rename(folder / "JPEGImages")
    (folder / "Annotations").mkdir()
    for name, s in zip(names, samples, strict=True):
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
            for c, x0, y0, x1, y1 in s.boxes
        )
        xml = (
            f"<annotation><filename>{name}</filename><size><width>{s.image.width}</width>"
            f"<height>{s.image.height}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (folder / "Annotations" / name.replace(".png", ".xml")).write_text(xml)


def write_kitti(folder: Path, samples: list[Sample]) -> None:
    """image_2/ and label_2/ (type, truncated, occluded, alpha, corners, 3-D fields)."""
    names = _images(folder, samples)
    (folder / "images").rename(folder / "image_2")
    (folder / "label_2").mkdir()
    for name, s in zip(names, samples, strict=True):
        lines = [
            f"{CLASSES[c]} 0.00 0 0.00 {x0:.2f} {y0:.2f} {x1:.2f} {y1:.2f} 0 0 0 0 0 0 0"
            for c, x0, y0, x1, y1 in s.boxes
        ]
        (folder / "label_2" / name.replace(".png", ".txt")).write_text("\n".join(lines) + "\n")


def write_yolo(folder: Path, samples: list[Sample]) -> None:
    """images/, labels/ and classes.txt (centre and size as fractions of the image)."""
    names = _images(folder, samples)
    (folder / "labels").mkdir()
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name, s in zip(names, samples, strict=True):
        w, h = s.image.size
        lines = [
            f"{c} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
            f"{(y1 - y0) / h:.6f}"
            for c, x0, y0, x1, y1 in s.boxes
        ]
        (folder / "labels" / name.replace(".png", ".txt")).write_text("\n".join(lines) + "\n")


WRITERS = {"coco": write_coco, "voc": write_voc, "kitti": write_kitti, "yolo": write_yolo}


def write_masks(folder: Path, samples: list[Sample]) -> None:
    """images/, masks/ (palette PNGs of class indices) and classes.txt."""
    names = _images(folder, samples)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("\n".join(("background", *CLASSES)) + "\n")
    palette = [0, 0, 0, 230, 60, 60, 60, 200, 60, 60, 60, 230] + [0] * (256 * 3 - 12)
    for name, s in zip(names, samples, strict=True):
        mask = Image.fromarray(s.mask, "P")
        mask.putpalette(palette)
        mask.save(folder / "masks" / name)
