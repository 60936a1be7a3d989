"""The training engine on real data (scikit-learn's digits, imported like an upload), on the CPU."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shared.schemas.jobs import EarlyStopping, Hyperparameters
from worker.datasets.importer import ImportOptions, Source, import_dataset
from worker.training import data as data_module
from worker.training.augment import Preprocess, hsv_to_rgb, rgb_to_hsv
from worker.training.engine import (
    CheckpointInfo,
    TrainingError,
    TrainResult,
    TrainSpec,
    train,
)
from worker.training.models import build_model

log = logging.getLogger(__name__)

LENET = {"kind": "standard", "name": "lenet"}
# Small, with dropout, so resuming must restore the global RNG as well as the augmentation one.
SMALL_NET = {
    "kind": "custom",
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "dropout", "p": 0.3},
        {"type": "linear"},
    ],
}

# ----------------------------------------------------------------------------- helpers


@dataclass
class Recorder:
    """A Reporter that keeps everything; stops after `stop_after` steps when asked to."""

    stop_after: int | None = None
    points: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    progress_calls: list[tuple[float, int, int]] = field(default_factory=list)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    stop_checks: int = 0

    def metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        self.points.append((step, epoch, dict(values)))

    def progress(self, epoch: float, step: int, total_steps: int) -> None:
        self.progress_calls.append((epoch, step, total_steps))

    def checkpoint_saved(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)

    def should_stop(self) -> bool:
        # Checked once before each step: the (n+1)-th check comes after n steps.
        self.stop_checks += 1
        return self.stop_after is not None and self.stop_checks > self.stop_after

    def log(self, message: str) -> None:
        self.messages.append(message)

    def steps_of(self, series: str) -> list[int]:
        return [step for step, _, values in self.points if series in values]


def write_digits(root: Path, classes: range) -> None:
    """scikit-learn's 8x8 digits as PNG class folders (0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for i, (img, target) in enumerate(zip(images, digits.target, strict=True)):
        if target in classes:
            path = root / str(target) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(path)


def import_digits(tmp: Path, classes: range) -> Path:
    write_digits(tmp / "src", classes)
    out = tmp / "dataset"
    # workers=1: in-process, since forking a process that already runs torch threads is unsafe
    opts = ImportOptions(width=28, height=28, channels=1, val_pct=25, seed=1, workers=1)
    import_dataset(Source(kind="folder", root=tmp / "src"), opts, out)
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1797 digits, 10 classes, 28x28x1, 25 % validation."""
    return import_digits(tmp_path_factory.mktemp("digits"), range(10))


@pytest.fixture(scope="module")
def digits3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits 0, 1 and 2 only: a dataset with another class count, for fine-tuning."""
    return import_digits(tmp_path_factory.mktemp("digits3"), range(3))


def hyper(**kw: Any) -> Hyperparameters:
    base: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 64,
        "learning_rate": 0.02,
        "seed": 0,
        "lr_policy": "fixed",
    }
    base.update(kw)
    return Hyperparameters(**base)


def run(
    dataset: Path,
    out: Path,
    hp: Hyperparameters,
    network: dict[str, Any] | None = None,
    reporter: Recorder | None = None,
    **spec: Any,
) -> tuple[TrainResult, Recorder]:
    reporter = reporter or Recorder()
    spec.setdefault("device", "cpu")
    result = train(TrainSpec(dataset, network or LENET, hp, out, **spec), reporter)
    return result, reporter


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def losses(rec: Recorder) -> list[float]:
    return [values["train.loss"] for _, _, values in rec.points if "train.loss" in values]


# ----------------------------------------------------------------------------- training


