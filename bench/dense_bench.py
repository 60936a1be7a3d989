"""Benchmark: one epoch of the shapes detector, worker.training.train() against a hand-written
torchvision loop on the same data.

Both sides train FCOS on a ResNet-18 FPN (dense.build, same seed) over the same stored shapes
dataset (Pillow-rendered, imported as Pascal VOC), batch 16, AdamW, horizontal flips, gradient
clipping at 10, fp32 on the CPU (bf16 autocast on CUDA). The baseline is the loop a person
writes from torchvision's reference: images and boxes as lists of tensors, a random order,
flips drawn per image, `sum(model(images, targets).values())`. The engine's figure is its
training images/s (validation and checkpoint writes excluded, as it reports them); the
baseline's counts its epoch alone. Runs alternate (engine, baseline, baseline, engine, ...)
after an untimed warm-up of each; "ratio" is the median over pairs of engine / baseline.

Usage: python -m bench.dense_bench [--repeats R] [--quick] [--size PX] [--images N]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import emit
from bench.train_bench import NullReporter
from shared import dataset_store as store
from shared.schemas.jobs import Hyperparameters
from tests import shapes
from worker.datasets.annotated import AnnotatedOptions, import_annotated
from worker.datasets.importer import ImportOptions, Source
from worker.training import dense
from worker.training.engine import TrainSpec, train

NETWORK = "fcos_resnet18_fpn"
BATCH = 16
LR = 1e-3
SEED = 0


def make_dataset(root: Path, images: int, size: int) -> Path:
    """The shapes as VOC, imported at size x size with a 10-image val split."""
    src = root / "voc"
    shapes.write_voc(src, shapes.render(images + 10, size, size, seed=1))
    out = root / "stored"
    opts = ImportOptions(width=size, height=size, val_pct=100 * 10 / (images + 10), seed=5)
    import_annotated(Source(kind="folder", root=src), opts, AnnotatedOptions("detection"), out)
    return out


def run_engine(dataset: Path, work: Path, device: str) -> float:
    """Training images/s of one epoch through the engine."""
    hyper = Hyperparameters(
        epochs=1,
        batch_size=BATCH,
        solver="adamw",
        learning_rate=LR,
        weight_decay=1e-4,
        lr_policy="fixed",
        aug_flip="fliplr",
        val_interval=0,
        snapshot_interval=0,
        seed=SEED,
    )
    out = work / "engine"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = TrainSpec(dataset, {"kind": "standard", "name": NETWORK}, hyper, out, device=device)
    return train(spec, NullReporter()).images_per_second


def run_baseline(dataset: Path, device: str) -> float:
    """Images/s of one epoch of a hand-written torchvision detection loop."""
    dev = torch.device(device)
    reader = store.open_split(dataset, "train")
    classes = store.read_classes(dataset)
    h, w, _c = reader.shape
    images = [
        torch.from_numpy(np.array(reader.image(i))).permute(2, 0, 1).to(dev)
        for i in range(len(reader))
    ]
    targets = []
    for i in range(len(reader)):
        boxes, labels = reader.boxes(i)
        targets.append(
            {
                "boxes": torch.from_numpy(boxes).to(dev),
                "labels": torch.from_numpy(labels.astype(np.int64)).to(dev) + 1,
            }
        )
    torch.manual_seed(SEED)
    model = dense.build(NETWORK, "detection", len(classes), h, w).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    order = list(range(len(images)))
    random.Random(SEED).shuffle(order)
    amp = dev.type == "cuda"
    if amp:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(order), BATCH):
        batch_x, batch_t = [], []
        for i in order[start : start + BATCH]:
            x = images[i].float() / 255
            t = dict(targets[i])
            if random.random() < 0.5:
                x = x.flip(-1)
                b = t["boxes"].clone()
                b[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
                t["boxes"] = b
            batch_x.append(x)
            batch_t.append(t)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = sum(model(batch_x, batch_t).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    if amp:
        torch.cuda.synchronize()
    return len(order) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny, one pair")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=320)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    size, count, repeats = args.size, args.images, args.repeats
    if args.quick:  # smoke: half a batch of small images, one pair
        size, count, repeats = 32, 8, 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = make_dataset(work, count, size)
        if not args.quick:  # warm-up: oneDNN's kernels, allocator pools
            run_engine(dataset, work, device)
            run_baseline(dataset, device)
        engine, baseline = [], []
        for r in range(repeats):
            pair = [("e", run_engine), ("b", run_baseline)]
            for tag, _fn in pair if r % 2 == 0 else pair[::-1]:
                if tag == "e":
                    engine.append(run_engine(dataset, work, device))
                else:
                    baseline.append(run_baseline(dataset, device))
    ratios = [e / b for e, b in zip(engine, baseline, strict=True)]
    emit(
        {
            "benchmark": "detection_epoch",
            "network": NETWORK,
            "images": count,
            "size": size,
            "device": device,
            "engine_ips": [round(v, 2) for v in engine],
            "baseline": "hand-written torchvision detection loop, same model, data and recipe",
            "baseline_ips": [round(v, 2) for v in baseline],
            "ratio": round(statistics.median(ratios), 3),
            "goal": "engine >= 0.95 x baseline",
            "met": statistics.median(ratios) >= 0.95,
        }
    )


if __name__ == "__main__":
    main()
