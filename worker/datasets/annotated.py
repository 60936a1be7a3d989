"""Import a detection or segmentation dataset into the store.

Each image is decoded once, resized with DIGITS's geometry (``shared.images``), and its boxes
or mask are moved by the same geometry: boxes through ``images.geometry``, masks through
``images.resize_mask`` (nearest neighbour; what fill pads with noise is 255, ignored). The
stored form adds, per split, ``s_boxes.npy`` (float32 M x 4, pixel x0 y0 x1 y1 of the stored
image), ``s_box_labels.npy`` (int64 M) and ``s_box_offsets.npy`` (int64 N+1) for detection, or
``s_masks.npy`` (uint8 N x H x W, 255 = ignore) for segmentation, beside the same images,
mean and ``labels.txt`` as classification. ``s_labels.npy`` holds -1 (no image-level class).

One process: annotated datasets are smaller than classification's, and the per-image work
(decode, resize, boxes) is the same. Progress and abort are checked per image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from shared import dataset_store as store
from shared import images
from worker.datasets import annotations as ann
from worker.datasets.importer import (
    DatasetImportError,
    ImportAborted,
    ImportOptions,
    ImportResult,
    Source,
    _resolve_encoding,
    _rng,
    _Skips,
    _split_sizes,
    _validate,
    in_partial,
)

log = logging.getLogger(__name__)

TASKS = ("detection", "segmentation")
IGNORE = 255
MIN_BOX_PIXELS = 1.0  # a stored box narrower or shorter than a pixel is no object to learn


@dataclass
class AnnotatedOptions:
    """What the import of a detection or segmentation dataset adds to the image options."""

    task: str = "detection"
    format: str = "auto"  # detection: auto, coco, voc, kitti, yolo
    classes: list[str] | None = None  # the class list to keep (others are skipped)


@dataclass
class _Planned:
    name: str
    root: Path
    items: list[ann.Item] = field(default_factory=list)


class _Writer:
    """A split's images, written as they come: a raw array or encoded bytes with offsets."""

    def __init__(
        self, partial: Path, split: str, capacity: int, shape: tuple[int, int, int], encoding: str
    ) -> None:
        self.partial, self.split, self.shape, self.encoding = partial, split, shape, encoding
        self.count = 0
        self.sum = np.zeros(shape, dtype=np.float64)
        self._raw: np.memmap | None = None
        self._lengths: list[int] = []
        if encoding == "raw":
            self._raw = np.lib.format.open_memmap(
                store.raw_images_path(partial, split),
                mode="w+",
                dtype=np.uint8,
                shape=(max(1, capacity), *shape),
            )
        else:
            self._blob = open(store.encoded_images_path(partial, split), "wb")  # noqa: SIM115

    def add(self, arr: np.ndarray) -> None:
        if self._raw is not None:
            self._raw[self.count] = arr
        else:
            data = store.encode_image(arr, self.encoding)
            self._blob.write(data)
            self._lengths.append(len(data))
        self.sum += arr
        self.count += 1

    def finish(self) -> None:
        if self._raw is not None:
            capacity = len(self._raw)
            self._raw.flush()
            del self._raw
            self._raw = None
            if self.count < capacity:
                path = store.raw_images_path(self.partial, self.split)
                src = np.load(path, mmap_mode="r")
                tmp = self.partial / f"{self.split}_images.compact.npy"
                dst = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.uint8, shape=(self.count, *self.shape)
                )
                dst[:] = src[: self.count]
                del dst, src
                os.replace(tmp, path)
        else:
            self._blob.close()
            offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
            np.cumsum(np.asarray(self._lengths, dtype=np.int64), out=offsets[1:])
            np.save(store.offsets_path(self.partial, self.split), offsets)

    def discard(self) -> None:
        for path in (
            store.raw_images_path(self.partial, self.split),
            store.encoded_images_path(self.partial, self.split),
            store.offsets_path(self.partial, self.split),
        ):
            path.unlink(missing_ok=True)


