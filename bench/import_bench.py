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
    parser.add_argument("--quick", action="store_true", help="2,000 images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one 1-process import")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.images
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
        for _ in range(args.repeats):
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
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