def test_lenet_reaches_97_percent(digits: Path, tmp_path: Path) -> None:
    hp = hyper(epochs=15, batch_size=32, learning_rate=0.02, lr_policy="cosine", use_mean="pixel")
    t0 = time.perf_counter()
    result, rec = run(digits, tmp_path, hp)
    seconds = time.perf_counter() - t0

    assert result.outcome == "done"
    assert result.best["val.accuracy"] >= 0.97, result
    assert result.last["val.accuracy"] >= 0.96
    assert result.steps == 15 * 43  # ceil(1347 / 32) steps per epoch
    assert result.epoch == 15.0
    assert 0.0 < result.last["train.loss"] < 0.2
    assert result.images_per_second > 0
    # train loss every round(43 / 8) = 5 steps; validation every epoch
    assert rec.steps_of("train.loss") == list(range(5, 646, 5))
    assert rec.steps_of("val.accuracy") == list(range(43, 646, 43))
    assert all(values["epoch"] == step / 43 for step, _, values in rec.points if "epoch" in values)
    assert rec.progress_calls[-1] == (15.0, 645, 645)
    names = {c.name for c in rec.checkpoints}
    assert names >= {f"epoch-{e}" for e in range(1, 16)} | {"last", "best"}
    files = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert files == {f"epoch-{e}.pt" for e in range(1, 16)} | {"last.pt", "best.pt"}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["metrics"]["val.accuracy"] == result.best["val.accuracy"]
    assert best["classes"] == [str(d) for d in range(10)]
    assert best["image_shape"] == [28, 28, 1]
    log.info(
        "LeNet on digits: %.1f s, best val.accuracy %.4f", seconds, result.best["val.accuracy"]
    )


@pytest.mark.parametrize(
    ("solver", "lr"),
    [
        ("sgd", 0.05),
        ("nesterov", 0.05),
        ("adagrad", 0.01),
        ("rmsprop", 0.0005),
        ("adadelta", 1.0),
        ("adam", 0.001),
        ("adamw", 0.001),
    ],
)
def test_each_solver_lowers_the_loss(digits: Path, tmp_path: Path, solver: str, lr: float) -> None:
    hp = hyper(solver=solver, learning_rate=lr, log_interval=1, val_interval=0, snapshot_interval=0)
    result, rec = run(digits, tmp_path, hp)
    curve = losses(rec)
    assert len(curve) == 22
    assert np.mean(curve[-4:]) < 0.5 * np.mean(curve[:2]), curve
    assert result.outcome == "done"


def test_same_seed_gives_identical_weights(digits: Path, tmp_path: Path) -> None:
    hp = hyper(seed=7, aug_flip="fliplr", aug_noise=0.02)
    run(digits, tmp_path / "a", hp, SMALL_NET)
    run(digits, tmp_path / "b", hp, SMALL_NET)
    run(digits, tmp_path / "c", hyper(seed=8, aug_flip="fliplr", aug_noise=0.02), SMALL_NET)
    a, b, c = (weights(tmp_path / x / "checkpoints" / "last.pt") for x in "abc")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_resume_matches_an_uninterrupted_run(digits: Path, tmp_path: Path) -> None:
    hp = hyper(
        epochs=2,
        log_interval=5,
        crop_size=26,
        aug_flip="fliplr",
        aug_rot=10,
        aug_noise=0.02,
        val_interval=0.5,
    )
    full, full_rec = run(digits, tmp_path / "full", hp, SMALL_NET)

    part = tmp_path / "part"
    first, first_rec = run(digits, part, hp, SMALL_NET, Recorder(stop_after=13))
    assert first.outcome == "stopped"
    assert first.steps == 13
    assert [c.name for c in first_rec.checkpoints][-1] == "last"
    second, second_rec = run(
        digits, part, hp, SMALL_NET, resume_checkpoint=part / "checkpoints" / "last.pt"
    )
    assert second.outcome == "done"
    assert second.steps == full.steps == 44

    a = weights(tmp_path / "full" / "checkpoints" / "last.pt")
    b = weights(part / "checkpoints" / "last.pt")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    for series in ("train.loss", "val.loss"):
        steps = first_rec.steps_of(series) + second_rec.steps_of(series)
        assert steps == full_rec.steps_of(series), series
    np.testing.assert_allclose(losses(first_rec) + losses(second_rec), losses(full_rec), rtol=1e-6)
    assert second.best == pytest.approx(full.best)


