"""Benchmark: images/s of worker.training.train() against a minimal hand-written PyTorch loop,
and against a Lightning Trainer (bench/lightning_baseline.py) running the same module and data.

Both sides train the same model (build_model, same seed) on the same uint8 images held on the
device, with the same preprocessing (float, minus the mean image, / 255), batch size, dtype
(bf16 autocast on CUDA, fp32 on the CPU), SGD with momentum, and memory layout: the engine's
choice, so the ratio measures the loop's overhead (--nchw-baseline times a plain NCHW loop).
Runs alternate (engine, baseline, Lightning, Lightning, baseline, engine, ...) after one
untimed warm-up of each; Lightning's figure counts its training epochs (its set-up apart,
reported as lightning_fit_ips).

Usage: python bench/train_bench.py [--repeats R] [--quick] [--device cpu|cuda|all] [--profile]
Prints one JSON line per case; "ratio" is the median over pairs of engine / baseline images/s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import lightning_baseline as lb
from shared import dataset_store as store
from shared.schemas.jobs import Hyperparameters
from worker.training.engine import CheckpointInfo, TrainSpec, train, use_channels_last
from worker.training.models import build_model

LR = 0.01
MOMENTUM = 0.9
SEED = 0


@dataclass
class Case:
    """One model / input shape / dataset size."""

    model: str
    height: int
    width: int
    channels: int
    images: int
    classes: int = 10
    batch_size: int = 64


CASES = [Case("lenet", 28, 28, 1, 10240), Case("resnet18", 32, 32, 3, 2048)]


class NullReporter:
    """Swallows everything, as fast as a real reporter's buffer."""

    def metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        """Ignore."""

    def progress(self, epoch: float, step: int, total_steps: int) -> None:
        """Ignore."""

    def checkpoint_saved(self, info: CheckpointInfo) -> None:
        """Ignore."""

    def should_stop(self) -> bool:
        """Never."""
        return False

    def log(self, message: str) -> None:
        """Ignore."""


def make_dataset(case: Case, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic images in the store's raw layout; returns (images NHWC, labels, mean HWC)."""
    rng = np.random.default_rng(0)
    shape = (case.height, case.width, case.channels)
    images = rng.integers(0, 256, size=(case.images, *shape), dtype=np.uint8)
    labels = rng.integers(0, case.classes, size=case.images).astype(np.int64)
    mean = images.astype(np.float64).mean(axis=0).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    np.save(store.raw_images_path(root, "train"), images)
    np.save(store.labels_path(root, "train"), labels)
    np.save(root / store.MEAN_NPY, mean)
    (root / store.LABELS_FILE).write_text("".join(f"c{i}\n" for i in range(case.classes)))
    meta = {"image_shape": list(shape), "encoding": "raw", "classes": case.classes}
    (root / store.META_FILE).write_text(json.dumps(meta))
    return images, labels, mean


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """What the engine picks: bf16 on CUDA where supported, else fp16; fp32 on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(case: Case, dataset: Path, out: Path, device: torch.device, epochs: int) -> float:
    """One train() run; the engine's own images/s (training steps only)."""
    hyper = Hyperparameters(
        epochs=epochs,
        batch_size=case.batch_size,
        learning_rate=LR,
        momentum=MOMENTUM,
        solver="sgd",
        lr_policy="fixed",
        use_mean="image",
        val_interval=0,
        snapshot_interval=0,
        seed=SEED,
    )
    shutil.rmtree(out, ignore_errors=True)
    spec = TrainSpec(dataset, {"kind": "standard", "name": case.model}, hyper, out, str(device))
    return train(spec, NullReporter()).images_per_second


def run_baseline(
    case: Case,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    device: torch.device,
    epochs: int,
    nchw: bool = False,
) -> float:
    """The minimal loop: randperm, gather, float/mean/255, forward, backward, SGD step."""
    torch.manual_seed(SEED)
    network = {"kind": "standard", "name": case.model}
    model = build_model(network, case.classes, case.channels, case.height, case.width)
    # the engine's layout, so the ratio times the loop's overhead; nchw: a plain NCHW loop
    channels_last = use_channels_last(model, device) and not nchw
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=LR / 100)
    dtype = amp_dtype(device)
    n, bs = images.shape[0], case.batch_size
    steps = math.ceil(n / bs)
    sync(device)
    t0 = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            x = ((images[idx].float() - mean) / 255).contiguous(memory_format=fmt)
            y = labels[idx]
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += idx.shape[0]
    sync(device)
    return seen / (time.perf_counter() - t0)


