"""Benchmark: dataset import of 28x28 grayscale PNGs against a plain single-process PIL loop.

Usage: python bench/import_bench.py [--images N] [--quick] [--repeats R] [--profile]
Prints one JSON line with the median images/s of each variant.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.datasets.importer import ImportOptions, Source, import_dataset

SIZE = 28
CLASSES = 10


def make_images(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Write n random 28x28 grayscale PNGs into CLASSES class folders."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)
        path = root / str(i % CLASSES) / f"{i:06d}.png"
        Image.fromarray(arr, "L").save(path)
        paths.append(path)
    return paths


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Write n 500x375 RGB JPEGs (smooth gradients with noise, like photos) in class folders."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    yy, xx = np.mgrid[0:375, 0:500]
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = (xx * (i % 7 + 1) + yy * (i % 5 + 1)) % 256
        arr = np.stack([base, np.roll(base, i, axis=1), 255 - base], axis=-1).astype(np.int16)
        arr = np.clip(arr + rng.integers(-20, 21, arr.shape), 0, 255).astype(np.uint8)
        path = root / str(i % CLASSES) / f"{i:06d}.jpg"
        Image.fromarray(arr, "RGB").save(path, quality=90)
        paths.append(path)
    return paths


def baseline_jpeg(paths: list[Path], size: int) -> float:
    """Plain single-process decode + resize of the JPEGs into a preallocated array; images/s."""
    t0 = time.perf_counter()
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
    return len(paths) / (time.perf_counter() - t0)


def service_jpeg(root: Path, out: Path, workers: int, size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    opts = ImportOptions(
        width=size, height=size, channels=3, val_pct=25.0, encoding="raw", workers=workers
    )
    t0 = time.perf_counter()
    result = import_dataset(Source(kind="folder", root=root), opts, out)
    return result.num_images / (time.perf_counter() - t0)


def jpeg_case(n: int, repeats: int, cores: int, size: int = 128) -> dict[str, object]:
    """500x375 JPEGs imported at size x size RGB: 1 and all processes against a PIL loop."""
    with tempfile.TemporaryDirectory(prefix="import_bench_jpg_") as tmp:
        root, out = Path(tmp) / "src", Path(tmp) / "out"
        paths = make_jpegs(root, n)
        baseline_jpeg(paths[: min(n, 100)], size)
        base, one, many = [], [], []
        for _ in range(repeats):
            base.append(baseline_jpeg(paths, size))
            one.append(service_jpeg(root, out, 1, size))
            many.append(service_jpeg(root, out, cores, size))
    b, s1, s = statistics.median(base), statistics.median(one), statistics.median(many)
    return {
        "benchmark": "import_jpeg_500x375",
        "images": n,
        "resize_to": size,
        "baseline_ips": round(b, 1),
        "service_ips_1proc": round(s1, 1),
        "service_ips": round(s, 1),
        "ratio": round(s / b, 3),
        "ratio_1proc": round(s1 / b, 3),
        "cores": cores,
        "goal": ">= 0.9x per core, >= 1.7x on two cores",
        "met": s1 / b >= 0.9 and s / b >= 1.7,
    }


def baseline(paths: list[Path]) -> float:
    """Plain single-process decode + resize loop into a preallocated array; images/s."""
    t0 = time.perf_counter()
    out = np.empty((len(paths), SIZE, SIZE), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = np.asarray(Image.open(p).convert("L").resize((SIZE, SIZE), Image.BILINEAR))
    return len(paths) / (time.perf_counter() - t0)


def service(root: Path, out: Path, workers: int) -> float:
    """One import_dataset run; images/s over its whole wall time."""
    shutil.rmtree(out, ignore_errors=True)
    opts = ImportOptions(
        width=SIZE, height=SIZE, channels=1, val_pct=25.0, encoding="raw", workers=workers
    )
    t0 = time.perf_counter()
    result = import_dataset(Source(kind="folder", root=root), opts, out)
    seconds = time.perf_counter() - t0
    return result.num_images / seconds


def main() -> int:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="500 images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one 1-process import")
    args = parser.parse_args()
    n = 500 if args.quick else args.images
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory(prefix="import_bench_") as tmp:
        root = Path(tmp) / "src"
        out = Path(tmp) / "out"
        paths = make_images(root, n)
        baseline(paths[: min(n, 500)])  # warm the page cache and imports
        service(root, out, 1)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            service(root, out, 1)
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        base, one, many = [], [], []
        for _ in range(1 if args.quick else args.repeats):
            base.append(baseline(paths))
            one.append(service(root, out, 1))
            many.append(service(root, out, cores))

    b, s1, s = statistics.median(base), statistics.median(one), statistics.median(many)
    print(
        json.dumps(
            {
                "benchmark": "import_png_28",
                "images": n,
                "baseline_ips": round(b, 1),
                "service_ips_1proc": round(s1, 1),
                "service_ips": round(s, 1),
                "ratio": round(s / b, 3),
                "ratio_1proc": round(s1 / b, 3),
                "cores": cores,
                "python": platform.python_version(),
                "pillow": PIL.__version__,
                "goal": ">= 0.9x per core, >= 1.7x on two cores, >= 10,000 images/s",
                "met": s1 / b >= 0.9 and s / b >= 1.7 and s >= 10_000,
            }
        )
    )
    jpeg = jpeg_case(100 if args.quick else 2_000, 1 if args.quick else args.repeats, cores)
    print(json.dumps({**jpeg, "python": platform.python_version(), "pillow": PIL.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
