"""The training loop: DIGITS's job semantics on PyTorch (build, train_one_epoch, evaluate, fit).

Nothing here knows about HTTP, SQL or Celery: the job runner passes a TrainSpec and a Reporter.
Speed habits: the dataset lives on the device as uint8 when it fits, augmentation is batched on
the device, and the host reads device values back only once per logging interval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared import storage
from shared.lr_policy import multiplier
from shared.networks import CATALOG, TASK_METRICS, NetworkShapeError
from shared.schemas.jobs import Hyperparameters, LRRangeTest, ValMetric
from shared.schemas.work import CheckpointInfo
from worker.training import checkpoint as ckpt
from worker.training import dense as dense_tasks
from worker.training import lr_find
from worker.training.augment import Preprocess
from worker.training.data import Batches, DatasetError, Split, epoch_order, open_splits, read_info
from worker.training.models import build_model, has_conv, load_init_weights

log = logging.getLogger(__name__)

CUSTOM_DEFAULT_BATCH = 64
# oneDNN's channels_last kernels train LeNet about 1.5x and GoogLeNet 1.4x faster on the CPU,
# ResNet-18 the same; LocalResponseNorm (AlexNet) has no channels_last kernel and gets slower.
CPU_CHANNELS_LAST = True
LOG_POINTS_PER_EPOCH = 8
LOWER_IS_BETTER = frozenset({"val.loss"})
VAL_SERIES = get_args(ValMetric)  # the series whose best is kept

Outcome = Literal["done", "stopped", "early_stopped", "pruned"]
# called after each validation with (step, epoch, values); a reason stops the run (a tuning
# study's pruner), None goes on
OnValidation = Callable[[int, float, dict[str, float]], str | None]


class TrainingError(Exception):
    """Training cannot go on; the message is for the person who submitted the job."""


class Diverged(TrainingError):
    """The loss became NaN or infinite (a learning rate too high, for one)."""

    def __init__(self, message: str, step: int, epoch: float) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch


class Reporter(Protocol):
    """Where training sends what it measures; every method must return quickly."""

    def metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        """Record metric values at an optimizer step."""

    def progress(self, epoch: float, step: int, total_steps: int) -> None:
        """Record how far training has come."""

    def checkpoint_saved(self, info: CheckpointInfo) -> None:
        """Record a checkpoint file."""

    def should_stop(self) -> bool:
        """Whether the job was asked to stop (a cheap flag read)."""

    def log(self, message: str) -> None:
        """A line for the job's log, for people."""


@dataclass
class TrainSpec:
    """What to train, on what, with which options, and where to write."""

    dataset_dir: Path
    network: dict[str, Any]
    hyper: Hyperparameters
    out_dir: Path
    device: str | None = None
    init_checkpoint: Path | None = None
    resume_checkpoint: Path | None = None
    # DistributedDataParallel: this process's rank among world_size (the process group is
    # initialised by the caller); each rank takes 1/world_size of every batch, rank 0 writes
    rank: int = 0
    world_size: int = 1
    on_validation: OnValidation | None = None


@dataclass
class TrainResult:
    """How a training run ended."""

    outcome: Outcome
    steps: int
    epoch: float
    best: dict[str, float]
    last: dict[str, float]
    seconds: float  # the whole call, set-up included
    images_per_second: float  # training steps only: validation and checkpoint writes excluded
    reason: str | None = None  # why it stopped early (pruned)


# ----------------------------------------------------------------------------- building blocks


