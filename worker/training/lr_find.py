"""The learning-rate range test (Smith 2015; fastai's `lr_find`), in our own training loop.

The learning rate grows exponentially from `start_lr` to `end_lr` over a few hundred steps of
ordinary training; the loss is smoothed (an EMA with beta 0.98, debiased) and the test stops
when it diverges (4x the best smoothed loss, or NaN). The weights it trained are thrown away.
The suggestion is fastai's "valley" by default: the middle of the longest run of decreasing
loss, which is less easily fooled by an early spike than the steepest slope; unlike fastai's,
it looks only past the plateau where the rate is still too low to train (see `_past_plateau`).

`valley`, `steep` and `minimum` are ported from fastai (fastai/callback/schedule.py,
Apache-2.0, copyright fast.ai).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BETA = 0.98
DIVERGE = 4.0


@dataclass
class RangeTest:
    """The curve (each step's rate and smoothed loss) and the rate it suggests."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    method: str
    diverged_at: float | None  # the rate at which the loss diverged, if it did


def _trimmed(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """fastai drops the first 10% and the last 5 points, and everything from the first NaN."""
    n = len(lrs)
    lrs, losses = lrs[n // 10 : max(n // 10 + 1, n - 5)], losses[n // 10 : max(n // 10 + 1, n - 5)]
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return lrs[:i], losses[:i]
    return lrs, losses


PLATEAU = 0.05  # the loss has begun to fall once it is 5 % of its whole fall below the start


def _past_plateau(lrs: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
    """Drop the flat start, where the rate is too low to train.

    Without this, a smoothed loss that drifts down by noise on the plateau (2.302, 2.301,
    ...) makes fastai's longest decreasing run start at the first step, and its middle lands
    decades too low: LeNet on the digits got 0.003 where the loss falls between 0.01 and 0.2.
    """
    if len(losses) < 10:
        return lrs, losses
    head = sorted(losses[: max(3, len(losses) // 10)])
    start = head[len(head) // 2]
    low = min(losses)
    threshold = start - PLATEAU * (start - low)
    first = next((i for i, loss in enumerate(losses) if loss < threshold), 0)
    return lrs[first:], losses[first:]


def valley(lrs: list[float], losses: list[float]) -> float:
    """The rate a third of the way (and a half more) down the longest decreasing run, once
    the loss has begun to fall."""
    lrs, losses = _past_plateau(*_trimmed(lrs, losses))
    n = len(losses)
    if n == 0:
        raise ValueError("the range test recorded no usable loss")
    max_start = max_end = 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def steep(lrs: list[float], losses: list[float]) -> float:
    """The rate where the loss falls fastest (per log-rate)."""
    lrs, losses = _trimmed(lrs, losses)
    if len(losses) < 2:
        raise ValueError("the range test recorded too few losses")
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(len(losses) - 1)
    ]
    return float(lrs[min(range(len(slopes)), key=slopes.__getitem__)])


def minimum(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the rate of the lowest loss."""
    lrs, losses = _trimmed(lrs, losses)
    if not losses:
        raise ValueError("the range test recorded no usable loss")
    return float(lrs[min(range(len(losses)), key=losses.__getitem__)] / 10)


SUGGEST: dict[str, Callable[[list[float], list[float]], float]] = {
    "valley": valley,
    "steep": steep,
    "minimum": minimum,
}


def run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    start_lr: float,
    end_lr: float,
    method: str = "valley",
    step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> RangeTest:
    """Train `steps` steps at exponentially growing rates; restore the weights afterwards.

    `step_fn(images, labels)` returns the loss of a batch (the caller's preprocessing, AMP and
    channels-last); by default a plain cross-entropy of `model`.
    """
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.train()
    ratio = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    diverged: float | None = None
    lr = start_lr

    def default(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    forward = step_fn or default
    try:
        for i in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = next(batches)
            loss = forward(images, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())  # one read-back a step: the test is short
            average = BETA * average + (1 - BETA) * value if math.isfinite(value) else math.nan
            smoothed = average / (1 - BETA ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if not math.isfinite(smoothed) or smoothed > DIVERGE * best:
                diverged = lr
                break
            best = min(best, smoothed)
            lr *= ratio
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    suggestion = SUGGEST[method](lrs, losses)
    return RangeTest(lrs, losses, suggestion, method, diverged)