def run_lightning(
    case: Case,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    device: torch.device,
    epochs: int,
) -> tuple[float, float]:
    """The same model, batches, preprocessing, optimizer and dtype under a Lightning Trainer:
    images/s of its training epochs, and of the whole fit() (with the Trainer's set-up)."""
    from bench import lightning_baseline as lb

    torch.manual_seed(SEED)
    network = {"kind": "standard", "name": case.model}
    model = build_model(network, case.classes, case.channels, case.height, case.width)
    fmt = torch.channels_last if use_channels_last(model, device) else torch.contiguous_format
    model = model.to(device, memory_format=fmt)

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - mean) / 255).contiguous(memory_format=fmt)

    def sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=LR / 100)

    dtype = amp_dtype(device)
    precision = {None: "32-true", torch.bfloat16: "bf16-mixed"}.get(dtype, "16-mixed")
    clock = lb.StepClock()
    trainer = lb.trainer(device, epochs, precision, [clock.callback(device)])
    data = lb.loader(lb.Batches(images, labels, case.batch_size))
    seen = images.shape[0] * epochs
    started = time.perf_counter()
    trainer.fit(lb.module(model, preprocess, sgd), train_dataloaders=data)
    sync(device)
    return seen / clock.seconds, seen / (time.perf_counter() - started)


def bench_case(
    case: Case,
    device: torch.device,
    repeats: int,
    quick: bool,
    profile: bool,
    nchw: bool,
    lightning: bool = True,
) -> dict:
    """Alternating paired runs of one case on one device."""
    if quick:  # smoke: 320 LeNet images (five batches), 64 ResNet-18 ones (one batch)
        case = Case(case.model, case.height, case.width, case.channels, case.images // 32)
    epochs = 1 if device.type == "cpu" or quick else (5 if case.model == "lenet" else 10)
    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        images_np, labels_np, mean_np = make_dataset(case, tmp / "dataset")
        # clone with an explicit format: .contiguous() leaves an N x 1 x H x W view of NHWC data
        # with channels_last strides, which silently switches the CPU kernels the baseline uses.
        view = torch.from_numpy(images_np).permute(0, 3, 1, 2)
        images = view.clone(memory_format=torch.contiguous_format).to(device)
        labels = torch.from_numpy(labels_np).to(device)
        mean = torch.from_numpy(mean_np).permute(2, 0, 1).contiguous().to(device)

        def engine() -> float:
            return run_engine(case, tmp / "dataset", tmp / "out", device, epochs)

        def baseline() -> float:
            return run_baseline(case, images, labels, mean, device, epochs, nchw)

        with_lightning = lightning and lb.available()

        def peer() -> tuple[float, float]:
            return run_lightning(case, images, labels, mean, device, epochs)

        engine(), baseline()  # warm-up: allocator, cuDNN autotuning, lazy inits
        if with_lightning:
            peer()
        if profile:
            prof = cProfile.Profile()
            prof.runcall(engine)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            print(text.getvalue(), file=sys.stderr)
        eng: list[float] = []
        base: list[float] = []
        light: list[tuple[float, float]] = []
        for r in range(repeats):
            if r % 2 == 0:
                eng.append(engine())
                base.append(baseline())
                if with_lightning:
                    light.append(peer())
            else:
                if with_lightning:
                    light.append(peer())
                base.append(baseline())
                eng.append(engine())
        ratios = [e / b for e, b in zip(eng, base, strict=True)]
        dtype = amp_dtype(device)
        peer_figures: dict[str, object] = {}
        if light:
            steps = [x[0] for x in light]
            peer_figures = {
                "lightning_ips": round(statistics.median(steps), 1),
                "lightning_fit_ips": round(statistics.median(x[1] for x in light), 1),
                # engine / Lightning per pair, as the main ratio is engine / hand-written loop
                "ratio_vs_lightning": round(
                    statistics.median(e / x for e, x in zip(eng, steps, strict=True)), 4
                ),
                "lightning_runs": [round(v, 1) for v in steps],
                "lightning": lb.version(),
            }
        return {
            "benchmark": "train_overhead",
            "model": case.model,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "engine_ips": round(statistics.median(eng), 1),
            "baseline_ips": round(statistics.median(base), 1),
            "ratio": round(statistics.median(ratios), 4),
            "batch_size": case.batch_size,
            "torch": torch.__version__,
            "input": [case.channels, case.height, case.width],
            "images": case.images,
            "epochs": epochs,
            "dtype": str(dtype or torch.float32).replace("torch.", ""),
            "baseline_layout": "nchw" if nchw else "engine's",
            "repeats": repeats,
            "engine_runs": [round(v, 1) for v in eng],
            "baseline_runs": [round(v, 1) for v in base],
            **peer_figures,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run every case on the chosen devices; one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 15 s on a CPU)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--model", choices=[c.model for c in CASES], action="append")
    parser.add_argument("--profile", action="store_true", help="cProfile one engine run")
    parser.add_argument("--nchw-baseline", action="store_true", help="a plain NCHW baseline loop")
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning peer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    repeats = 1 if args.quick else args.repeats
    for device in devices:
        for case in CASES:
            if args.model and case.model not in args.model:
                continue
            result = bench_case(
                case,
                device,
                repeats,
                args.quick,
                args.profile,
                args.nchw_baseline,
                lightning=not args.no_lightning,
            )
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
