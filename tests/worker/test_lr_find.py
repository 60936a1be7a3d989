"""The LR range test in the engine, its suggestion rules, and the engine's validation hook
(what a tuning study's pruner stops a trial through), on the real digits on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from shared.schemas.jobs import LRRangeTest
from tests.worker.test_training import hyper, import_digits, run
from worker.training import checkpoint as ckpt
from worker.training import lr_find


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_digits(tmp_path_factory.mktemp("digits-lr"), range(10))


def test_valley_picks_the_middle_of_the_longest_descent() -> None:
    lrs = [10 ** (-6 + i * 0.1) for i in range(70)]  # 1e-6 .. ~8
    # flat, a long descent from 1e-4 to 1e-1, then a blow-up
    losses = [2.3] * 20 + [2.3 - 0.05 * i for i in range(30)] + [0.8 * 1.5**i for i in range(20)]
    valley = lr_find.valley(lrs, losses)
    steep = lr_find.steep(lrs, losses)
    minimum = lr_find.minimum(lrs, losses)
    print(f"LRFIND valley={valley:.3g} steep={steep:.3g} minimum={minimum:.3g}")
    assert 1e-4 < valley < 1e-1
    assert 1e-4 < steep < 1e-1
    assert minimum == pytest.approx(lrs[50] / 10)  # the lowest loss, 0.8, is the 51st


def test_valley_looks_past_the_plateau() -> None:
    """A flat start whose smoothed loss drifts down by noise does not pull the valley down."""
    lrs = [10 ** (-7 + i * 0.04) for i in range(200)]  # 1e-7 .. ~1e1
    flat = [2.302 - 1e-5 * i for i in range(120)]  # drifts down, never trains
    fall = [2.3 - 0.6 * (i / 40) for i in range(40)]  # falls from 1.6e-2 to 0.06
    rise = [1.7 * 1.1**i for i in range(40)]
    valley = lr_find.valley(lrs, flat + fall + rise)
    print(f"LRFIND plateau valley={valley:.3g}")
    assert lrs[120] < valley < lrs[160]


def test_valley_ignores_what_follows_a_nan() -> None:
    lrs = [10 ** (-5 + i * 0.1) for i in range(40)]
    losses = [2.0 - 0.04 * i for i in range(30)] + [math.nan] * 10
    assert lr_find.valley(lrs, losses) < lrs[30]


def test_the_range_test_records_its_curve_and_leaves_the_weights_alone(
    digits: Path, tmp_path: Path
) -> None:
    test = LRRangeTest(steps=120)
    auto, rec = run(
        digits, tmp_path / "auto", hyper(epochs=1, learning_rate="auto", lr_range_test=test)
    )
    curve = [v for _, _, v in rec.points if "lr_find.lr" in v]
    suggestion = [v["lr_find.suggestion"] for _, _, v in rec.points if "lr_find.suggestion" in v]
    rates = [v["lr_find.lr"] for v in curve]
    train_lr = [v["train.lr"] for _, _, v in rec.points if "train.lr" in v]
    data = ckpt.load(tmp_path / "auto" / "checkpoints" / "last.pt")
    print(
        f"LRFIND steps={len(curve)} from={rates[0]:.2g} to={rates[-1]:.3g} "
        f"suggestion={suggestion[0]:.4g} val.accuracy={auto.best['val.accuracy']:.3f}"
    )
    assert auto.outcome == "done"
    assert 20 < len(curve) <= 120
    assert rates == sorted(rates)
    assert rates[0] == pytest.approx(1e-7)
    assert len(suggestion) == 1
    assert train_lr[0] == pytest.approx(suggestion[0])
    assert data["lr_find"]["learning_rate"] == pytest.approx(suggestion[0])
    assert data["hyper"]["learning_rate"] == pytest.approx(suggestion[0])
    # the same seed without the test: the weights it trained were thrown away, so the
    # first training step starts from the same initial weights (one step at the same rate)
    plain, _ = run(digits, tmp_path / "plain", hyper(epochs=1, learning_rate=suggestion[0]))
    assert plain.last["train.loss"] == pytest.approx(auto.last["train.loss"], rel=1e-4)


def test_a_range_test_beside_a_given_rate_only_informs(digits: Path, tmp_path: Path) -> None:
    _, rec = run(
        digits, tmp_path, hyper(epochs=1, learning_rate=0.02, lr_range_test=LRRangeTest(steps=30))
    )
    train_lr = [v["train.lr"] for _, _, v in rec.points if "train.lr" in v]
    assert any("lr_find.suggestion" in v for _, _, v in rec.points)
    assert train_lr[0] == pytest.approx(0.02)


def test_the_validation_hook_stops_the_run_with_its_reason(digits: Path, tmp_path: Path) -> None:
    """What a study's pruner uses: the engine asks after each validation and stops at once."""
    seen: list[tuple[int, float, float]] = []

    def hook(step: int, epoch: float, values: dict[str, float]) -> str | None:
        seen.append((step, epoch, values["val.accuracy"]))
        return "pruned: not in the top third" if len(seen) == 2 else None

    result, rec = run(digits, tmp_path, hyper(epochs=6, batch_size=64), on_validation=hook)
    print(f"LRFIND hook saw {len(seen)} validations, stopped at epoch {result.epoch}")
    assert result.outcome == "pruned"
    assert result.reason == "pruned: not in the top third"
    assert [round(e, 2) for _, e, _ in seen] == [1.0, 2.0]
    assert result.epoch == pytest.approx(2.0)
    names = {c.name for c in rec.checkpoints}
    assert "last" in names  # a pruned trial keeps its weights, like a stopped one
    assert (
        torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == result.steps
    )
