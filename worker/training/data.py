"""A stored dataset as uint8 batches on the device: kept resident when it fits, else streamed."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared import dataset_store as store

log = logging.getLogger(__name__)

CPU_RESIDENT_BYTES = 2 * 1024**3
CUDA_RESIDENT_FRACTION = 0.25
COPY_CHUNK_BYTES = 64 * 1024**2
PREFETCH_BATCHES = 4
# what the prefetch thread hands over: a batch (images, indices), its exception, or None at the end
_Prefetched = tuple[torch.Tensor, torch.Tensor] | BaseException | None
# (images, labels) batches; a generator, so a consumer that stops early can close() it
Batches = Generator[tuple[torch.Tensor, torch.Tensor], None, None]


class DatasetError(ValueError):
    """The dataset folder cannot be trained on (missing files, bad labels, ...)."""


@dataclass
class DatasetInfo:
    """What training needs to know about a stored dataset."""

    classes: list[str]
    height: int
    width: int
    channels: int
    mean: np.ndarray | None  # H x W x C float32, 0..255
    task: str = "classification"  # or detection, segmentation


class Split:
    """Images (uint8, logical NCHW) and labels of one split, yielded in batches on the device."""

    def __init__(self, reader: store.SplitReader, device: torch.device, num_classes: int) -> None:
        self.reader = reader
        self.device = device
        if reader.has_boxes or reader.has_masks:
            # detection and segmentation: a batch's "labels" are its images' indices, by which
            # their boxes or masks are looked up
            self.labels = torch.arange(len(reader.labels), dtype=torch.int64, device=device)
            return
        labels = np.asarray(reader.labels, dtype=np.int64)
        if labels.ndim != 1:
            raise DatasetError(f"{reader.split} labels are not a vector")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(
                f"{reader.split} labels must be in 0..{num_classes - 1}, found "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        self.labels = torch.from_numpy(labels).to(device)

    def __len__(self) -> int:
        """Number of images."""
        return int(self.labels.shape[0])

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Batches:
        """(images, labels) batches in `order` (CPU int64 indices; None = stored order)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the split holds."""


class ResidentSplit(Split):
    """The whole split loaded once into device memory."""

    def __init__(
        self,
        reader: store.SplitReader,
        device: torch.device,
        num_classes: int,
        channels_last: bool,
    ) -> None:
        super().__init__(reader, device, num_classes)
        self.channels_last = channels_last
        n = len(reader)
        h, w, c = reader.shape
        # Physical layout matches the model's memory format, so a gathered batch needs no transpose.
        shape = (n, h, w, c) if channels_last else (n, c, h, w)
        self.physical = torch.empty(shape, dtype=torch.uint8, device=device)
        source = reader.array() if reader.encoding == "raw" else _decode_all(reader)
        chunk = max(1, COPY_CHUNK_BYTES // max(1, h * w * c))
        for start in range(0, n, chunk):
            part = torch.from_numpy(np.array(source[start : start + chunk]))
            part = part.to(device)
            if not channels_last:
                part = part.permute(0, 3, 1, 2)
            self.physical[start : start + chunk].copy_(part)

    def _logical(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Batches:
        """Batches gathered on the device (no host work per batch beyond indexing)."""
        if order is None:
            for start in range(0, len(self), batch_size):
                end = start + batch_size
                yield self._logical(self.physical[start:end]), self.labels[start:end]
            return
        idx_all = order.to(self.device, non_blocking=True)
        for start in range(0, idx_all.shape[0], batch_size):
            idx = idx_all[start : start + batch_size]
            yield (
                self._logical(self.physical.index_select(0, idx)),
                self.labels.index_select(0, idx),
            )

    def close(self) -> None:
        """Free the device copy."""
        self.physical = torch.empty(0, dtype=torch.uint8)


class StreamedSplit(Split):
    """Batches read from the memory-mapped (or decoded) store by a background prefetch thread."""

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Batches:
        """Batches read ahead by a thread, copied to the device as they are consumed."""
        idx_all = (
            np.arange(len(self), dtype=np.int64)
            if order is None
            else order.numpy().astype(np.int64)
        )
        pin = self.device.type == "cuda"
        q: queue.Queue[_Prefetched] = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def put(item: _Prefetched) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for start in range(0, len(idx_all), batch_size):
                    idx = idx_all[start : start + batch_size]
                    t = torch.from_numpy(self.reader.images(idx))
                    if pin:
                        t = t.pin_memory()
                    if not put((t, torch.from_numpy(idx))):
                        return
                put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)

        thread = threading.Thread(target=produce, name=f"prefetch-{self.reader.split}", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, idx = item
                x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                yield x, self.labels.index_select(0, idx.to(self.device, non_blocking=True))
        finally:
            stop.set()
            thread.join(timeout=10)


def _decode_all(reader: store.SplitReader) -> np.ndarray:
    """Decode an encoded split into one N x H x W x C array, several threads at a time."""
    n = len(reader)
    out = np.empty((n, *reader.shape), dtype=np.uint8)
    chunk = 512

    def work(start: int) -> None:
        idx = np.arange(start, min(n, start + chunk))
        out[start : start + len(idx)] = reader.images(idx)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(0, n, chunk)))
    return out


def read_info(dataset_dir: Path) -> DatasetInfo:
    """Classes, image shape and mean image of a stored dataset."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset folder {dataset_dir} does not exist")
    if "train" not in store.splits_present(dataset_dir):
        raise DatasetError("the dataset has no training images")
    try:
        meta = store.read_meta(dataset_dir)
        classes = store.read_classes(dataset_dir)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the dataset's meta.json or labels.txt cannot be read: {exc}") from exc
    task = str(meta.get("task", "classification"))
    if task not in ("classification", "detection", "segmentation"):
        raise DatasetError(f"the dataset's task {task!r} is unknown")
    least = 1 if task == "detection" else 2
    if len(classes) < least:
        raise DatasetError(f"the dataset needs at least {least} classes, it has {len(classes)}")
    height, width, channels = (int(d) for d in meta["image_shape"])
    mean_path = dataset_dir / store.MEAN_NPY
    mean = np.load(mean_path).astype(np.float32) if mean_path.is_file() else None
    if mean is not None and mean.shape != (height, width, channels):
        raise DatasetError(f"mean.npy has shape {mean.shape}, not {(height, width, channels)}")
    return DatasetInfo(classes, height, width, channels, mean, task)


