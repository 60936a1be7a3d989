"""Detection and segmentation pieces on real torch: boxes and masks move with their images, the
IoU arithmetic, backbones from classifiers, and a detection run started from one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shared.schemas.jobs import Hyperparameters
from tests import shapes
from tests.worker.test_training import Recorder
from worker.datasets.annotated import AnnotatedOptions, import_annotated
from worker.datasets.importer import ImportOptions, Source
from worker.training import checkpoint as ckpt
from worker.training import dense
from worker.training.engine import TrainSpec, train
from worker.training.models import build_model


def _task(tmp_path: Path, task: str, size: int = 64, **hyper: object) -> dense.DenseTask:
    src = tmp_path / "src"
    samples = shapes.render(12, size, size, seed=8)
    (shapes.write_voc if task == "detection" else shapes.write_masks)(src, samples)
    out = tmp_path / "stored"
    opts = ImportOptions(width=size, height=size, val_pct=25, seed=1)
    import_annotated(Source(kind="folder", root=src), opts, AnnotatedOptions(task), out)
    from shared import dataset_store as store

    reader = store.open_split(out, "train")
    hp = Hyperparameters.model_validate(hyper)
    return dense.DenseTask(
        task, store.read_classes(out), hp, reader, None, torch.device("cpu"), size, size
    )


def test_flipped_and_zoomed_boxes_still_bound_their_shapes(tmp_path: Path) -> None:
    task = _task(tmp_path, "detection", aug_flip="fliplrud", aug_scale=0.4)
    idx = torch.arange(len(task.train_targets.box_data.offsets) - 1)  # type: ignore[union-attr]
    targets = task.train_targets.boxes(idx)
    # one white filled box per image on black: where the resample puts its pixels is the truth
    images = torch.zeros(len(idx), 3, 64, 64)
    for i, (boxes, _labels) in enumerate(targets):
        x0, y0, x1, y1 = (round(float(v)) for v in boxes[0])
        images[i, :, y0:y1, x0:x1] = 1.0
        targets[i] = (boxes[:1], _labels[:1])
    gen = torch.Generator().manual_seed(4)
    affine = task._draw(len(idx), gen, torch.device("cpu"))
    assert affine is not None
    moved = task._move_boxes(targets, affine)
    pictures = task._resample(images, affine, "bilinear")[:, 0]
    checked = 0
    for (boxes, _labels), picture in zip(moved, pictures, strict=True):
        ys, xs = np.nonzero(picture.numpy() > 0.5)
        if len(boxes) == 0:  # mostly cropped out of view: dropped
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[0])
        assert abs(xs.min() - x0) <= 1.5
        assert abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5
        assert abs(ys.max() + 1 - y1) <= 1.5
        checked += 1
    assert checked >= len(idx) // 2
    assert (affine.ax < 0).any(), "some flipped"
    assert (affine.ax > 0).any(), "some not"
    assert (affine.ax.abs() < 1).any(), "some zoomed in"


def test_a_resampled_mask_stays_on_its_shapes_and_keeps_ignore(tmp_path: Path) -> None:
    task = _task(tmp_path, "segmentation", aug_flip="fliplr", aug_scale=0.5)
    idx = torch.arange(6)
    mask = task.train_targets.mask(idx)
    gen = torch.Generator().manual_seed(2)
    affine = task._draw(6, gen, torch.device("cpu"))
    assert affine is not None
    as_image = (mask > 0).float()[:, None].expand(-1, 3, -1, -1).contiguous()
    picture = task._resample(as_image, affine, "nearest")[:, 0]
    moved = task._resample(mask[:, None].float() + 1, affine, "nearest")[:, 0] - 1
    assert torch.equal(picture > 0.5, moved > 0)  # the same pixels, the same classes
    assert set(moved.unique().tolist()) <= set(range(len(task.classes)))


class _Oracle(nn.Module):
    """Reads the class each pixel encodes (its value / 60) as one-hot logits."""

    def __init__(self, classes: int, wrong: bool = False) -> None:
        super().__init__()
        self.classes = classes
        self.wrong = wrong
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grey = x[:, 0] * torch.tensor(dense.IMAGENET_STD[0]) + torch.tensor(dense.IMAGENET_MEAN[0])
        cls = torch.round(grey * 255 / 60).long().clamp(0, self.classes - 1)
        if self.wrong:
            cls = torch.zeros_like(cls)
        return {"out": nn.functional.one_hot(cls, self.classes).permute(0, 3, 1, 2).float() * 9}


class _Split:
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.labels = torch.arange(len(images))

    def batches(self, order: object, batch_size: int):  # type: ignore[no-untyped-def]
        for start in range(0, len(self.images), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]


def test_iou_is_one_for_a_perfect_segmenter_and_counts_misses(tmp_path: Path) -> None:
    task = _task(tmp_path, "segmentation")
    task.val_targets = task.train_targets
    masks = task.train_targets.mask(torch.arange(len(task.train_targets.masks)))  # type: ignore[arg-type]
    images = (masks.clamp(max=3).to(torch.uint8) * 60)[:, None].expand(-1, 3, -1, -1).contiguous()
    k = len(task.classes)
    perfect = task.evaluate(_Oracle(k), _Split(images), 4, None, _nothing)
    assert perfect["val.miou"] == pytest.approx(1.0)
    assert perfect["val.pixel_accuracy"] == pytest.approx(1.0)
    blind = task.evaluate(_Oracle(k, wrong=True), _Split(images), 4, None, _nothing)
    background = float((masks == 0).sum()) / float((masks != 255).sum())
    assert blind["val.pixel_accuracy"] == pytest.approx(background)
    assert blind["val.iou.background"] == pytest.approx(background)
    assert blind["val.iou.circle"] == 0.0
    assert blind["val.miou"] == pytest.approx(background / k)


def test_a_batch_of_nothing_but_ignore_has_a_zero_loss(tmp_path: Path) -> None:
    task = _task(tmp_path, "segmentation")
    task.train_targets.masks = torch.full_like(task.train_targets.masks, dense.IGNORE)  # type: ignore[arg-type]
    images = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    loss = task.loss(_Oracle(len(task.classes)), images, torch.arange(4), torch.Generator())
    assert float(loss) == 0.0  # not NaN, which the engine would take for a diverged run


def _nothing():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize(
    ("network", "classifier", "prefix"),
    [
        ("fcos_resnet18_fpn", "resnet18", "backbone.body."),
        ("lraspp_mobilenet_v3_large", "mobilenet_v3_large", "backbone."),
    ],
)
def test_a_classifier_fills_the_backbone(network: str, classifier: str, prefix: str) -> None:
    torch.manual_seed(0)
    source = build_model({"kind": "standard", "name": classifier}, 10, 3, 64, 64)
    task = "detection" if "fcos" in network else "segmentation"
    model = dense.build(network, task, 3, 64, 64)
    loaded, left = dense.load_backbone(model, source.state_dict())
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if key in left:
            continue
        name = prefix + key.removeprefix("features.")
        assert torch.equal(state[name], value), key
    assert loaded > 50
    assert all(k.startswith(("fc.", "classifier.")) for k in left), left


def test_a_detection_run_starts_from_a_classification_checkpoint(tmp_path: Path) -> None:
    _task(tmp_path, "detection")  # the stored dataset
    torch.manual_seed(0)
    source = build_model({"kind": "standard", "name": "resnet18"}, 10, 3, 64, 64)
    init = tmp_path / "classifier.pt"
    torch.save({"model": source.state_dict(), "task": "classification"}, init)
    reporter = Recorder()
    hp = Hyperparameters(epochs=1, batch_size=8, solver="adamw", learning_rate=1e-3, seed=1)
    (tmp_path / "job").mkdir()
    result = train(
        TrainSpec(
            tmp_path / "stored",
            {"kind": "standard", "name": "fcos_resnet18_fpn"},
            hp,
            tmp_path / "job",
            "cpu",
            init_checkpoint=init,
        ),
        reporter,
    )
    assert result.outcome == "done"
    assert "val.map" in result.last
    told = next(line for line in reporter.messages if line.startswith("backbone initialised"))
    loaded = int(re.search(r"(\d+) tensors loaded", told).group(1))  # type: ignore[union-attr]
    assert loaded == len(source.state_dict()) - 2, told  # all but fc.weight and fc.bias
    saved = ckpt.load(tmp_path / "job" / "checkpoints" / "last.pt")
    assert saved["task"] == "detection"


def test_a_segmentation_run_stops_early_on_its_own_metric(tmp_path: Path) -> None:
    _task(tmp_path, "segmentation", 48)  # the stored dataset
    # val.top5 is not a segmentation series (an older request's), so the run follows val.miou;
    # a min_delta of 1 can never be met, so it stops after one validation without it
    hp = Hyperparameters.model_validate(
        {
            "epochs": 10,
            "batch_size": 4,
            "solver": "adamw",
            "learning_rate": 3e-3,
            "seed": 1,
            "early_stopping": {"metric": "val.top5", "patience": 1, "min_delta": 1.0},
        }
    )
    reporter = Recorder()
    (tmp_path / "job").mkdir()
    network = {"kind": "standard", "name": "lraspp_mobilenet_v3_large"}
    result = train(TrainSpec(tmp_path / "stored", network, hp, tmp_path / "job", "cpu"), reporter)
    assert result.outcome == "early_stopped"
    assert result.epoch == 2.0
    assert any("early stopping" in m and "val.miou" in m for m in reporter.messages)
    assert "val.miou" in result.best
    best = next(c for c in reversed(reporter.checkpoints) if c.name == "best")
    assert best.metrics["val.miou"] == result.best["val.miou"]


def test_the_onnx_exports_match_the_torch_predictions(tmp_path: Path) -> None:
    """An FCOS (random weights, its score floor at 0 so that it boxes something) and an
    LR-ASPP exported with their pre- and post-processing run in onnxruntime as predict runs
    them in torch; Faster R-CNN, whose traced RoI pooling fails on some images, is refused."""
    import onnxruntime as ort

    from worker.training import predict

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)

    def loaded(name: str, task: str, classes: list[str]) -> predict.DenseModel:
        model = dense.build(name, task, len(classes), 64, 64).eval()
        meta = {"network_name": name}
        return predict.DenseModel(model, task, classes, 64, 64, 3, torch.device("cpu"), meta)

    detector = loaded("fcos_resnet18_fpn", "detection", ["a", "b", "c"])
    detector.model.score_thresh = 0.0  # type: ignore[assignment]
    predict.export_onnx(detector, tmp_path / "det.onnx")
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    for image, want in zip(images, detector.detect(images, 0.0), strict=True):
        boxes, scores, labels = session.run(None, {"image": image})
        assert len(want) == len(scores) > 0
        assert [w["class_id"] for w in want] == labels.tolist()
        assert np.allclose([w["box"] for w in want], boxes, atol=0.02)
        assert np.allclose([w["score"] for w in want], scores, atol=1e-4)
    segmenter = loaded("lraspp_mobilenet_v3_large", "segmentation", ["background", "x", "y"])
    info = predict.write_model_dir(
        segmenter, tmp_path, name="s", resize_mode="squash", checkpoint={}, exports=["onnx"]
    )
    assert info["exports"] == {"onnx": "model.onnx"}
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    mask, probs = session.run(None, {"images": images})
    assert probs.shape == (2, 3, 64, 64)
    assert (mask == segmenter.segment(images)).mean() > 0.995
    for name, export in (("fcos_resnet18_fpn", "torchscript"), (FASTER, "onnx")):
        with pytest.raises(ValueError, match=f"does not export {export}"):
            predict.write_model_dir(
                loaded(name, "detection", ["a"]),
                tmp_path,
                name="d",
                resize_mode="squash",
                checkpoint={},
                exports=[export],
            )


FASTER = "fasterrcnn_mobilenet_v3_large_320_fpn"
