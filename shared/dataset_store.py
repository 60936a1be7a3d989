"""The on-disk, training-ready dataset format written by the importer (numpy + PIL only).

Layout of a dataset folder, for each split ``s`` in train/val/test that has images:

- ``s_labels.npy``: int64 class index per image;
- ``s_images.npy``: raw uint8 N x H x W x C array (encoding "raw"), or
  ``s_images.bin`` + ``s_offsets.npy``: concatenated PNG/JPEG bytes and int64 N+1 offsets
  (encoding "png" or "jpg").

Detection splits add ``s_boxes.npy`` (float32 M x 4, x0 y0 x1 y1 in stored pixels),
``s_box_labels.npy`` (int64 M) and ``s_box_offsets.npy`` (int64 N+1: image i's boxes are rows
offsets[i]:offsets[i+1]); segmentation splits add ``s_masks.npy`` (uint8 N x H x W class
indices, 255 = ignore) and ``s_mask_classes.npy`` (bool N x 255: the classes in each mask).
Their ``s_labels.npy`` holds -1: no image-level class.

Plus ``mean.npy`` (float32 H x W x C mean of the train split), ``mean.png``, ``labels.txt``
(one class name per line) and ``meta.json``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
ENCODINGS = ("raw", "png", "jpg")
META_FILE = "meta.json"
LABELS_FILE = "labels.txt"
MEAN_NPY = "mean.npy"
MEAN_PNG = "mean.png"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # stored samples: several times faster to write than 6, ~15% larger


def labels_path(dataset_dir: Path, split: str) -> Path:
    """Path of a split's labels array."""
    return Path(dataset_dir) / f"{split}_labels.npy"


def raw_images_path(dataset_dir: Path, split: str) -> Path:
    """Path of a split's raw image array."""
    return Path(dataset_dir) / f"{split}_images.npy"


def encoded_images_path(dataset_dir: Path, split: str) -> Path:
    """Path of a split's concatenated encoded images."""
    return Path(dataset_dir) / f"{split}_images.bin"


def offsets_path(dataset_dir: Path, split: str) -> Path:
    """Path of a split's encoded-image offsets array."""
    return Path(dataset_dir) / f"{split}_offsets.npy"


def boxes_path(dataset_dir: Path, split: str) -> Path:
    """Path of a detection split's boxes (float32 M x 4)."""
    return Path(dataset_dir) / f"{split}_boxes.npy"


def masks_path(dataset_dir: Path, split: str) -> Path:
    """Path of a segmentation split's masks (uint8 N x H x W)."""
    return Path(dataset_dir) / f"{split}_masks.npy"


def mask_classes_path(dataset_dir: Path, split: str) -> Path:
    """Path of a segmentation split's bool N x 255 table: which classes each mask holds."""
    return Path(dataset_dir) / f"{split}_mask_classes.npy"


def read_meta(dataset_dir: Path) -> dict[str, Any]:
    """Read a dataset's meta.json."""
    with open(Path(dataset_dir) / META_FILE, encoding="utf-8") as fh:
        meta: dict[str, Any] = json.load(fh)
    return meta