def import_annotated(
    train: Source,
    opts: ImportOptions,
    extra: AnnotatedOptions,
    out_dir: Path,
    *,
    val: Source | None = None,
    test: Source | None = None,
    progress: Callable[[float], None] | None = None,
    should_abort: Callable[[], bool] | None = None,
) -> ImportResult:
    """Import a detection or segmentation dataset into out_dir."""
    t0 = time.perf_counter()
    if extra.task not in TASKS:
        raise DatasetImportError(f"task must be one of {', '.join(TASKS)}")
    _validate(opts)
    encoding = _resolve_encoding(opts)
    skips = _Skips()
    try:
        planned, declared, colors, fmt = _plan(train, val, test, opts, extra, skips)
    except ann.AnnotationError as exc:
        raise DatasetImportError(str(exc)) from None
    classes = _classes(planned, declared, extra, fmt)
    total = sum(len(p.items) for p in planned.values())
    if not planned["train"].items:
        raise DatasetImportError("no training images with annotations")
    return in_partial(
        Path(out_dir),
        t0,
        lambda partial: _import_into(
            planned,
            classes,
            colors,
            opts,
            extra,
            encoding,
            skips,
            partial,
            Path(out_dir),
            total,
            fmt,
            progress,
            should_abort,
        ),
    )


def _plan(
    train: Source,
    val: Source | None,
    test: Source | None,
    opts: ImportOptions,
    extra: AnnotatedOptions,
    skips: _Skips,
) -> tuple[dict[str, _Planned], list[str] | None, list[tuple[int, int, int]] | None, str]:
    """Read every split's annotations; without val/test sources, split train by the percentages."""
    declared: list[str] | None = None
    colors: list[tuple[int, int, int]] | None = None
    fmt = extra.format
    planned: dict[str, _Planned] = {}
    for name, source in (("train", train), ("val", val), ("test", test)):
        if source is None:
            planned[name] = _Planned(name, train.root)
            continue
        if not source.root.is_dir():
            raise DatasetImportError(f"{name}: folder not found")
        if extra.task == "detection":
            parsed = ann.parse_detection(source.root, fmt, skips)
            fmt = parsed.format  # every split in the format the first was found in
        else:
            parsed = ann.parse_segmentation(source.root, skips)
            colors = colors or parsed.colors
        if parsed.classes is not None:
            if declared is not None and parsed.classes != declared:
                raise DatasetImportError(f"{name}: its class list differs from train's")
            declared = parsed.classes
        planned[name] = _Planned(name, source.root, parsed.items)
    # like classification: a split without its own source is carved out of train
    val_pct = 0.0 if val is not None else opts.val_pct
    test_pct = 0.0 if test is not None else opts.test_pct
    if val_pct or test_pct:
        items = planned["train"].items
        order = _rng(opts.seed, 7).permutation(len(items)) if items else np.zeros(0, dtype=np.int64)
        n_train, n_val, _ = _split_sizes(len(items), val_pct, test_pct)
        shuffled = [items[int(i)] for i in order]
        planned["train"].items = sorted(shuffled[:n_train], key=lambda it: it.rel)
        if val is None:
            planned["val"].items = sorted(
                shuffled[n_train : n_train + n_val], key=lambda it: it.rel
            )
        if test is None:
            planned["test"].items = sorted(shuffled[n_train + n_val :], key=lambda it: it.rel)
    return planned, declared, colors, fmt if extra.task == "detection" else "masks"


