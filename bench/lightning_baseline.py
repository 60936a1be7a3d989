"""A Lightning `Trainer` as a second baseline: what many users would write instead of us.

The module and the data are the hand-written loop's: the same model object (build_model, the
same seed and memory layout), the same batches (a random permutation per epoch, gathered from
tensors already on the device), the same preprocessing, optimizer and dtype. So the figures
measure the Trainer's own overhead, not a slower input pipeline (an idiomatic TensorDataset
with `DataLoader(shuffle=True)` collates 64 single images per step and is slower still).

pytorch-lightning is a bench/dev dependency only; `available()` says whether it is installed.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

Preprocess = Callable[[torch.Tensor], torch.Tensor]


def available() -> bool:
    """Whether pytorch-lightning can be imported."""
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    """The installed pytorch-lightning version."""
    import pytorch_lightning

    return str(pytorch_lightning.__version__)


class Batches(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """The hand-written loop's batches: a new permutation each epoch, gathered in place."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(self.images.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.images.shape[0], self.batch_size
        perm = torch.randperm(n, device=self.images.device)
        for i in range(len(self)):
            idx = perm[i * bs : (i + 1) * bs]
            yield self.images[idx], self.labels[idx]


def loader(dataset: IterableDataset[Any]) -> DataLoader[Any]:
    """Batches as they come (no collation, no worker processes: the data is in memory).

    The loader has its own generator: each epoch's iterator draws a base seed, which from the
    global generator would shift every later permutation (the hand-written loop's batches, and
    its accuracies, would no longer be the Trainer's)."""
    return DataLoader(dataset, batch_size=None, num_workers=0, generator=torch.Generator())


def quiet() -> None:
    """Lightning's start-up banners and advice (GPU available, few workers) off."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def module(
    model: torch.nn.Module,
    preprocess: Preprocess,
    optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Any:
    """A LightningModule around `model`: cross-entropy of preprocess(x), the given optimizer
    (and a per-step LR scheduler); `val_accuracy` holds the last validation's top-1."""
    import pytorch_lightning as pl

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.val_accuracy = 0.0

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> Any:
            x, y = batch
            return F.cross_entropy(self.model(preprocess(x)), y)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            x, y = batch
            hits = (self.model(preprocess(x)).argmax(1) == y).float().mean()
            self.val_accuracy = float(hits.item())

        def configure_optimizers(self) -> Any:
            opt = optimizer(self.model)
            if scheduler is None:
                return opt
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": scheduler(opt), "interval": "step"},
            }

    return Classifier()


class StepClock:
    """A callback timing the training epochs only (as the engine counts its images/s)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def callback(self, device: torch.device) -> Any:
        import pytorch_lightning as pl

        clock = self

        class Clock(pl.Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                clock._started = time.perf_counter()

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                _sync(device)
                clock.seconds += time.perf_counter() - clock._started

        return Clock()


def trainer(device: torch.device, epochs: int, precision: str, callbacks: list[Any]) -> Any:
    """A Trainer with everything that is not training off (logger, checkpoints, bars)."""
    import pytorch_lightning as pl

    quiet()
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        benchmark=device.type == "cuda",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
