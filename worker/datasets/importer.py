"""Import an image classification dataset (DIGITS folder or textfile method) into the store.

Each image is decoded once with PIL, converted, resized with DIGITS's geometry and written by
the worker process itself straight into the preallocated output (``pwrite`` into the ``.npy``
made by ``open_memmap`` for raw encoding, per-chunk files of PNG/JPEG bytes otherwise). Workers
get only index ranges (the job, with its path lists, is inherited through fork) and return
per-chunk statistics.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import os
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from shared import dataset_store as store
from shared import images
from shared.images import IMAGE_EXTENSIONS, NOISE_MODES, RESIZE_MODES

log = logging.getLogger(__name__)

IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
AUTO_RAW_MAX_VALUES = 128 * 128 * 3
IN_PROCESS_MAX_IMAGES = 500
MAX_SKIPPED_SAMPLES = 100
# The reason for a skipped link says nothing of where it leads (another user's files).
LINK_OUTSIDE = "symbolic link to outside the dataset folder"
CHUNK_IMAGES = 256
CHUNK_BUFFER_BYTES = 32 * 1024 * 1024
COMPACT_BLOCK_BYTES = 64 * 1024 * 1024
PARTIAL_DIR = ".partial"
_BY_NAME = attrgetter("name")


@dataclass
class Source:
    """Where the images of one or more splits come from."""

    kind: Literal["folder", "textfile"]
    root: Path
    list_file: Path | None = None
    labels_file: Path | None = None


@dataclass
class ImportOptions:
    """How images are converted and split."""

    width: int = 256
    height: int = 256
    channels: int = 3
    resize_mode: str = "squash"
    val_pct: float = 25.0
    test_pct: float = 0.0
    min_per_class: int = 2
    max_per_class: int | None = None
    encoding: str = "auto"
    seed: int = 0
    shuffle: bool = True
    max_image_pixels: int = images.DEFAULT_MAX_PIXELS
    workers: int = 0


class DatasetImportError(Exception):
    """message is shown to the user as the dataset's error reason"""


class ImportAborted(Exception):
    """The import was cancelled through should_abort."""


@dataclass
class ImportResult:
    """What an import produced."""

    classes: list[str]
    counts: dict[str, list[int]]
    image_shape: tuple[int, int, int]
    encoding: str
    num_images: int
    skipped: int
    skipped_samples: list[dict]
    dropped_classes: list[str]
    seconds: float
    images_per_second: float
    size_bytes: int
    # detection and segmentation: images per split (counts are boxes or pixels per class)
    split_images: dict[str, int] | None = None
    task: str = "classification"
    annotation_format: str | None = None


# ----------------------------------------------------------------------------- listing


@dataclass
class _Skips:
    """Skipped files: a count and the first few samples."""

    count: int = 0
    samples: list[dict] = field(default_factory=list)

    def add(self, rel: str, reason: str) -> None:
        """Record one skipped file."""
        self.count += 1
        log.debug("skipping %s: %s", rel, reason)
        if len(self.samples) < MAX_SKIPPED_SAMPLES:
            self.samples.append({"path": rel, "reason": reason})


def _ignored(name: str) -> bool:
    """Hidden files and folders and OS clutter are ignored silently."""
    return name.startswith(".") or name in IGNORED_NAMES


def _rel(path: str, base: Path) -> str:
    """Path relative to base, with forward slashes."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """Entries of a folder that are not ignored."""
    with os.scandir(folder) as it:
        return [e for e in it if not _ignored(e.name)]


def _inside(path: str, root: str) -> bool:
    """True when a normalised path lies inside root (no symlink resolution)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _link_escapes(entry: os.DirEntry[str], real_root: str) -> bool:
    """True for a symbolic link whose target lies outside the real dataset folder.

    Only links need resolving: the walk enters no folder outside real_root, so a plain entry
    of a folder inside it is inside it too (and listing costs no extra system call).
    """
    return entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root)