def _classes(
    planned: dict[str, _Planned], declared: list[str] | None, extra: AnnotatedOptions, fmt: str
) -> list[str]:
    """The class list: the request's, else the files' own, else every name the boxes use."""
    if extra.task == "segmentation" and len(extra.classes or declared or []) > IGNORE:
        raise DatasetImportError(f"masks hold at most {IGNORE} classes (255 is ignore)")
    if extra.classes:
        return list(extra.classes)
    if declared:
        return declared
    if extra.task == "segmentation":
        return []  # class_0..class_K from the masks' largest index, once they are read
    names = sorted({b.label for p in planned.values() for b in ann.iter_boxes(p.items)})
    if not names:
        raise DatasetImportError(f"no boxes found in the {fmt.upper()} annotations")
    if len(names) > ann.MAX_CLASSES:
        raise DatasetImportError(f"{len(names)} class names; at most {ann.MAX_CLASSES}")
    return names


def _import_into(
    planned: dict[str, _Planned],
    classes: list[str],
    colors: list[tuple[int, int, int]] | None,
    opts: ImportOptions,
    extra: AnnotatedOptions,
    encoding: str,
    skips: _Skips,
    partial: Path,
    out_dir: Path,
    total: int,
    fmt: str,
    progress: Callable[[float], None] | None,
    should_abort: Callable[[], bool] | None,
) -> ImportResult:
    shape = (opts.height, opts.width, opts.channels)
    index = {name: i for i, name in enumerate(classes)}
    counts: dict[str, list[int]] = {}
    split_images: dict[str, int] = {}
    max_index = -1
    done = 0
    mean_sum = np.zeros(shape, dtype=np.float64)
    for split in store.SPLITS:
        items = planned[split].items
        writer = _Writer(partial, split, len(items), shape, encoding)
        boxes: list[np.ndarray] = []
        box_labels: list[np.ndarray] = []
        offsets = [0]
        present: list[np.ndarray] = []  # segmentation: which classes each mask holds
        masks: np.memmap | None = None
        if extra.task == "segmentation" and items:
            masks = np.lib.format.open_memmap(
                partial / f"{split}_masks.npy",
                mode="w+",
                dtype=np.uint8,
                shape=(len(items), opts.height, opts.width),
            )
        per_class = np.zeros(
            max(1, len(classes)) if extra.task == "detection" else 256, dtype=np.int64
        )
        for item in items:
            if should_abort is not None and should_abort():
                raise ImportAborted()
            done += 1
            if progress is not None and done % 16 == 0:
                progress(min(0.99, done / max(1, total)))
            try:
                img = images.decode(item.image, max_pixels=opts.max_image_pixels)
            except images.ImageError as exc:
                skips.add(item.rel, exc.message)
                continue
            rng = _rng(opts.seed, 11, done)
            if extra.task == "detection":
                kept = _boxes(item, img.size, index, opts, skips)
                if kept is None:
                    continue
                arr = _prepared(img, opts, rng, item, skips)
                if arr is None:
                    continue
                boxes.append(kept[0])
                box_labels.append(kept[1])
                offsets.append(offsets[-1] + len(kept[1]))
                np.add.at(per_class, kept[1], 1)
            else:
                assert masks is not None
                mask = _mask(item, img.size, classes, colors, opts, skips)
                if mask is None:
                    continue
                arr = _prepared(img, opts, rng, item, skips)
                if arr is None:
                    continue
                masks[writer.count] = mask
                hist = np.bincount(mask.ravel(), minlength=256)
                per_class += hist
                present.append(hist[:IGNORE] > 0)
            writer.add(arr)
        writer.finish()
        if writer.count == 0:
            writer.discard()
            if masks is not None:
                del masks
                (partial / f"{split}_masks.npy").unlink(missing_ok=True)
            counts[split] = [0] * len(classes)
            split_images[split] = 0
            continue
        if split == "train":
            mean_sum = writer.sum
        split_images[split] = writer.count
        np.save(store.labels_path(partial, split), np.full(writer.count, -1, dtype=np.int64))
        if extra.task == "detection":
            np.save(partial / f"{split}_boxes.npy", np.concatenate(boxes).astype(np.float32))
            np.save(
                partial / f"{split}_box_labels.npy", np.concatenate(box_labels).astype(np.int64)
            )
            np.save(partial / f"{split}_box_offsets.npy", np.asarray(offsets, dtype=np.int64))
            counts[split] = per_class[: len(classes)].astype(int).tolist()
        else:
            assert masks is not None
            masks.flush()
            capacity = len(masks)
            del masks
            if writer.count < capacity:
                _truncate(partial / f"{split}_masks.npy", writer.count)
            np.save(store.mask_classes_path(partial, split), np.stack(present))
            seen = np.nonzero(per_class[:IGNORE])[0]
            if len(seen):
                max_index = max(max_index, int(seen.max()))
            counts[split] = per_class[:IGNORE].astype(int).tolist()
    if split_images.get("train", 0) == 0:
        raise DatasetImportError("none of the training images could be used (see skipped)")
    if extra.task == "segmentation":
        if not classes:
            classes = [f"class_{i}" for i in range(max_index + 1)]
        counts = {
            s: c[: len(classes)] + [0] * (len(classes) - len(c[: len(classes)]))
            for s, c in counts.items()
        }
    if len(classes) < (1 if extra.task == "detection" else 2):
        raise DatasetImportError(
            "segmentation needs at least two classes (background and one more)"
        )
    mean = (mean_sum / split_images["train"]).astype(np.float32)
    np.save(partial / store.MEAN_NPY, mean)
    (partial / store.MEAN_PNG).write_bytes(
        store.to_png_bytes(np.clip(np.rint(mean), 0, 255).astype(np.uint8))
    )
    (partial / store.LABELS_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    num_images = sum(split_images.values())
    meta = {
        "format_version": store.FORMAT_VERSION,
        "task": extra.task,
        "annotation_format": fmt,
        "classes": classes,
        "num_classes": len(classes),
        "counts": counts,
        "count_unit": "boxes" if extra.task == "detection" else "pixels",
        "split_sizes": split_images,
        "splits": [s for s in store.SPLITS if split_images.get(s, 0) > 0],
        "image_shape": list(shape),
        "width": opts.width,
        "height": opts.height,
        "channels": opts.channels,
        "resize_mode": opts.resize_mode,
        "encoding": encoding,
        "num_images": num_images,
        "skipped": skips.count,
        "seed": opts.seed,
        "colors": [list(c) for c in colors] if colors else None,
    }
    (partial / store.META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    size_bytes = _publish(partial, out_dir)
    if progress is not None:
        progress(1.0)
    return ImportResult(
        classes=classes,
        counts={s: c for s, c in counts.items() if split_images.get(s, 0) > 0},
        image_shape=shape,
        encoding=encoding,
        num_images=num_images,
        skipped=skips.count,
        skipped_samples=skips.samples,
        dropped_classes=[],
        seconds=0.0,
        images_per_second=0.0,
        size_bytes=size_bytes,
        split_images={s: n for s, n in split_images.items() if n > 0},
        task=extra.task,
        annotation_format=fmt,
    )


def _truncate(path: Path, count: int) -> None:
    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(path.stem + ".compact.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(count, *src.shape[1:]))
    dst[:] = src[:count]
    del dst, src
    os.replace(tmp, path)


def _publish(partial: Path, out_dir: Path) -> int:
    """Move the finished files into out_dir, meta.json last; their bytes."""
    size = 0
    for path in sorted(partial.iterdir(), key=lambda p: (p.name == store.META_FILE, p.name)):
        if path.is_file():
            size += path.stat().st_size
            os.replace(path, out_dir / path.name)
    shutil.rmtree(partial, ignore_errors=True)
    return size


def _prepared(
    img: Image.Image, opts: ImportOptions, rng: np.random.Generator, item: ann.Item, skips: _Skips
) -> np.ndarray | None:
    try:
        return images.prepare(img, opts.width, opts.height, opts.channels, opts.resize_mode, rng)
    except images.ImageError as exc:
        skips.add(item.rel, exc.message)
        return None


def _boxes(
    item: ann.Item, size: tuple[int, int], index: dict[str, int], opts: ImportOptions, skips: _Skips
) -> tuple[np.ndarray, np.ndarray] | None:
    """An image's boxes in stored pixels and their class ids; None (skipped) when none is left."""
    w, h = size
    sx, sy, dx, dy = images.geometry(w, h, opts.width, opts.height, opts.resize_mode)
    kept: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    for n, raw in enumerate(item.boxes):
        where = f"{item.rel} (box {n + 1}, {raw.label[:40]})"
        label = index.get(raw.label)
        if label is None:
            skips.add(where, f"unknown class {raw.label[:40]!r}")
            continue
        x0, y0, x1, y1 = raw.box
        if raw.fractions:
            x0, y0, x1, y1 = x0 * w, y0 * h, x1 * w, y1 * h
        if x1 <= x0 or y1 <= y0:
            skips.add(where, "empty or inverted box (x1 <= x0 or y1 <= y0)")
            continue
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            skips.add(where, f"box outside the {w}x{h} image")
            continue
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        x0, x1 = x0 * sx + dx, x1 * sx + dx
        y0, y1 = y0 * sy + dy, y1 * sy + dy
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(opts.width), x1), min(float(opts.height), y1)
        if x1 - x0 < MIN_BOX_PIXELS or y1 - y0 < MIN_BOX_PIXELS:
            skips.add(where, "box under a pixel once resized (or cut off by the crop)")
            continue
        kept.append((x0, y0, x1, y1))
        labels.append(label)
    if not kept:
        skips.add(item.rel, "no usable boxes in this image")
        return None
    return np.asarray(kept, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _mask(
    item: ann.Item,
    size: tuple[int, int],
    classes: list[str],
    colors: list[tuple[int, int, int]] | None,
    opts: ImportOptions,
    skips: _Skips,
) -> np.ndarray | None:
    """An image's mask as class indices at the stored size; None (skipped) when unusable."""
    assert item.mask is not None
    assert item.mask_rel is not None
    try:
        mask_img = images.decode(item.mask, max_pixels=opts.max_image_pixels)
    except images.ImageError as exc:
        skips.add(item.mask_rel, exc.message)
        return None
    if mask_img.size != size:
        skips.add(
            item.mask_rel,
            f"mask is {mask_img.size[0]}x{mask_img.size[1]}, its image {size[0]}x{size[1]}",
        )
        return None
    if mask_img.mode in ("P", "L", "1"):
        values = np.asarray(mask_img).astype(np.uint8)
    elif mask_img.mode in ("RGB", "RGBA"):
        if not colors:
            skips.add(
                item.mask_rel, "colour mask, but no colors.txt says which colour is which class"
            )
            return None
        rgb = np.asarray(mask_img.convert("RGB"), dtype=np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        # one pass whatever the number of colours: each distinct colour is looked up once
        found, where = np.unique(packed, return_inverse=True)
        index = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colors)}
        lookup = np.array([index.get(int(c), IGNORE) for c in found], dtype=np.uint8)
        values = lookup[where.reshape(packed.shape)]
    elif mask_img.mode in ("I;16", "I;16L", "I;16B", "I"):
        wide = np.asarray(mask_img).astype(np.int64)
        beyond = wide[(wide < 0) | (wide > IGNORE)]
        if beyond.size:
            skips.add(
                item.mask_rel, f"mask value {int(beyond.max())}: classes are 0-254 (255 ignores)"
            )
            return None
        values = wide.astype(np.uint8)
    else:
        skips.add(
            item.mask_rel, f"a mask must hold class indices (palette or grey), not {mask_img.mode}"
        )
        return None
    if classes:
        known = values[values != IGNORE]
        if known.size and int(known.max()) >= len(classes):
            skips.add(
                item.mask_rel,
                f"class index {int(known.max())} in the mask; classes.txt names {len(classes)}",
            )
            return None
    return images.resize_mask(values, opts.width, opts.height, opts.resize_mode, IGNORE)
