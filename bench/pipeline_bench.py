"""Against the DIGITS-style pipeline: the same LeNet training fed by torchvision's ImageFolder
and a DataLoader that decodes the PNG files every epoch, against the service's engine reading
its imported dataset. Same model, data, batch size and optimizer, in one run.

Usage: python bench/pipeline_bench.py [--images N] [--epochs E] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import emit, median
from shared.schemas.jobs import Hyperparameters
from worker.datasets.importer import ImportOptions, Source, import_dataset
from worker.training.engine import TrainSpec, train
from worker.training.models import build_model


class Quiet:
    """A reporter that drops everything."""

    def metrics(self, *_a: object) -> None: ...
    def progress(self, *_a: object) -> None: ...
    def checkpoint_saved(self, *_a: object) -> None: ...
    def should_stop(self) -> bool:
        return False

    def log(self, *_a: object) -> None: ...


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / str(i % 10)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
            folder / f"{i:06d}.png"
        )


def imagefolder_ips(root: Path, mean: torch.Tensor, epochs: int, workers: int) -> float:
    """Images/s of ImageFolder + DataLoader (PNG decode every epoch) + the same training."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(1), transforms.PILToTensor()])
    data = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=64,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    torch.manual_seed(0)
    model = build_model({"kind": "standard", "name": "lenet"}, 10, 1, 28, 28)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model((x.float() - mean) / 255.0), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
    return seen / (time.perf_counter() - start)


def service_ips(dataset: Path, out: Path, epochs: int) -> float:
    hyper = Hyperparameters(
        epochs=epochs,
        batch_size=64,
        learning_rate=0.01,
        lr_policy="fixed",
        val_interval=0,
        snapshot_interval=0,
        seed=0,
    )
    spec = TrainSpec(
        dataset_dir=dataset,
        network={"kind": "standard", "name": "lenet"},
        hyper=hyper,
        out_dir=out,
        device="cpu",
    )
    start = time.perf_counter()
    result = train(spec, Quiet())  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    return result.steps * 64 / wall if wall else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 300 if args.quick else args.images  # smoke: five batches of 64 an epoch
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        make_folder(root, n)
        dataset = Path(tmp) / "dataset"
        import_dataset(
            Source(kind="folder", root=root),
            ImportOptions(width=28, height=28, channels=1, val_pct=0, seed=0),
            dataset,
        )
        mean = torch.from_numpy(np.load(dataset / "mean.npy")).permute(2, 0, 1)
        workers = 2
        base, svc = [], []
        for r in range(repeats):
            svc.append(service_ips(dataset, Path(tmp) / f"out{r}", args.epochs))
            base.append(imagefolder_ips(root, mean, args.epochs, workers))
    emit(
        {
            "benchmark": "pipeline_vs_imagefolder",
            "images": n,
            "epochs": args.epochs,
            "service_ips": round(median(svc), 1),
            "baseline": f"ImageFolder + DataLoader(num_workers={workers}) decoding PNGs",
            "baseline_ips": round(median(base), 1),
            "ratio": round(median(svc) / median(base), 2),
            "goal": ">= 3x",
            "met": median(svc) / median(base) >= 3,
        }
    )


if __name__ == "__main__":
    main()
