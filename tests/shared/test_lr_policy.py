"""DIGITS's learning-rate policies: each equals its formula, written out here independently."""

from __future__ import annotations

import itertools
import math

import pytest

from shared.lr_policy import POLICIES, lr_at, multiplier, preview

LR0 = 0.01
PERCENTS = (0.0, 25.0, 50.0, 75.0, 100.0)

# DIGITS's formulas with its default parameters, p = 100 * iteration / max_iter.
EXPECTED = {
    "fixed": lambda p: LR0,
    "step": lambda p: LR0 * 0.1 ** math.floor(p / 33.0),
    "multistep": lambda p: LR0 * 0.5 ** ((p >= 50.0) + (p >= 85.0)),
    "exp": lambda p: LR0 * 0.95**p,
    "inv": lambda p: LR0 * (1.0 + 0.1 * p) ** -0.5,
    "poly": lambda p: LR0 * (1.0 - p / 100.0) ** 3.0,
    "sigmoid": lambda p: LR0 / (1.0 + math.exp(0.1 * (p - 50.0))),
}

# Hand-computed spot values, so a wrong formula in both places would still be caught.
SPOT = {
    ("step", 50.0): 0.001,
    ("step", 100.0): 1e-5,
    ("multistep", 75.0): 0.005,
    ("multistep", 100.0): 0.0025,
    ("poly", 50.0): 0.00125,
    ("sigmoid", 50.0): 0.005,
    ("inv", 30.0): 0.005,
}


@pytest.mark.parametrize("policy", sorted(EXPECTED))
@pytest.mark.parametrize("p", PERCENTS)
def test_policy_matches_digits_formula(policy: str, p: float) -> None:
    assert lr_at(p, LR0, policy, {}) == pytest.approx(EXPECTED[policy](p), abs=1e-9, rel=1e-9)


@pytest.mark.parametrize(("case", "value"), sorted(SPOT.items()))
def test_policy_spot_values(case: tuple[str, float], value: float) -> None:
    policy, p = case
    assert lr_at(p, LR0, policy, {}) == pytest.approx(value, abs=1e-12)


def test_step_parameters_are_used() -> None:
    params = {"step_size": 10.0, "gamma": 0.5}
    assert lr_at(35.0, 1.0, "step", params) == pytest.approx(0.5**3)


def test_multistep_parameters_are_used() -> None:
    params = {"step_values": [20.0, 40.0, 60.0], "gamma": 0.1}
    assert lr_at(19.9, 1.0, "multistep", params) == pytest.approx(1.0)
    assert lr_at(40.0, 1.0, "multistep", params) == pytest.approx(0.01)
    assert lr_at(99.0, 1.0, "multistep", params) == pytest.approx(0.001)


def test_cosine_goes_from_base_to_floor() -> None:
    params = {"min_lr_pct": 10.0}
    assert lr_at(0.0, 1.0, "cosine", params) == pytest.approx(1.0)
    assert lr_at(50.0, 1.0, "cosine", params) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100.0, 1.0, "cosine", params) == pytest.approx(0.1)
    assert lr_at(100.0, 1.0, "cosine", {}) == pytest.approx(0.0, abs=1e-12)


def test_warmup_ramps_linearly_then_follows_the_policy() -> None:
    params = {"warmup_pct": 10.0}
    assert lr_at(0.0, 1.0, "fixed", params) == 0.0
    assert lr_at(5.0, 1.0, "fixed", params) == pytest.approx(0.5)
    assert lr_at(10.0, 1.0, "fixed", params) == pytest.approx(1.0)
    cosine = lr_at(5.0, 1.0, "cosine", params)
    assert cosine == pytest.approx(0.5 * 0.5 * (1.0 + math.cos(math.pi * 0.05)))


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_multiplier_at_steps_matching_the_percentages(policy: str) -> None:
    total = 400
    for p in PERCENTS:
        step = int(total * p / 100.0)
        assert multiplier(step, total, policy, {}) * LR0 == pytest.approx(
            EXPECTED[policy](p), abs=1e-9, rel=1e-9
        )


def test_multiplier_clamps_past_the_end() -> None:
    assert multiplier(500, 400, "poly", {}) == pytest.approx(0.0)


def test_preview_has_101_points() -> None:
    values = preview(LR0, "exp", {})
    assert len(values) == 101
    assert values[0] == pytest.approx(LR0)
    assert values[100] == pytest.approx(LR0 * 0.95**100)


def test_unknown_policy_is_refused() -> None:
    assert "cosine" in POLICIES
    with pytest.raises(ValueError, match="unknown lr policy"):
        lr_at(0.0, 1.0, "triangular", {})


def test_onecycle_rises_to_the_rate_then_anneals() -> None:
    """Smith's one cycle: lr/25 at the start, the rate at step_size % (25), the floor at 100."""
    curve = preview(0.1, "onecycle", {})
    peak = max(range(101), key=curve.__getitem__)
    print(f"onecycle: start {curve[0]:.4f} peak {curve[peak]:.4f} at {peak}% end {curve[100]:.5f}")
    assert curve[0] == pytest.approx(0.1 / 25)
    assert peak == 25
    assert curve[25] == pytest.approx(0.1)
    assert curve[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in itertools.pairwise(curve[:26]))
    assert all(a >= b for a, b in itertools.pairwise(curve[25:]))
    floored = preview(0.1, "onecycle", {"step_size": 40, "min_lr_pct": 10})
    assert max(range(101), key=floored.__getitem__) == 40
    assert floored[100] == pytest.approx(0.01)
