"""DIGITS's learning-rate policies, in percent of training (pure Python: the API previews them,
the worker's scheduler multiplies the base rate by them)."""

from __future__ import annotations

import math
from typing import Any

POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid", "cosine", "onecycle")
# onecycle starts at lr0 / ONECYCLE_DIV (torch's OneCycleLR div_factor) and ends at the floor
ONECYCLE_DIV = 25.0


def lr_at(p: float, lr0: float, policy: str, params: dict[str, Any]) -> float:
    """The learning rate at p percent of training; inf where the formula overflows."""
    try:
        return _lr_at(p, lr0, policy, params)
    except OverflowError:
        return math.inf


def check(lr0: float, policy: str, params: dict[str, Any]) -> None:
    """Refuse parameters whose curve overflows or leaves the usable range."""
    for p in range(101):
        value = lr_at(float(p), lr0, policy, params)
        if not math.isfinite(value) or value > 1e6:
            raise ValueError(
                f"the {policy} policy with these parameters reaches {value:.3g} at {p}% of "
                "training; choose a gamma or power that keeps the rate finite"
            )


def _lr_at(p: float, lr0: float, policy: str, params: dict[str, Any]) -> float:
    """The learning rate at p percent of training (0..100), by DIGITS's formula for `policy`.

    `params` uses DIGITS's names: step_size (%), gamma, step_values (list of %), power,
    plus warmup_pct (linear warm-up from 0, applied on top of any policy) and min_lr_pct
    (cosine floor, % of lr0).
    """
    base = _policy(p, lr0, policy, params)
    warmup = float(params.get("warmup_pct") or 0.0)
    if warmup > 0 and p < warmup:
        return base * (p / warmup)
    return base


def _policy(p: float, lr0: float, policy: str, params: dict[str, Any]) -> float:
    # math.pow, not **: the bases are positive, and float ** float is typed Any (it may be complex)
    if policy == "fixed":
        return lr0
    if policy == "step":
        step = float(params.get("step_size", 33.0))
        gamma = float(params.get("gamma", 0.1))
        return lr0 * gamma ** math.floor(p / step)
    if policy == "multistep":
        values = [float(v) for v in params.get("step_values", [50.0, 85.0])]
        gamma = float(params.get("gamma", 0.5))
        passed = sum(1 for v in values if p >= v)
        return lr0 * gamma**passed
    if policy == "exp":
        return lr0 * math.pow(float(params.get("gamma", 0.95)), p)
    if policy == "inv":
        gamma = float(params.get("gamma", 0.1))
        power = float(params.get("power", 0.5))
        return lr0 * math.pow(1.0 + gamma * p, -power)
    if policy == "poly":
        power = float(params.get("power", 3.0))
        return lr0 * math.pow(1.0 - p / 100.0, power)
    if policy == "sigmoid":
        step = float(params.get("step_size", 50.0))
        gamma = float(params.get("gamma", 0.1))
        return lr0 / (1.0 + math.exp(gamma * (p - step)))
    if policy == "cosine":
        floor = lr0 * float(params.get("min_lr_pct", 0.0)) / 100.0
        return floor + (lr0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p / 100.0))
    if policy == "onecycle":
        # Smith's one cycle as torch's OneCycleLR: a cosine rise from lr0/25 to lr0 over the
        # first step_size % (default 25), then a cosine fall to the floor (min_lr_pct of lr0)
        peak = float(params.get("step_size", 25.0))
        start = lr0 / ONECYCLE_DIV
        floor = lr0 * float(params.get("min_lr_pct", 0.0)) / 100.0
        if p < peak:
            return start + (lr0 - start) * 0.5 * (1.0 - math.cos(math.pi * p / peak))
        done = (p - peak) / max(1e-9, 100.0 - peak)
        return floor + (lr0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    raise ValueError(f"unknown lr policy {policy!r}; choose one of {', '.join(POLICIES)}")


def multiplier(step: int, total_steps: int, policy: str, params: dict[str, Any]) -> float:
    """The factor on the base rate after `step` of `total_steps` optimizer steps (LambdaLR)."""
    p = 100.0 * step / max(1, total_steps)
    return lr_at(min(p, 100.0), 1.0, policy, params)


def preview(lr0: float, policy: str, params: dict[str, Any]) -> list[float]:
    """The 101-point curve at p = 0, 1, ..., 100 (DIGITS's visualize-lr)."""
    return [lr_at(float(p), lr0, policy, params) for p in range(101)]