def _folder_root(root: Path) -> Path:
    """Descend through single top-level folders that wrap the class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetImportError(f"folder not found: {root.name or root}")
    real_root = os.path.realpath(root)
    for _ in range(8):
        entries = _visible_entries(root)
        dirs = [e for e in entries if e.is_dir() and not _link_escapes(e, real_root)]
        has_images = any(e.is_file() and images.is_image_name(e.name) for e in entries)
        # one folder that itself holds folders wraps the classes; one folder of images is
        # a single class (and the import then says it needs two)
        if (
            len(dirs) == 1
            and not has_images
            and any(e.is_dir() for e in _visible_entries(Path(dirs[0].path)))
        ):
            log.info("descending into wrapping folder %s", dirs[0].name)
            root = Path(dirs[0].path)
        else:
            break
    return root


def _walk_images(folder: Path, base: Path, real_root: str, skips: _Skips) -> list[str]:
    """Image paths under folder, recursively and sorted; other files are recorded as skipped.

    Symbolic links are followed only where they stay inside real_root, the dataset folder's
    real path; the others are skipped without saying where they lead.
    """
    found: list[str] = []
    stack = [os.fspath(folder)]
    seen: set[str] = set()
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:  # symlink loop
            continue
        seen.add(real)
        with os.scandir(current) as it:
            entries = sorted(it, key=_BY_NAME)
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            if name[0] == "." or name in IGNORED_NAMES:
                continue
            if _link_escapes(entry, real_root):
                skips.add(_rel(entry.path, base), LINK_OUTSIDE)
                continue
            if entry.is_dir():
                subdirs.append(entry.path)
            elif name[name.rfind(".") :].lower() in IMAGE_EXTENSIONS:
                found.append(entry.path)
            else:
                skips.add(_rel(entry.path, base), "not an image file")
        stack.extend(reversed(subdirs))
    return found


def _scan_folder(source: Source, skips: _Skips) -> tuple[list[str], dict[str, list[str]]]:
    """Class names (sorted sub-folder names) and the image paths of each class."""
    base = Path(source.root)
    root = _folder_root(base)
    real_root = os.path.realpath(base)
    classes: dict[str, list[str]] = {}
    for entry in sorted(_visible_entries(root), key=lambda e: e.name):
        if _link_escapes(entry, real_root):
            skips.add(_rel(entry.path, base), LINK_OUTSIDE)
        elif entry.is_dir():
            classes[entry.name] = _walk_images(Path(entry.path), base, real_root, skips)
        elif entry.is_file():
            reason = "image outside any class folder" if images.is_image_name(entry.name) else None
            skips.add(_rel(entry.path, base), reason or "not an image file")
    return list(classes), classes


def _read_labels_file(path: Path) -> list[str]:
    """Class names from a labels file, one per line (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise DatasetImportError(f"cannot read labels file {Path(path).name}: {why}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DatasetImportError(f"labels file {Path(path).name} repeats a class name")
    return names


class _RealPaths:
    """Whether listed files really lie inside a folder, resolving each parent folder once."""

    def __init__(self, root: str) -> None:
        self.real_root = os.path.realpath(root)
        self._parents: dict[str, bool] = {}

    def inside(self, path: str) -> bool:
        """True when path, followed through any symbolic links, stays inside the folder."""
        parent = os.path.dirname(path)
        ok = self._parents.get(parent)
        if ok is None:
            ok = self._parents[parent] = _inside(os.path.realpath(parent), self.real_root)
        if not ok:
            return False
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # missing: the decoder says "file not found" later
            return True
        return not is_link or _inside(os.path.realpath(path), self.real_root)


def _scan_textfile(source: Source, num_classes: int, skips: _Skips) -> list[tuple[str, int, int]]:
    """(path, label, line number) of each line of a textfile list."""
    if source.list_file is None:
        raise DatasetImportError("textfile source needs a list file")
    name = Path(source.list_file).name
    try:
        text = Path(source.list_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetImportError(
            f"cannot read list file {name}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
        ) from exc
    root = os.path.normpath(os.path.abspath(source.root))
    real = _RealPaths(root)
    out: list[tuple[str, int, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetImportError(f"{name} line {lineno}: expected '<path> <label>'")
        try:
            label = int(parts[1])
        except ValueError:
            raise DatasetImportError(
                f"{name} line {lineno}: label {parts[1]!r} is not an integer"
            ) from None
        if not 0 <= label < num_classes:
            raise DatasetImportError(
                f"{name} line {lineno}: label {label} is out of range 0..{num_classes - 1}"
            )
        full = os.path.normpath(os.path.join(root, parts[0]))
        if not _inside(full, root):
            skips.add(parts[0], "path outside the dataset folder")
        elif not images.is_image_name(full):
            skips.add(parts[0], "not an image file")
        elif not real.inside(full):
            skips.add(parts[0], LINK_OUTSIDE)
        else:
            out.append((full, label, lineno))
    return out


# ----------------------------------------------------------------------------- planning


def _split_sizes(n: int, val_pct: float, test_pct: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for n images: val and test rounded, train the rest and >= 1."""
    val = round(n * val_pct / 100.0)
    test = round(n * test_pct / 100.0)
    while n - val - test < 1 and (val or test):
        if test:
            test -= 1
        else:
            val -= 1
    return n - val - test, val, test


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator seeded from the import seed and some keys."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, *keys])


def _cap(paths: list[str], max_per_class: int | None, rng: np.random.Generator) -> list[str]:
    """A random (seeded) subset of at most max_per_class paths, in their original order."""
    if max_per_class is None or len(paths) <= max_per_class:
        return paths
    keep = np.sort(rng.choice(len(paths), size=max_per_class, replace=False))
    return [paths[i] for i in keep]


def _gather(
    source: Source,
    classes: list[str] | None,
    opts: ImportOptions,
    skips: _Skips,
    purpose: int,
    rank: dict[str, int],
) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and per-class image paths of a source (classes given for val/test sources).

    rank receives the listing position of each path (class-major for folders, line order for
    textfiles), used to keep the listing order when shuffle is off.
    """
    if source.kind == "folder":
        names, per_class = _scan_folder(source, skips)
        for paths in per_class.values():
            for p in paths:
                rank.setdefault(p, len(rank))
        if classes is not None:
            unknown = [c for c in names if c not in classes]
            if unknown:
                raise DatasetImportError(
                    f"class folder {unknown[0]!r} is not one of the training classes"
                )
            names = list(classes)
    elif source.kind == "textfile":
        if classes is None:
            if source.labels_file is None:
                raise DatasetImportError("textfile source needs a labels file")
            names = _read_labels_file(source.labels_file)
            if not names:
                raise DatasetImportError("the labels file names no classes")
        else:
            names = list(classes)
            if source.labels_file is not None and _read_labels_file(source.labels_file) != names:
                raise DatasetImportError("labels file differs from the training labels file")
        per_class = {c: [] for c in names}
        for path, label, _lineno in _scan_textfile(source, len(names), skips):
            per_class[names[label]].append(path)
            rank.setdefault(path, len(rank))
    else:
        raise DatasetImportError(f"unknown source kind {source.kind!r}")
    capped = {
        c: _cap(per_class.get(c, []), opts.max_per_class, _rng(opts.seed, purpose, k))
        for k, c in enumerate(names)
    }
    return names, capped


@dataclass
class _Split:
    """The images of one split in output order."""

    name: str
    paths: list[str]
    labels: np.ndarray
    root: Path
    base: int = 0

    def __len__(self) -> int:
        return len(self.paths)


def _make_split(
    name: str,
    per_class: list[list[str]],
    root: Path,
    shuffle: bool,
    rng: np.random.Generator,
    rank: dict[str, int],
) -> _Split:
    """Concatenate per-class path lists; shuffled, or else in listing order."""
    paths = [p for plist in per_class for p in plist]
    labels = np.concatenate(
        [np.full(len(plist), k, dtype=np.int64) for k, plist in enumerate(per_class)]
        or [np.zeros(0, dtype=np.int64)]
    )
    if paths:
        if shuffle:
            order = rng.permutation(len(paths))
        else:
            order = np.argsort(np.array([rank[p] for p in paths], dtype=np.int64), kind="stable")
        paths = [paths[i] for i in order]
        labels = labels[order]
    return _Split(name, paths, labels, root)


def _plan(
    train: Source,
    opts: ImportOptions,
    val: Source | None,
    test: Source | None,
    skips: _Skips,
) -> tuple[list[str], list[str], dict[str, _Split]]:
    """Classes kept, classes dropped and the images of each split."""
    rank: dict[str, int] = {}
    names, per_class = _gather(train, None, opts, skips, purpose=1, rank=rank)
    total = sum(len(v) for v in per_class.values())
    if total == 0:
        raise DatasetImportError("no images found in the dataset")
    kept = [c for c in names if len(per_class[c]) >= opts.min_per_class]
    dropped = [c for c in names if c not in kept]
    if dropped:
        log.info("dropping %d classes with fewer than %d images", len(dropped), opts.min_per_class)
    if len(kept) < 2:
        found = ", ".join(f"{c}: {len(per_class[c])}" for c in names[:10])
        more = f", ... ({len(names)} classes)" if len(names) > 10 else ""
        raise DatasetImportError(
            f"dataset needs at least 2 classes with at least {opts.min_per_class} images each; "
            f"found {len(kept)} ({found}{more})"
        )
    val_pct = 0.0 if val is not None else opts.val_pct
    test_pct = 0.0 if test is not None else opts.test_pct
    parts: dict[str, list[list[str]]] = {s: [] for s in store.SPLITS}
    for k, c in enumerate(kept):
        paths = per_class[c]
        order = _rng(opts.seed, 2, k).permutation(len(paths))
        shuffled = [paths[i] for i in order]
        _n_train, n_val, n_test = _split_sizes(len(paths), val_pct, test_pct)
        parts["val"].append(shuffled[:n_val])
        parts["test"].append(shuffled[n_val : n_val + n_test])
        parts["train"].append(shuffled[n_val + n_test :])
    roots = dict.fromkeys(store.SPLITS, Path(train.root))
    for purpose, (name, extra) in enumerate((("val", val), ("test", test)), start=3):
        if extra is None:
            continue
        _, extra_per_class = _gather(extra, names, opts, skips, purpose=purpose, rank=rank)
        parts[name] = [extra_per_class.get(c, []) for c in kept]
        roots[name] = Path(extra.root)
    splits: dict[str, _Split] = {}
    base = 0
    for k, s in enumerate(store.SPLITS):
        split = _make_split(s, parts[s], roots[s], opts.shuffle, _rng(opts.seed, 6, k), rank)
        split.base = base
        base += len(split)
        splits[s] = split
    return kept, dropped, splits


# ----------------------------------------------------------------------------- workers


@dataclass
class _Job:
    """Everything a worker needs; inherited through fork, never pickled."""

    splits: dict[str, _Split]
    partial: Path
    width: int
    height: int
    channels: int
    mode: str
    encoding: str
    seed: int
    max_pixels: int
    data_offset: dict[str, int] = field(default_factory=dict)


@dataclass
class _ChunkResult:
    """Statistics of one processed chunk (the only thing sent back to the parent)."""

    split: str
    start: int
    end: int
    total: np.ndarray | None
    failed: list[tuple[int, str]]
    lengths: np.ndarray | None


class _Skip(Exception):
    """An image that is skipped, with the reason."""


def _chunk_file(partial: Path, split: str, start: int) -> Path:
    """Temporary file of one chunk's encoded images."""
    return partial / "chunks" / f"{split}_{start:012d}.bin"


def _load(job: _Job, path: str, index: int) -> np.ndarray:
    """Decode, convert and resize one image: H x W x C uint8."""
    try:
        img = images.decode(path, max_pixels=job.max_pixels)
        rng = None
        if job.mode in NOISE_MODES and img.size != (job.width, job.height):
            rng = _rng(job.seed, index)
        return images.prepare(img, job.width, job.height, job.channels, job.mode, rng)
    except images.ImageError as exc:
        raise _Skip(exc.message) from None


def _process_chunk(job: _Job, split_name: str, start: int, end: int) -> _ChunkResult:
    """Decode images [start, end) of a split and write them to the output."""
    split = job.splits[split_name]
    buf = np.zeros((end - start, job.height, job.width, job.channels), dtype=np.uint8)
    failed: list[tuple[int, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        for j, path in enumerate(split.paths[start:end]):
            try:
                arr = _load(job, path, split.base + start + j)
            except _Skip as exc:
                failed.append((start + j, str(exc)))
                continue
            buf[j] = arr
    lengths = None
    if job.encoding == "raw":
        # pwrite into the preallocated .npy: much cheaper than dirtying a memory map page by page
        offset = job.data_offset[split_name] + start * buf[0].nbytes
        fd = os.open(store.raw_images_path(job.partial, split_name), os.O_WRONLY)
        try:
            view = buf.reshape(-1).data
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        finally:
            os.close(fd)
    else:
        bad = {i - start for i, _ in failed}
        lengths = np.zeros(end - start, dtype=np.int64)
        with open(_chunk_file(job.partial, split_name, start), "wb") as fh:
            for j in range(end - start):
                if j not in bad:
                    data = store.encode_image(buf[j], job.encoding)
                    fh.write(data)
                    lengths[j] = len(data)
    total = buf.sum(axis=0, dtype=np.float64) if split_name == "train" else None
    return _ChunkResult(split_name, start, end, total, failed, lengths)


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    """Pool initializer: keep the (fork-inherited) job in the worker."""
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_chunk(split_name: str, start: int, end: int) -> _ChunkResult:
    """Pool task: process one chunk of the inherited job."""
    assert _WORKER_JOB is not None
    return _process_chunk(_WORKER_JOB, split_name, start, end)


# ----------------------------------------------------------------------------- import


def _resolve_encoding(opts: ImportOptions) -> str:
    """The storage encoding: raw for small images unless asked otherwise."""
    if opts.encoding == "auto":
        small = opts.width * opts.height * opts.channels <= AUTO_RAW_MAX_VALUES
        return "raw" if small else "png"
    return opts.encoding


def _validate(opts: ImportOptions) -> None:
    """Reject options that cannot work."""
    if not (1 <= opts.width <= 8192 and 1 <= opts.height <= 8192):
        raise DatasetImportError("width and height must be between 1 and 8192")
    if opts.channels not in (1, 3):
        raise DatasetImportError("channels must be 1 or 3")
    if opts.resize_mode not in RESIZE_MODES:
        raise DatasetImportError(f"resize mode must be one of {', '.join(RESIZE_MODES)}")
    if opts.encoding not in ("auto", *store.ENCODINGS):
        raise DatasetImportError("encoding must be auto, raw, png or jpg")
    if opts.val_pct < 0 or opts.test_pct < 0 or opts.val_pct + opts.test_pct >= 100:
        raise DatasetImportError("val and test percentages must be >= 0 and sum to under 100")
    if opts.min_per_class < 0:
        raise DatasetImportError("min_per_class must be >= 0")
    if opts.max_per_class is not None and opts.max_per_class < 1:
        raise DatasetImportError("max_per_class must be >= 1")
    if opts.max_image_pixels < 1:
        raise DatasetImportError("max_image_pixels must be >= 1")


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_count(opts: ImportOptions, total: int) -> int:
    """Processes to use: 1 for small jobs and inside daemonic processes."""
    wanted = opts.workers if opts.workers > 0 else _usable_cores()
    if total < IN_PROCESS_MAX_IMAGES or wanted <= 1:
        return 1
    if multiprocessing.current_process().daemon:
        log.info("running in a daemonic process; importing in-process")
        return 1
    return wanted


def _chunks(splits: dict[str, _Split], chunk: int) -> list[tuple[str, int, int]]:
    """Index ranges of every split, chunk images at a time."""
    return [
        (s.name, start, min(start + chunk, len(s)))
        for s in splits.values()
        for start in range(0, len(s), chunk)
    ]


def _run(
    job: _Job,
    tasks: list[tuple[str, int, int]],
    workers: int,
    on_result: Callable[[_ChunkResult], None],
    should_abort: Callable[[], bool] | None,
) -> None:
    """Process all chunks in-process or on a fork pool, checking for abort between chunks."""
    if workers <= 1:
        for task in tasks:
            if should_abort is not None and should_abort():
                raise ImportAborted("import aborted")
            on_result(_process_chunk(job, *task))
        return
    ctx = multiprocessing.get_context("fork")
    gc.freeze()  # keep the children's garbage collector off the inherited (copy-on-write) heap
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(job,),
    )
    try:
        pending: set[Future[_ChunkResult]] = set()
        queue = list(reversed(tasks))
        in_flight = 2 * workers + 2
        while queue or pending:
            while queue and len(pending) < in_flight:
                pending.add(pool.submit(_worker_chunk, *queue.pop()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                on_result(fut.result())
            if should_abort is not None and should_abort():
                raise ImportAborted("import aborted")
    except BrokenProcessPool as exc:
        raise DatasetImportError("an import worker process died (out of memory?)") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()


def _compact_raw(partial: Path, split: str, keep: np.ndarray) -> None:
    """Rewrite a raw image array with only the kept rows."""
    src_path = store.raw_images_path(partial, split)
    src = np.load(src_path, mmap_mode="r")
    tmp_path = partial / f"{split}_images.compact.npy"
    dst = np.lib.format.open_memmap(
        tmp_path, mode="w+", dtype=np.uint8, shape=(len(keep), *src.shape[1:])
    )
    block = max(1, COMPACT_BLOCK_BYTES // max(1, int(np.prod(src.shape[1:]))))
    for b in range(0, len(keep), block):
        dst[b : b + block] = src[keep[b : b + block]]
    del dst, src
    os.replace(tmp_path, src_path)


def _join_encoded(
    partial: Path, split: str, tasks: list[tuple[str, int, int]], lengths: dict[int, np.ndarray]
) -> None:
    """Concatenate a split's chunk files into s_images.bin and write s_offsets.npy."""
    sizes: list[np.ndarray] = []
    with open(store.encoded_images_path(partial, split), "wb") as out:
        for name, start, _end in tasks:
            if name != split:
                continue
            chunk = _chunk_file(partial, split, start)
            with open(chunk, "rb") as fh:
                shutil.copyfileobj(fh, out, 1024 * 1024)
            chunk.unlink()
            sizes.append(lengths[start][lengths[start] > 0])
    offsets = np.zeros(1 + sum(len(s) for s in sizes), dtype=np.int64)
    if sizes:
        np.cumsum(np.concatenate(sizes), out=offsets[1:])
    np.save(store.offsets_path(partial, split), offsets)


def import_dataset(
    train: Source,
    opts: ImportOptions,
    out_dir: Path,
    *,
    val: Source | None = None,
    test: Source | None = None,
    progress: Callable[[float], None] | None = None,
    should_abort: Callable[[], bool] | None = None,
) -> ImportResult:
    """Import a dataset into out_dir in the training-ready store format."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    _validate(opts)
    encoding = _resolve_encoding(opts)
    skips = _Skips()
    classes, dropped, splits = _plan(train, opts, val, test, skips)
    total = sum(len(s) for s in splits.values())
    if len(splits["train"]) == 0:
        raise DatasetImportError("no training images")
    log.info(
        "importing %d images (%s) in %d classes at %dx%dx%d, %s, %s encoding; %d files skipped",
        total,
        ", ".join(f"{s.name} {len(s)}" for s in splits.values() if len(s)),
        len(classes),
        opts.width,
        opts.height,
        opts.channels,
        opts.resize_mode,
        encoding,
        skips.count,
    )
    return in_partial(
        out_dir,
        t0,
        lambda partial: _import_into(
            splits,
            classes,
            dropped,
            opts,
            encoding,
            skips,
            partial,
            out_dir,
            progress,
            should_abort,
        ),
    )


def in_partial(out_dir: Path, t0: float, build: Callable[[Path], ImportResult]) -> ImportResult:
    """Run build in a fresh out_dir/.partial (removed on any failure) and time its result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL_DIR
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        result = build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - t0
    result.images_per_second = result.num_images / result.seconds if result.seconds > 0 else 0.0
    log.info(
        "imported %s: %d images in %.1f s (%.0f images/s), %d skipped, %d bytes",
        result.task,
        result.num_images,
        result.seconds,
        result.images_per_second,
        result.skipped,
        result.size_bytes,
    )
    return result


def _prepare_outputs(
    splits: dict[str, _Split], shape: tuple[int, int, int], encoding: str, partial: Path
) -> dict[str, int]:
    """Preallocate the raw arrays (or the chunk folder); return each array's data offset."""
    data_offset: dict[str, int] = {}
    if encoding != "raw":
        (partial / "chunks").mkdir()
        return data_offset
    for split in splits.values():
        if len(split):
            mm = np.lib.format.open_memmap(
                store.raw_images_path(partial, split.name),
                mode="w+",
                dtype=np.uint8,
                shape=(len(split), *shape),
            )
            data_offset[split.name] = int(mm.offset)
            del mm
    return data_offset


def _finish_split(
    split: _Split,
    failed: list[tuple[int, str]],
    num_classes: int,
    encoding: str,
    partial: Path,
    tasks: list[tuple[str, int, int]],
    lengths: dict[int, np.ndarray],
    skips: _Skips,
) -> list[int]:
    """Drop a split's failed slots and write its labels and images; return per-class counts."""
    bad = sorted(failed)
    for i, reason in bad:
        skips.add(_rel(split.paths[i], split.root), reason)
    keep = np.setdiff1d(np.arange(len(split)), np.array([i for i, _ in bad], dtype=np.int64))
    labels = split.labels[keep]
    if len(split):
        if bad:
            log.info("%s: %d images could not be read", split.name, len(bad))
        if encoding != "raw":
            _join_encoded(partial, split.name, tasks, lengths)
        elif bad and len(labels):
            _compact_raw(partial, split.name, keep)
        if len(labels):
            np.save(store.labels_path(partial, split.name), labels.astype(np.int64))
        else:  # nothing readable: the split is absent
            for path in (
                store.raw_images_path(partial, split.name),
                store.encoded_images_path(partial, split.name),
                store.offsets_path(partial, split.name),
            ):
                path.unlink(missing_ok=True)
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


def _publish(partial: Path, out_dir: Path) -> int:
    """Move the finished files into out_dir (meta.json last) and remove stale ones; bytes."""
    written = {p.name for p in partial.iterdir() if p.is_file()}
    for split in store.SPLITS:  # files of an earlier import into the same folder
        for stale in (
            store.labels_path(out_dir, split),
            store.raw_images_path(out_dir, split),
            store.encoded_images_path(out_dir, split),
            store.offsets_path(out_dir, split),
        ):
            if stale.name not in written:
                stale.unlink(missing_ok=True)
    size_bytes = 0
    for name in sorted(written, key=lambda n: (n == store.META_FILE, n)):
        size_bytes += (partial / name).stat().st_size
        os.replace(partial / name, out_dir / name)
    shutil.rmtree(partial, ignore_errors=True)
    return size_bytes


def _import_into(
    splits: dict[str, _Split],
    classes: list[str],
    dropped: list[str],
    opts: ImportOptions,
    encoding: str,
    skips: _Skips,
    partial: Path,
    out_dir: Path,
    progress: Callable[[float], None] | None,
    should_abort: Callable[[], bool] | None,
) -> ImportResult:
    """Decode everything into partial/, finish the files and move them into out_dir."""
    shape = (opts.height, opts.width, opts.channels)
    total = sum(len(s) for s in splits.values())
    job = _Job(
        splits=splits,
        partial=partial,
        width=opts.width,
        height=opts.height,
        channels=opts.channels,
        mode=opts.resize_mode,
        encoding=encoding,
        seed=opts.seed,
        max_pixels=opts.max_image_pixels,
        data_offset=_prepare_outputs(splits, shape, encoding, partial),
    )
    workers = _worker_count(opts, total)
    per_image = int(np.prod(shape))
    chunk = max(
        1, min(CHUNK_IMAGES, math.ceil(total / (4 * workers)), CHUNK_BUFFER_BYTES // per_image)
    )
    tasks = _chunks(splits, chunk)
    log.info(
        "decoding with %d process(es), %d chunks of up to %d images", workers, len(tasks), chunk
    )

    train_sum = np.zeros(shape, dtype=np.float64)
    failed: dict[str, list[tuple[int, str]]] = {name: [] for name in splits}
    lengths: dict[str, dict[int, np.ndarray]] = {name: {} for name in splits}
    done = 0

    def on_result(res: _ChunkResult) -> None:
        nonlocal done
        if res.total is not None:
            train_sum[...] += res.total
        failed[res.split].extend(res.failed)
        if res.lengths is not None:
            lengths[res.split][res.start] = res.lengths
        done += res.end - res.start
        if progress is not None:
            progress(min(0.99, done / total))

    _run(job, tasks, workers, on_result, should_abort)

    counts = {
        name: _finish_split(
            split, failed[name], len(classes), encoding, partial, tasks, lengths[name], skips
        )
        for name, split in splits.items()
    }
    shutil.rmtree(partial / "chunks", ignore_errors=True)
    sizes = {name: sum(c) for name, c in counts.items()}
    if sizes["train"] == 0:
        raise DatasetImportError("none of the training images could be read")
    with_images = sum(1 for c in counts["train"] if c > 0)
    if with_images < 2:
        raise DatasetImportError(
            f"dataset needs at least 2 classes with readable training images; found {with_images}"
        )

    mean = (train_sum / sizes["train"]).astype(np.float32)
    np.save(partial / store.MEAN_NPY, mean)
    (partial / store.MEAN_PNG).write_bytes(
        store.to_png_bytes(np.clip(np.rint(mean), 0, 255).astype(np.uint8))
    )
    (partial / store.LABELS_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    num_images = sum(sizes.values())
    meta = {
        "format_version": store.FORMAT_VERSION,
        "classes": classes,
        "num_classes": len(classes),
        "counts": counts,
        "split_sizes": sizes,
        "splits": [name for name in store.SPLITS if sizes[name] > 0],
        "image_shape": list(shape),
        "width": opts.width,
        "height": opts.height,
        "channels": opts.channels,
        "resize_mode": opts.resize_mode,
        "encoding": encoding,
        "num_images": num_images,
        "skipped": skips.count,
        "dropped_classes": dropped,
        "seed": opts.seed,
        "shuffle": opts.shuffle,
    }
    (partial / store.META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    size_bytes = _publish(partial, out_dir)
    if progress is not None:
        progress(1.0)
    return ImportResult(
        classes=classes,
        counts=counts,
        image_shape=shape,
        encoding=encoding,
        num_images=num_images,
        skipped=skips.count,
        skipped_samples=skips.samples,
        dropped_classes=dropped,
        seconds=0.0,
        images_per_second=0.0,
        size_bytes=size_bytes,
    )