def pick_device(name: str | None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("a CUDA device was requested but none is available")
    return device


def make_optimizer(
    model: nn.Module, hyper: Hyperparameters, device: torch.device
) -> torch.optim.Optimizer:
    """The solver of the request; weight decay on every parameter, as Caffe's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(hyper.learning_rate, str):
        raise TrainingError("learning_rate auto must be resolved by the range test first")
    lr, wd = hyper.learning_rate, hyper.effective_weight_decay()
    # fused: one kernel per step, and no host sync under a GradScaler
    fused: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    solver = hyper.solver
    if solver in ("sgd", "nesterov"):
        if solver == "nesterov" and hyper.momentum <= 0:
            raise TrainingError("the nesterov solver needs a momentum above 0")
        nesterov = solver == "nesterov"
        return torch.optim.SGD(
            params, lr=lr, momentum=hyper.momentum, weight_decay=wd, nesterov=nesterov, **fused
        )
    if solver == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if solver == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=hyper.rms_decay, weight_decay=wd)
    if solver == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=wd)
    if solver == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    if solver == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    raise TrainingError(f"unknown solver {solver!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, hyper: Hyperparameters
) -> torch.optim.lr_scheduler.LambdaLR:
    """DIGITS's learning-rate policy as a factor on the base rate, stepped per optimizer step."""
    policy = hyper.lr_policy
    params = hyper.lr_params.model_dump(exclude_none=True)

    def factor(step: int) -> float:
        return multiplier(step, total_steps, policy, params)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to train in channels_last: conv nets on CUDA, and on the CPU where it is faster."""
    if not has_conv(model):
        return False
    if device.type == "cuda":
        return True
    lrn = any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    return CPU_CHANNELS_LAST and not lrn


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    split: Split,
    preprocess: Preprocess,
    batch_size: int,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-k (k = min(5, classes)) accuracy over a split; one read-back."""
    was_training = model.training
    model.eval()
    device = split.labels.device
    k = min(5, num_classes)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in split.batches(None, batch_size):
        x = preprocess.eval(images)
        with _autocast(device, amp_dtype):
            out = model(x)
        out = out.float()
        hits = out.topk(k, 1).indices.eq(labels[:, None])
        totals += torch.stack(
            [F.cross_entropy(out, labels, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum()]
        ).to(torch.float64)
    loss, top1, topk = (totals / max(1, len(split))).tolist()
    model.train(was_training)
    return {"val.loss": loss, "val.accuracy": top1, "val.top5": topk}


@dataclass
class _Tracker:
    """Latest and best values of each series, the best-checkpoint metric and early stopping."""

    best_metric: str
    early: Any  # EarlyStopping | None
    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_value: float | None = None
    es_value: float | None = None
    es_bad: int = 0

    @staticmethod
    def _better(metric: str, value: float, than: float | None, delta: float = 0.0) -> bool:
        if than is None:
            return math.isfinite(value)
        if metric in LOWER_IS_BETTER:
            return value < than - delta
        return value > than + delta

    def train(self, values: dict[str, float]) -> None:
        """Record training series."""
        self.last.update(values)

    def validation(self, values: dict[str, float]) -> tuple[bool, bool]:
        """Record a validation; return (new best, early stop now)."""
        self.last.update(values)
        for name in VAL_SERIES:
            if name in values and self._better(name, values[name], self.best.get(name)):
                self.best[name] = values[name]
        value = values[self.best_metric]
        is_best = self._better(self.best_metric, value, self.best_value)
        if is_best:
            self.best_value = value
        stop = False
        if self.early is not None:
            metric = self.early.metric
            if self._better(metric, values[metric], self.es_value, self.early.min_delta):
                self.es_value, self.es_bad = values[metric], 0
            else:
                self.es_bad += 1
                stop = self.es_bad >= self.early.patience
        return is_best, stop

    def state(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return {
            "last": dict(self.last),
            "best": dict(self.best),
            "best_value": self.best_value,
            "es_value": self.es_value,
            "es_bad": self.es_bad,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint."""
        self.last = dict(state.get("last", {}))
        self.best = dict(state.get("best", {}))
        self.best_value = state.get("best_value")
        self.es_value = state.get("es_value")
        self.es_bad = int(state.get("es_bad", 0))


@dataclass
class _Run:
    """Everything one training run holds."""

    spec: TrainSpec
    reporter: Reporter
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_split: Split
    val_split: Split | None
    preprocess: Preprocess
    aug_gen: torch.Generator
    classes: list[str]
    image_shape: tuple[int, int, int]
    seed: int
    batch_size: int
    accumulation: int
    train_iter: int
    total: int
    log_interval: int
    val_every: int
    snap_every: int
    tracker: _Tracker
    step: int = 0
    loss_buf: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    log_count: int = 0
    log_t0: float = 0.0
    log_images: int = 0
    lr_used: float = 0.0
    images: int = 0
    side_seconds: float = 0.0  # validation and checkpoint writing, excluded from images/s
    net: nn.Module | None = None  # what steps call: the model, or its DDP wrapper
    stop_reason: str | None = None
    lr_find: dict[str, Any] | None = None  # the range test's suggestion (kept in checkpoints)
    task: str = "classification"
    dense: dense_tasks.DenseTask | None = None  # detection and segmentation's targets, metrics

    @property
    def distributed(self) -> bool:
        """Whether this run is one rank of several."""
        return self.spec.world_size > 1

    @property
    def epoch(self) -> float:
        """Epochs done, fractional."""
        return self.step / self.train_iter

    @property
    def hyper(self) -> Hyperparameters:
        """The run's hyperparameters."""
        return self.spec.hyper

    def sync(self) -> None:
        """Wait for queued device work (timing boundaries only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------- set-up


def _batch_size(network: dict[str, Any], hyper: Hyperparameters) -> int:
    if hyper.batch_size is not None:
        return int(hyper.batch_size)
    if network.get("kind", "standard") == "standard" and network.get("name") in CATALOG:
        return CATALOG[str(network["name"])].default_batch_size
    return CUSTOM_DEFAULT_BATCH


def _network_name(network: dict[str, Any]) -> str:
    if network.get("kind", "standard") != "standard":
        raise TrainingError("detection and segmentation jobs train a standard network")
    return str(network.get("name"))


def _dense_options(hp: Hyperparameters, task: str, reporter: Reporter) -> Hyperparameters:
    """A detection or segmentation run's options: its own metrics where classification's were
    asked for, and no classification-only augmentation (the API refuses those; older
    requests are told here)."""
    allowed = TASK_METRICS[task]
    update: dict[str, Any] = {}
    if hp.best_metric not in allowed:
        update["best_metric"] = allowed[0]
    if hp.early_stopping is not None and hp.early_stopping.metric not in allowed:
        update["early_stopping"] = hp.early_stopping.model_copy(update={"metric": allowed[0]})
    if hp.crop_size is not None:
        raise TrainingError(f"crop_size is classification's; {task} crops with aug_scale")
    ignored = [
        name
        for name, off in (("aug_rot", 0.0), ("aug_quad_rot", "none"), ("aug_hsv_use", False))
        if getattr(hp, name) != off
    ]
    if ignored:
        reporter.log(f"{', '.join(ignored)} apply to classification only; not used")
    return hp.model_copy(update=update) if update else hp


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _interval(epochs: float, train_iter: int) -> int:
    """An interval in (fractional) epochs as optimizer steps; 0 = only at the end."""
    return max(1, int(epochs * train_iter)) if epochs > 0 else 0


def _setup(spec: TrainSpec, reporter: Reporter) -> _Run:
    hp = spec.hyper
    device = pick_device(spec.device)
    seed = 0 if hp.seed is None else int(hp.seed)
    info = read_info(spec.dataset_dir)
    height, width, channels = info.height, info.width, info.channels
    num_classes = len(info.classes)
    task = info.task
    if task != "classification":
        hp = _dense_options(hp, task, reporter)
        spec = dataclasses.replace(spec, hyper=hp)
    if hp.crop_size is not None and hp.crop_size > min(height, width):
        raise TrainingError(f"crop size {hp.crop_size} is larger than the {width}x{height} images")
    in_h, in_w = (hp.crop_size, hp.crop_size) if hp.crop_size else (height, width)
    if task == "classification" and hp.aug_quad_rot != "none" and in_h != in_w:
        raise TrainingError("quarter rotations need square images or a square crop_size")
    if hp.aug_hsv_use and channels != 3:
        reporter.log("HSV augmentation needs RGB images; ignored for this grayscale dataset")

    _seed_all(seed)
    try:
        if task == "classification":
            model = build_model(spec.network, num_classes, channels, in_h, in_w)
        else:
            model = dense_tasks.build(_network_name(spec.network), task, num_classes, in_h, in_w)
    except NetworkShapeError as exc:
        raise TrainingError(f"the network does not fit the dataset: {exc}") from exc
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    if spec.init_checkpoint is not None:
        try:
            init = ckpt.load(spec.init_checkpoint)
            state = ckpt.model_state(init)
        except (OSError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot read the checkpoint to start from: {exc}") from exc
        if task != "classification" and init.get("task", "classification") == "classification":
            loaded, skipped = dense_tasks.load_backbone(model, state)
            if not loaded:
                raise TrainingError(
                    "the classification checkpoint has no tensor that fits the backbone"
                )
            message = (
                f"backbone initialised from {Path(spec.init_checkpoint).name}: {loaded} "
                f"tensors loaded, {len(skipped)} of the classifier's left out"
                + (
                    f" ({', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''})"
                    if skipped
                    else ""
                )
            )
        else:
            skipped = load_init_weights(model, state)
            message = f"initialised from {Path(spec.init_checkpoint).name}; " + (
                f"{len(skipped)} tensors re-initialised: {', '.join(skipped)}"
                if skipped
                else "all tensors loaded"
            )
        reporter.log(message)
        log.info("job=%s %s", spec.out_dir.name, message)

    cuda = device.type == "cuda"
    # detectors take lists of images, and torchvision's heads gain nothing from channels_last
    channels_last = task == "classification" and use_channels_last(model, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype: torch.dtype | None = None
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if hp.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if task == "detection":
                # torchvision decodes boxes in the regression's dtype: bf16 would step them by
                # 1-4 px at 128-512 px; fp16 (with the GradScaler) by an eighth to half of one
                amp_dtype = torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    train_split, val_split = open_splits(spec.dataset_dir, info, device, channels_last)
    mean: torch.Tensor | None = None
    if hp.use_mean != "none":
        if info.mean is None:
            reporter.log("the dataset has no mean image; no mean is subtracted")
        else:
            mean = torch.from_numpy(info.mean).permute(2, 0, 1).contiguous().to(device)
            if hp.use_mean == "pixel":
                mean = mean.mean(dim=(1, 2), keepdim=True)
    preprocess = Preprocess(hp, mean, channels, height, width, channels_last)
    dense = None
    if task != "classification":
        dense = dense_tasks.DenseTask(
            task,
            info.classes,
            hp,
            train_split.reader,
            val_split.reader if val_split is not None else None,
            device,
            height,
            width,
        )

    batch_size = _batch_size(spec.network, hp)
    accumulation = hp.batch_accumulation
    train_iter = math.ceil(len(train_split) / (batch_size * accumulation))
    total = train_iter * hp.epochs
    hp, found_lr = _range_test(
        spec, reporter, model, train_split, preprocess, batch_size, amp_dtype, dense
    )
    spec = dataclasses.replace(spec, hyper=hp)
    optimizer = make_optimizer(model, hp, device)
    scheduler = make_scheduler(optimizer, total, hp)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    log_interval = hp.log_interval or max(1, round(train_iter / LOG_POINTS_PER_EPOCH))
    early = hp.early_stopping
    if early is not None and val_split is None:
        reporter.log("early stopping needs a validation split; the dataset has none")
        early = None
    run = _Run(
        spec=spec,
        reporter=reporter,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp_dtype=amp_dtype,
        train_split=train_split,
        val_split=val_split,
        preprocess=preprocess,
        aug_gen=aug_gen,
        classes=info.classes,
        image_shape=(height, width, channels),
        seed=seed,
        batch_size=batch_size,
        accumulation=accumulation,
        train_iter=train_iter,
        total=total,
        log_interval=log_interval,
        val_every=_interval(hp.val_interval, train_iter),
        snap_every=_interval(hp.snapshot_interval, train_iter),
        tracker=_Tracker(hp.best_metric, early),
        loss_buf=torch.zeros(log_interval, dtype=torch.float32, device=device),
        lr_find=found_lr,
        task=task,
        dense=dense,
    )
    run.net = model
    if spec.world_size > 1:
        if batch_size % spec.world_size:
            raise TrainingError(
                f"batch size {batch_size} must divide evenly over {spec.world_size} devices"
            )
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if spec.resume_checkpoint is not None:
        _resume(run, spec.resume_checkpoint)
    return run


def _range_test(
    spec: TrainSpec,
    reporter: Reporter,
    model: nn.Module,
    split: Split,
    preprocess: Preprocess,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    dense: dense_tasks.DenseTask | None = None,
) -> tuple[Hyperparameters, dict[str, Any] | None]:
    """Run the LR range test when asked (or for learning_rate auto): its curve and suggestion
    become metrics, and auto trains at the suggestion. A resumed run keeps the first one."""
    hp = spec.hyper
    wanted = hp.lr_range_test or (LRRangeTest() if hp.learning_rate == "auto" else None)
    if wanted is None:
        return hp, None
    if spec.resume_checkpoint is not None:
        with contextlib.suppress(OSError, RuntimeError, ValueError, KeyError):
            found = ckpt.load(spec.resume_checkpoint).get("lr_find")
            if found:
                return hp.model_copy(update={"learning_rate": found["learning_rate"]}), found
    device = split.labels.device
    seed = 0 if hp.seed is None else int(hp.seed)
    # the rate is what is being found, and DIGITS's weight decay follows it: none meanwhile
    probe = hp.model_copy(update={"learning_rate": wanted.start_lr, "weight_decay": 0.0})
    optimizer = make_optimizer(model, probe, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 2)

    def batches() -> Any:
        steps = math.ceil(len(split) / batch_size)
        for epoch in itertools.count(10_000):  # orders of their own; training's are untouched
            order = epoch_order(len(split), steps * batch_size, seed, epoch, True)
            with contextlib.closing(split.batches(order, batch_size)) as it:
                yield from it

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with _autocast(device, amp_dtype):
            if dense is not None:
                return dense.loss(model, images, labels, gen).float()
            return F.cross_entropy(model(preprocess.train(images, gen)), labels).float()

    t0 = time.perf_counter()
    source = batches()
    try:
        test = lr_find.run(
            model,
            optimizer,
            source,
            steps=wanted.steps,
            start_lr=wanted.start_lr,
            end_lr=wanted.end_lr,
            method=wanted.suggestion,
            step_fn=step,
        )
    except ValueError as exc:
        raise TrainingError(f"the LR range test found no usable rate: {exc}") from exc
    finally:
        source.close()
    suggestion = min(10.0, max(1e-8, test.suggestion))
    if spec.world_size > 1:  # every rank trains at rank 0's suggestion
        import torch.distributed as dist

        shared = torch.tensor([suggestion], dtype=torch.float64, device=device)
        dist.broadcast(shared, src=0)
        suggestion = float(shared.item())
    for i, (rate, loss) in enumerate(zip(test.lrs, test.losses, strict=True)):
        reporter.metrics(i, 0.0, {"lr_find.lr": rate, "lr_find.loss": loss})
    reporter.metrics(0, 0.0, {"lr_find.suggestion": suggestion})
    lr = suggestion if hp.learning_rate == "auto" else float(hp.learning_rate)
    reporter.log(
        f"LR range test: {len(test.lrs)} steps from {wanted.start_lr:g} in "
        f"{time.perf_counter() - t0:.1f} s"
        + (f", diverged at {test.diverged_at:.3g}" if test.diverged_at else "")
        + f"; {wanted.suggestion} suggests {suggestion:.3g}; training at {lr:.3g}"
    )
    found = {"suggestion": suggestion, "learning_rate": lr, "method": wanted.suggestion}
    return hp.model_copy(update={"learning_rate": lr}), found


def _resume(run: _Run, path: Path) -> None:
    try:
        data = ckpt.load(path)
        run.model.load_state_dict(data["model"])
        run.optimizer.load_state_dict(data["optimizer"])
        run.scheduler.load_state_dict(data["scheduler"])
        if data.get("scaler"):
            run.scaler.load_state_dict(data["scaler"])
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(f"cannot resume from {Path(path).name}: {exc}") from exc
    if int(data.get("total_steps", run.total)) != run.total:
        run.reporter.log(
            f"the checkpoint was made for {data.get('total_steps')} steps, this run has "
            f"{run.total}; the dataset or the options changed"
        )
    ckpt.set_rng_state(data["rng"], run.aug_gen)
    run.step = int(data["step"])
    run.tracker.load(data.get("tracker", {}))
    state = data.get("log_state") or {}
    losses = state.get("losses")
    if isinstance(losses, torch.Tensor) and losses.numel() == run.log_interval:
        run.loss_buf.copy_(losses.to(run.device))
        run.log_count = int(state.get("count", 0))
        run.log_images = int(state.get("images", 0))
    run.reporter.log(f"resumed at step {run.step} (epoch {run.epoch:.2f})")
    log.info("job=%s resumed from %s at step %d", run.spec.out_dir.name, path.name, run.step)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_dict(run: _Run) -> dict[str, Any]:
    mean = run.preprocess.mean
    return {
        "format": ckpt.FORMAT,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": ckpt.rng_state(run.aug_gen),
        "step": run.step,
        "epoch": run.epoch,
        "total_steps": run.total,
        "metrics": dict(run.tracker.last),
        "tracker": run.tracker.state(),
        "log_state": {
            "losses": run.loss_buf.detach().cpu(),
            "count": run.log_count,
            "images": run.log_images,
        },
        "network": run.spec.network,
        "task": run.task,
        "classes": list(run.classes),
        "image_shape": list(run.image_shape),
        "input_shape": [run.image_shape[2], *run.preprocess.out_size],
        "preprocess": {
            "use_mean": run.hyper.use_mean,
            "crop_size": run.preprocess.crop,
            "mean": None if mean is None else mean.detach().cpu(),
        },
        "hyper": run.hyper.model_dump(mode="json"),
        "lr_find": run.lr_find,
    }


def _save(run: _Run, names: list[str], is_best: bool) -> None:
    """Serialise the state once and write it under each name (rank 0 only)."""
    if run.spec.rank != 0:
        return
    t0 = time.perf_counter()
    run.sync()
    data = ckpt.serialize(_checkpoint_dict(run))
    folder = Path(run.spec.out_dir) / "checkpoints"
    for name in names:
        path = folder / f"{name}.pt"
        storage.atomic_write(path, data)
        run.reporter.checkpoint_saved(
            CheckpointInfo(name, path, run.epoch, run.step, dict(run.tracker.last), is_best)
        )
    run.side_seconds += time.perf_counter() - t0


# ----------------------------------------------------------------------------- the loop


def _report_train(run: _Run) -> None:
    """Read the interval's losses back (one sync) and report them."""
    k = run.log_count
    if k == 0:
        return
    if run.distributed:
        import torch.distributed as dist

        dist.all_reduce(run.loss_buf)
        run.loss_buf.div_(run.spec.world_size)
    losses = run.loss_buf[:k].tolist()
    for j, value in enumerate(losses):
        if not math.isfinite(value):
            step = run.step - k + j + 1
            raise Diverged(
                f"loss became NaN at step {step}; lower the learning rate",
                step,
                step / run.train_iter,
            )
    elapsed = time.perf_counter() - run.log_t0
    values = {
        "train.loss": sum(losses) / k,
        "train.lr": run.lr_used,
        "train.images_per_second": run.log_images / elapsed if elapsed > 0 else 0.0,
    }
    run.tracker.train(values)
    run.reporter.metrics(run.step, run.epoch, values)
    run.reporter.progress(run.epoch, run.step, run.total)
    run.loss_buf.zero_()
    run.log_count = 0
    run.log_images = 0
    run.log_t0 = time.perf_counter()


def _validate(run: _Run) -> tuple[bool, bool]:
    assert run.val_split is not None
    t0 = time.perf_counter()
    run.sync()
    if run.dense is not None:
        values = run.dense.evaluate(
            run.model,
            run.val_split,
            run.batch_size * 2,
            run.amp_dtype,
            lambda: _autocast(run.device, run.amp_dtype),
        )
    else:
        values = evaluate(
            run.model,
            run.val_split,
            run.preprocess,
            run.batch_size * 2,
            len(run.classes),
            run.amp_dtype,
        )
    is_best, stop = run.tracker.validation(values)
    run.reporter.metrics(run.step, run.epoch, {**values, "epoch": run.epoch})
    run.reporter.progress(run.epoch, run.step, run.total)
    log.info(
        "job=%s step %d epoch %.2f %s",
        run.spec.out_dir.name,
        run.step,
        run.epoch,
        " ".join(f"{k} {values[k]:.4f}" for k in TASK_METRICS[run.task] if k in values),
    )
    reason = None
    if run.spec.on_validation is not None and run.spec.rank == 0:
        reason = run.spec.on_validation(run.step, run.epoch, values)
    # every rank stops where rank 0's pruner said so (one collective per validation)
    if run.distributed and _any_rank(run, reason is not None) and reason is None:
        reason = "stopped with rank 0"
    run.stop_reason = reason
    elapsed = time.perf_counter() - t0
    run.side_seconds += elapsed
    run.log_t0 += elapsed  # validation time is not training throughput
    return is_best, stop


def _any_rank(run: _Run, flag: bool) -> bool:
    """Whether any rank raised the flag."""
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=run.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _after_step(run: _Run) -> Outcome | None:
    """Logging, validation and snapshots due at the step just taken."""
    step = run.step
    end = step == run.total
    if step % run.log_interval == 0 or end:
        _report_train(run)
    is_best = stop = False
    if run.val_split is not None and ((run.val_every and step % run.val_every == 0) or end):
        is_best, stop = _validate(run)
    pruned = run.stop_reason is not None
    names: list[str] = []
    if (run.snap_every and step % run.snap_every == 0) or end or stop or pruned:
        names += [ckpt.epoch_name(run.epoch), "last"]
    if is_best:
        names.append("best")
    if names:
        t0 = time.perf_counter()
        _save(run, names, is_best)
        run.log_t0 += time.perf_counter() - t0
    if pruned:
        run.reporter.log(f"stopped at epoch {run.epoch:.2f}: {run.stop_reason}")
        return "pruned"
    if stop:
        run.reporter.log(
            f"early stopping at epoch {run.epoch:.2f}: no improvement of "
            f"{run.tracker.early.metric} for {run.tracker.early.patience} validations"
        )
        return "early_stopped"
    return None


def _micro_batches(run: _Run, epoch: int, first_step: int) -> Batches:
    step_images = run.batch_size * run.accumulation
    order = epoch_order(
        len(run.train_split), run.train_iter * step_images, run.seed, epoch, run.hyper.shuffle
    )[first_step * step_images :]
    if run.distributed:  # every rank takes its slice of each batch of the same order
        world, rank = run.spec.world_size, run.spec.rank
        order = order.reshape(-1, run.batch_size)[:, rank::world].reshape(-1)
        return run.train_split.batches(order, run.batch_size // world)
    return run.train_split.batches(order, run.batch_size)


def _should_stop(run: _Run) -> bool:
    """The stop flag; ranks agree on it (rank 0's reporter decides) so none waits alone."""
    stop = run.reporter.should_stop()
    if not run.distributed:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if stop else 0.0], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train_one_epoch(run: _Run, epoch: int) -> Outcome | None:
    """Optimizer steps of one epoch from where the run stands; an outcome if it ends early."""
    model, optimizer, scheduler, scaler = run.model, run.optimizer, run.scheduler, run.scaler
    net = run.net or model
    reporter, preprocess, gen = run.reporter, run.preprocess, run.aug_gen
    first = run.step - epoch * run.train_iter
    accumulation = run.accumulation
    weight = 1.0 / accumulation
    use_scaler = scaler.is_enabled()
    step_images = run.batch_size * accumulation
    dense = run.dense
    model.train()
    batches = _micro_batches(run, epoch, first)
    try:
        for _ in range(first, run.train_iter):
            if _should_stop(run):
                _save(run, ["last"], False)
                reporter.log(f"stopped at step {run.step} (epoch {run.epoch:.2f})")
                return "stopped"
            slot = run.loss_buf[run.log_count]
            for _ in range(accumulation):
                images, labels = next(batches)
                if dense is not None:  # labels are image indices: the boxes or masks' keys
                    with _autocast(run.device, run.amp_dtype):
                        loss = dense.loss(net, images, labels, gen)
                else:
                    x = preprocess.train(images, gen)
                    with _autocast(run.device, run.amp_dtype):
                        loss = F.cross_entropy(net(x), labels)
                slot.add_(loss.detach(), alpha=weight)
                if accumulation > 1:
                    loss = loss * weight
                if use_scaler:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            if dense is not None:
                if use_scaler:
                    scaler.unscale_(optimizer)
                dense_tasks.clip_gradients(model)
            if use_scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()
            run.step += 1
            run.log_count += 1
            run.log_images += step_images
            run.images += step_images
            outcome = _after_step(run)
            if outcome is not None:
                return outcome
    finally:
        batches.close()
    return None


def fit(run: _Run, started: float) -> TrainResult:
    """Train for the remaining steps; validate and snapshot at the intervals and at the end."""
    hp = run.hyper
    run.reporter.log(
        f"training on {run.device}: {len(run.train_split)} train / "
        f"{len(run.val_split) if run.val_split else 0} val images, batch {run.batch_size}"
        f"{f' x {run.accumulation}' if run.accumulation > 1 else ''}, {run.train_iter} steps "
        f"per epoch, {run.total} steps"
    )
    outcome: Outcome = "done"
    run.sync()
    loop_t0 = time.perf_counter()
    run.log_t0 = loop_t0
    run.side_seconds = 0.0
    for epoch in range(run.step // run.train_iter, hp.epochs):
        result = train_one_epoch(run, epoch)
        if result is not None:
            outcome = result
            break
    run.sync()
    loop_seconds = time.perf_counter() - loop_t0 - run.side_seconds
    seconds = time.perf_counter() - started
    ips = run.images / loop_seconds if loop_seconds > 0 else 0.0
    log.info(
        "job=%s %s after %d steps in %.1f s (%.0f images/s)",
        run.spec.out_dir.name,
        outcome,
        run.step,
        seconds,
        ips,
    )
    return TrainResult(
        outcome=outcome,
        steps=run.step,
        epoch=run.epoch,
        best=dict(run.tracker.best),
        last=dict(run.tracker.last),
        seconds=seconds,
        images_per_second=ips,
        reason=run.stop_reason if outcome == "pruned" else None,
    )


def _is_cpu_oom(exc: RuntimeError) -> bool:
    return "can't allocate memory" in str(exc) or "not enough memory" in str(exc)


def train(spec: TrainSpec, reporter: Reporter) -> TrainResult:
    """Run one training job; raises TrainingError with a message a person can act on."""
    started = time.perf_counter()
    run: _Run | None = None
    oom = TrainingError(
        "out of memory: use a smaller batch size, or keep it and raise batch_accumulation"
    )
    try:
        run = _setup(spec, reporter)
        return fit(run, started)
    except DatasetError as exc:
        raise TrainingError(f"the dataset cannot be used: {exc}") from exc
    except torch.OutOfMemoryError as exc:
        raise oom from exc
    except RuntimeError as exc:
        if _is_cpu_oom(exc):
            raise oom from exc
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TrainingError(
                f"no space left on the disk while writing a checkpoint at step "
                f"{run.step if run else 0}; the previous checkpoint is intact: free space, "
                "then clone the job or resume from it"
            ) from exc
        raise
    finally:
        if run is not None:
            run.train_split.close()
            if run.val_split is not None:
                run.val_split.close()