def read_classes(dataset_dir: Path) -> list[str]:
    """Read a dataset's class names from labels.txt."""
    text = (Path(dataset_dir) / LABELS_FILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def splits_present(dataset_dir: Path) -> list[str]:
    """The splits stored in a dataset folder, in train/val/test order."""
    return [s for s in SPLITS if labels_path(dataset_dir, s).is_file()]


def _as_hwc(arr: np.ndarray) -> np.ndarray:
    """View a HxW, HxWx1 or HxWx3 uint8 array as HxWxC."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        return arr
    raise ValueError(f"expected an HxW, HxWx1 or HxWx3 image, got shape {arr.shape}")


def _to_pil(arr: np.ndarray) -> Image.Image:
    """PIL image (L or RGB) of a uint8 HxWxC array."""
    arr = _as_hwc(np.asarray(arr))
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), "L")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def encode_image(arr: np.ndarray, encoding: str) -> bytes:
    """Encode an HxWxC uint8 image as PNG ("png") or JPEG quality 90 ("jpg") bytes."""
    buf = io.BytesIO()
    if encoding == "png":
        _to_pil(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif encoding == "jpg":
        _to_pil(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"cannot encode images as {encoding!r}")
    return buf.getvalue()


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes into an HxWxC uint8 array with the given number of channels."""
    with Image.open(io.BytesIO(data)) as img:
        target = "L" if channels == 1 else "RGB"
        arr = np.asarray(img if img.mode == target else img.convert(target))
    return _as_hwc(arr)


def to_png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes of an HxWx1 or HxWx3 (or HxW) uint8 image."""
    buf = io.BytesIO()
    _to_pil(arr).save(buf, format="PNG")
    return buf.getvalue()


def mean_png_bytes(dataset_dir: Path) -> bytes:
    """PNG bytes of a dataset's mean image."""
    png = Path(dataset_dir) / MEAN_PNG
    if png.is_file():
        return png.read_bytes()
    mean = np.load(Path(dataset_dir) / MEAN_NPY)
    return to_png_bytes(np.clip(np.rint(mean), 0, 255).astype(np.uint8))


class SplitReader:
    """Random access to the images and labels of one stored split."""

    def __init__(self, dataset_dir: Path, split: str) -> None:
        dataset_dir = Path(dataset_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        self.dataset_dir = dataset_dir
        self.split = split
        self.labels: np.ndarray = np.load(labels_path(dataset_dir, split))
        self._raw: np.ndarray | None = None
        self._blob: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        raw = raw_images_path(dataset_dir, split)
        if raw.is_file():
            self.encoding = "raw"
            self._raw = np.load(raw, mmap_mode="r")
            height, width, channels = (int(d) for d in self._raw.shape[1:])
        else:
            meta = read_meta(dataset_dir)
            self.encoding = str(meta["encoding"])
            height, width, channels = (int(d) for d in meta["image_shape"])
            self._offsets = np.load(offsets_path(dataset_dir, split))
            blob = encoded_images_path(dataset_dir, split)
            if blob.stat().st_size:
                self._blob = np.memmap(blob, dtype=np.uint8, mode="r")
            else:
                self._blob = np.zeros(0, dtype=np.uint8)
            if len(self._offsets) != len(self.labels) + 1:
                raise ValueError(f"{split}: offsets and labels disagree in length")
        self.shape: tuple[int, int, int] = (height, width, channels)
        if self._raw is not None and len(self._raw) != len(self.labels):
            raise ValueError(f"{split}: images and labels disagree in length")
        # detection: boxes of image i are rows box_offsets[i]:box_offsets[i+1]
        self._boxes: np.ndarray | None = None
        self._box_labels: np.ndarray | None = None
        self._box_offsets: np.ndarray | None = None
        if boxes_path(dataset_dir, split).is_file():
            self._boxes = np.load(boxes_path(dataset_dir, split), mmap_mode="r")
            self._box_labels = np.load(dataset_dir / f"{split}_box_labels.npy", mmap_mode="r")
            self._box_offsets = np.load(dataset_dir / f"{split}_box_offsets.npy")
            if len(self._box_offsets) != len(self.labels) + 1:
                raise ValueError(f"{split}: box offsets and images disagree in length")
        self._masks: np.ndarray | None = None
        if masks_path(dataset_dir, split).is_file():
            self._masks = np.load(masks_path(dataset_dir, split), mmap_mode="r")
            if len(self._masks) != len(self.labels):
                raise ValueError(f"{split}: masks and images disagree in length")

    @property
    def has_boxes(self) -> bool:
        """True for a detection split."""
        return self._boxes is not None

    @property
    def has_masks(self) -> bool:
        """True for a segmentation split."""
        return self._masks is not None

    def boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i's boxes (float32 K x 4, x0 y0 x1 y1 in stored pixels) and class ids."""
        if self._boxes is None or self._box_labels is None or self._box_offsets is None:
            raise ValueError("this split has no boxes")
        start, end = int(self._box_offsets[i]), int(self._box_offsets[i + 1])
        return np.array(self._boxes[start:end]), np.array(self._box_labels[start:end])

    def all_boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every box of the split (M x 4), their class ids (M) and the per-image offsets (N+1)."""
        if self._boxes is None or self._box_labels is None or self._box_offsets is None:
            raise ValueError("this split has no boxes")
        return np.array(self._boxes), np.array(self._box_labels), np.array(self._box_offsets)

    def all_masks(self) -> np.ndarray:
        """The split's masks (N x H x W uint8), memory-mapped."""
        if self._masks is None:
            raise ValueError("this split has no masks")
        return self._masks

    def images_with_box_class(self, label: int) -> np.ndarray:
        """Indices of the images that have a box of class label."""
        if self._box_labels is None or self._box_offsets is None:
            raise ValueError("this split has no boxes")
        rows = np.nonzero(np.asarray(self._box_labels) == label)[0]
        return np.unique(np.searchsorted(self._box_offsets, rows, side="right") - 1)

    def images_with_mask_class(self, label: int) -> np.ndarray:
        """Indices of the segmentation images that have a pixel of class label."""
        table = np.load(mask_classes_path(self.dataset_dir, self.split), mmap_mode="r")
        if not 0 <= label < table.shape[1]:
            return np.zeros(0, dtype=np.int64)
        return np.nonzero(np.asarray(table[:, label]))[0]

    def mask(self, i: int) -> np.ndarray:
        """Image i's class-index mask (uint8 H x W, 255 = ignore)."""
        if self._masks is None:
            raise ValueError("this split has no masks")
        return np.array(self._masks[i])

    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self.labels)

    @property
    def channels(self) -> int:
        """Channels per image (1 or 3)."""
        return self.shape[2]

    def encoded(self, i: int) -> bytes:
        """The stored PNG/JPEG bytes of image i (encoded splits only)."""
        if self._offsets is None or self._blob is None:
            raise ValueError("split is stored raw, not encoded")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._blob[start:end].tobytes()

    def image(self, i: int) -> np.ndarray:
        """Image i as an HxWxC uint8 array."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        i = int(i) % n
        if self._raw is not None:
            return np.array(self._raw[i])
        return decode_image(self.encoded(i), self.channels)

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at the given indices as an NxHxWxC uint8 array."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._raw is not None:
            return np.array(self._raw[idx])
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)
        for k, i in enumerate(idx):
            out[k] = self.image(int(i))
        return out

    def array(self) -> np.ndarray:
        """The whole split: memory-mapped (raw) or decoded into memory (encoded)."""
        if self._raw is not None:
            return self._raw
        return self.images(np.arange(len(self)))


def open_split(dataset_dir: Path, split: str) -> SplitReader:
    """Open one stored split for reading."""
    return SplitReader(Path(dataset_dir), split)