def test_early_stopping_ends_the_run(digits: Path, tmp_path: Path) -> None:
    # an impossible improvement: the second validation already counts as no progress
    stop = EarlyStopping(metric="val.loss", patience=2, min_delta=10.0)
    result, rec = run(digits, tmp_path, hyper(epochs=20, early_stopping=stop))
    assert result.outcome == "early_stopped"
    assert result.steps == 3 * 22
    assert rec.steps_of("val.loss") == [22, 44, 66]
    assert {"epoch-3", "last"} <= {c.name for c in rec.checkpoints}
    assert any("early stopping" in m for m in rec.messages)


def test_should_stop_ends_the_run_quickly(digits: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    result, rec = run(digits, tmp_path, hyper(epochs=50), reporter=Recorder(stop_after=3))
    assert time.perf_counter() - t0 < 15
    assert result.outcome == "stopped"
    assert result.steps == 3
    assert [c.name for c in rec.checkpoints] == ["last"]
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 3


def test_nan_loss_is_reported_with_its_step(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"loss became NaN at step \d+; lower the learning"):
        run(digits, tmp_path, hyper(learning_rate=10.0, momentum=0.99, log_interval=1))


def test_batch_accumulation_matches_a_large_batch(digits: Path, tmp_path: Path) -> None:
    run(digits, tmp_path / "big", hyper(batch_size=64))
    run(digits, tmp_path / "acc", hyper(batch_size=32, batch_accumulation=2))
    # equal up to float summation order (a wrong loss scale would be off by far more)
    a = weights(tmp_path / "big" / "checkpoints" / "last.pt")
    b = weights(tmp_path / "acc" / "checkpoints" / "last.pt")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)


def test_streamed_data_trains_like_resident_data(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = hyper(aug_flip="fliplr")
    run(digits, tmp_path / "resident", hp)
    monkeypatch.setattr(data_module, "CPU_RESIDENT_BYTES", 0)
    run(digits, tmp_path / "streamed", hp)
    a = weights(tmp_path / "resident" / "checkpoints" / "last.pt")
    b = weights(tmp_path / "streamed" / "checkpoints" / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fine_tuning_reinitialises_only_the_head(
    digits: Path, digits3: Path, tmp_path: Path
) -> None:
    run(digits, tmp_path / "base", hyper())
    base = tmp_path / "base" / "checkpoints" / "last.pt"
    # stop before the first step, so last.pt holds the initial weights
    result, rec = run(
        digits3,
        tmp_path / "tuned",
        hyper(seed=5),
        reporter=Recorder(stop_after=0),
        init_checkpoint=base,
    )
    assert result.steps == 0
    tuned = weights(tmp_path / "tuned" / "checkpoints" / "last.pt")
    source = weights(base)
    torch.manual_seed(5)
    fresh = build_model(LENET, 3, 1, 28, 28).state_dict()
    for key, value in tuned.items():
        if key.startswith("7."):
            assert value.shape[0] == 3
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, source[key]), key
    assert any("7.weight" in m and "7.bias" in m for m in rec.messages)


def test_a_missing_dataset_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="dataset"):
        run(tmp_path / "nowhere", tmp_path / "out", hyper())


def test_crop_larger_than_the_images_is_a_training_error(digits: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="crop size 40"):
        run(digits, tmp_path, hyper(crop_size=40))


# ----------------------------------------------------------------------------- CUDA (when present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("resident", [True, False])
def test_trains_on_cuda(
    digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resident: bool
) -> None:
    if not resident:
        monkeypatch.setattr(data_module, "CUDA_RESIDENT_FRACTION", 0.0)
    hp = hyper(
        epochs=6,
        batch_size=32,
        lr_policy="cosine",
        use_mean="pixel",
        crop_size=26,
        aug_flip="none",
        aug_rot=5,
        aug_noise=0.01,
    )
    result, rec = run(digits, tmp_path, hp, device="cuda")
    assert result.outcome == "done"
    assert result.best["val.accuracy"] >= 0.9, result
    assert rec.steps_of("val.accuracy") == [43 * e for e in range(1, 7)]
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 6 * 43
    model = build_model(LENET, 10, 1, 26, 26)
    model.load_state_dict(saved["model"])