def resident_budget(device: torch.device) -> int:
    """Bytes of images that may be kept in device memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_RESIDENT_FRACTION)
    return CPU_RESIDENT_BYTES


def open_splits(
    dataset_dir: Path,
    info: DatasetInfo,
    device: torch.device,
    channels_last: bool,
    resident: bool | None = None,
) -> tuple[Split, Split | None]:
    """The train split and the val split (None when absent), resident when they fit."""
    present = store.splits_present(dataset_dir)
    readers = [store.open_split(dataset_dir, "train")]
    if "val" in present:
        readers.append(store.open_split(dataset_dir, "val"))
    for r in readers:
        if r.shape != (info.height, info.width, info.channels):
            raise DatasetError(
                f"{r.split} images are {r.shape}, meta.json says "
                f"{(info.height, info.width, info.channels)}"
            )
    if len(readers[0]) == 0:
        raise DatasetError("the dataset has no training images")
    size = sum(len(r) for r in readers) * info.height * info.width * info.channels
    if resident is None:
        resident = size <= resident_budget(device)
    log.info(
        "dataset %s: %d bytes of images, %s on %s",
        Path(dataset_dir).name,
        size,
        "resident" if resident else "streamed",
        device,
    )
    splits: list[Split] = []
    for r in readers:
        if resident:
            splits.append(ResidentSplit(r, device, len(info.classes), channels_last))
        else:
            splits.append(StreamedSplit(r, device, len(info.classes)))
    return splits[0], (splits[1] if len(splits) > 1 and len(splits[1]) else None)


def epoch_order(n: int, slots: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The `slots` sample indices of one epoch: a seeded permutation, wrapped to fill the slots."""
    if shuffle:
        gen = torch.Generator()
        gen.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        perm = torch.randperm(n, generator=gen)
    else:
        perm = torch.arange(n)
    if slots > n:
        perm = perm.repeat(-(-slots // n))
    return perm[:slots]