@cuda
def test_resume_on_cuda_continues_without_gaps(digits: Path, tmp_path: Path) -> None:
    hp = hyper(epochs=2, log_interval=5, aug_flip="fliplr", aug_noise=0.02, val_interval=0.5)
    first, first_rec = run(digits, tmp_path, hp, SMALL_NET, Recorder(stop_after=13), device="cuda")
    assert (first.outcome, first.steps) == ("stopped", 13)
    second, second_rec = run(
        digits,
        tmp_path,
        hp,
        SMALL_NET,
        resume_checkpoint=tmp_path / "checkpoints" / "last.pt",
        device="cuda",
    )
    assert (second.outcome, second.steps) == ("done", 44)
    steps = first_rec.steps_of("train.loss") + second_rec.steps_of("train.loss")
    assert steps == [*range(5, 44, 5), 44]


# ----------------------------------------------------------------------------- augmentation


def make_preprocess(channels: int, size: int = 16, **kw: Any) -> Preprocess:
    return Preprocess(hyper(use_mean="none", **kw), None, channels, size, size)


def matches(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Per sample of out: whether it equals the uint8 image scaled to 0..1."""
    return ((out - image.float() / 255).abs() < 1e-6).flatten(1).all(1)


DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_augmentations_keep_shape_and_dtype(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, device=device)
    pre = Preprocess(
        hyper(
            crop_size=12,
            aug_flip="fliplrud",
            aug_quad_rot="rotall",
            aug_rot=30,
            aug_scale=0.1,
            aug_noise=0.05,
            aug_hsv_use=True,
        ),
        torch.full((3, 16, 16), 100.0, device=device),
        3,
        16,
        16,
        channels_last=device == "cuda",
    )
    out = pre.train(x, gen)
    assert out.shape == (8, 3, 12, 12)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert pre.eval(x).shape == (8, 3, 12, 12)
    if device == "cuda":
        assert out.is_contiguous(memory_format=torch.channels_last)
    gray = make_preprocess(1, aug_flip="flipud", aug_rot=5, aug_hsv_use=True)
    assert gray.train(x[:, :1], gen).shape == (8, 1, 16, 16)


def test_no_augmentation_is_mean_subtraction_and_scaling() -> None:
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    mean = torch.rand(1, 8, 8) * 255
    pre = Preprocess(hyper(), mean, 1, 8, 8)
    expected = (x.float() - mean) / 255
    torch.testing.assert_close(pre.train(x, None), expected)
    torch.testing.assert_close(pre.eval(x), expected)


@pytest.mark.parametrize(("mode", "dims"), [("fliplr", (3,)), ("flipud", (2,))])
def test_flip_really_flips(mode: str, dims: tuple[int, ...]) -> None:
    image = torch.arange(5 * 7, dtype=torch.uint8).view(1, 1, 5, 7)
    x = image.expand(64, 3, 5, 7)
    pre = make_preprocess(3, 5, aug_flip=mode)
    pre.height, pre.width = 5, 7
    out = pre.train(x, torch.Generator().manual_seed(0))
    is_plain = matches(out, image)
    is_flipped = matches(out, image.flip(dims))
    assert bool((is_plain | is_flipped).all())
    assert 10 < int(is_flipped.sum()) < 54


def test_quarter_rotations_are_the_allowed_ones() -> None:
    image = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    x = image.expand(64, 1, 6, 6)
    out = make_preprocess(1, 6, aug_quad_rot="rot180").train(x, torch.Generator().manual_seed(1))
    is_plain = matches(out, image)
    is_turned = matches(out, torch.rot90(image, 2, (2, 3)))
    assert bool((is_plain | is_turned).all())
    assert 10 < int(is_turned.sum()) < 54


def test_random_crop_takes_windows_of_the_image() -> None:
    image = torch.arange(100, dtype=torch.uint8).view(1, 1, 10, 10)
    out = make_preprocess(1, 10, crop_size=4).train(
        image.expand(32, 1, 10, 10), torch.Generator().manual_seed(0)
    )
    windows = image.unfold(2, 4, 1).unfold(3, 4, 1).reshape(-1, 1, 4, 4)
    for crop in out:
        assert bool(matches(crop[None], windows).any())
    assert len({tuple(c.flatten().tolist()) for c in out[:, 0]}) > 4


def test_hsv_conversion_round_trips() -> None:
    rgb = torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=1e-5)
