"""Detection and segmentation on the engine's path.

torchvision's detectors and segmenters built without downloads, the boxes or masks of each
split kept beside its images, augmentation that moves boxes and masks with the image (one
affine resample per batch: flips, zoom and crop), and the validation metrics: mAP as COCO
defines it (torchmetrics' MeanAveragePrecision on the faster-coco-eval backend) and IoU from a
confusion matrix (torchmetrics). The engine calls `DenseTask.loss` per step and
`DenseTask.evaluate` per validation; nothing here knows about HTTP, SQL or Celery.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from shared import dataset_store as store
from shared.networks import CATALOG
from shared.schemas.jobs import Hyperparameters

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE = 255  # a mask value that no loss or metric counts
GRAD_CLIP = 10.0  # detectors from scratch blow up in their first steps without it
MAX_ZOOM = 2.0
MIN_VISIBLE = 0.3  # a box cut by the crop is kept while this share of it stays in view
BN_MOMENTUM = 0.1  # torchvision's MobileNetV3 uses 0.01: eval-mode BN lags for hundreds of steps

DETECTORS = tuple(n for n, info in CATALOG.items() if info.task == "detection")
SEGMENTERS = tuple(n for n, info in CATALOG.items() if info.task == "segmentation")


def _fcos_resnet18(num_classes: int, **kwargs: Any) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = _resnet_fpn_extractor(
        torchvision.models.resnet18(weights=None),
        5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return FCOS(backbone, num_classes, **kwargs)


def build(name: str, task: str, num_classes: int, height: int, width: int) -> nn.Module:
    """A detector (num_classes + 1 outputs, 0 = background) or a segmenter (num_classes), with
    random weights: weights=None and weights_backbone=None always, so nothing downloads."""
    if name not in CATALOG or CATALOG[name].task != task:
        raise ValueError(f"{name!r} is not a {task} network")
    size = {"min_size": min(height, width), "max_size": max(height, width)}
    model: nn.Module
    if task == "detection":
        if name == "fcos_resnet18_fpn":
            model = _fcos_resnet18(num_classes + 1, **size)
        else:
            builder = getattr(torchvision.models.detection, name)
            kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
            kwargs["num_classes"] = num_classes + 1
            if not name.startswith("ssdlite"):  # SSDlite's size is fixed at 320
                kwargs.update(size)
            if name == "fasterrcnn_mobilenet_v3_large_fpn":  # small images need few proposals
                kwargs.update(
                    rpn_pre_nms_top_n_train=300,
                    rpn_post_nms_top_n_train=100,
                    rpn_pre_nms_top_n_test=150,
                    rpn_post_nms_top_n_test=50,
                    box_batch_size_per_image=64,
                )
            model = builder(**kwargs)
    else:
        builder = getattr(torchvision.models.segmentation, name)
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if name != "lraspp_mobilenet_v3_large":
            kwargs["aux_loss"] = False
        model = builder(**kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = BN_MOMENTUM
    return model


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Copy a classifier's weights into a detector's or segmenter's backbone.

    torchvision nests the classifier under `backbone.body.` (ResNets with an FPN, MobileNet's
    `features` with an FPN) or `backbone.` (the segmenters' MobileNet `features`); the mapping
    that fits the most tensors by name and shape is taken. Returns how many tensors were
    loaded and the classifier's keys left out (its head, a first convolution for other
    channels)."""
    own = model.state_dict()
    best: dict[str, str] = {}  # the model's key -> the classifier's
    for prefix in ("backbone.body.", "backbone."):
        for strip in ("", "features."):
            mapped = {}
            for key, value in state.items():
                if strip and not key.startswith(strip):
                    continue
                name = prefix + key[len(strip) :]
                target = own.get(name)
                if target is not None and tuple(target.shape) == tuple(value.shape):
                    mapped[name] = key
            if len(mapped) > len(best):
                best = mapped
    model.load_state_dict({name: state[key] for name, key in best.items()}, strict=False)
    used = set(best.values())
    return len(best), [k for k in state if k not in used]


@dataclass
class _Boxes:
    """One split's boxes on the device, rows of image i at offsets[i]:offsets[i+1]."""

    boxes: torch.Tensor  # float32 M x 4, x0 y0 x1 y1 in stored pixels
    labels: torch.Tensor  # int64 M, class ids from 0
    offsets: np.ndarray  # int64 N + 1

    def of(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(boxes, labels) of each image in idx."""
        out = []
        for i in idx.tolist():
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            out.append((self.boxes[start:end], self.labels[start:end]))
        return out


class Targets:
    """The boxes or masks of a split, looked up by the image indices its batches carry."""

    def __init__(self, reader: store.SplitReader, task: str, device: torch.device) -> None:
        self.task = task
        self.device = device
        self.box_data: _Boxes | None = None
        self.masks: torch.Tensor | None = None
        self._mmap: np.ndarray | None = None
        if task == "detection":
            boxes, labels, offsets = reader.all_boxes()
            self.box_data = _Boxes(
                torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).to(device),
                torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device),
                np.asarray(offsets, dtype=np.int64),
            )
        else:
            masks = reader.all_masks()
            if masks.nbytes <= 512 * 1024**2:
                self.masks = torch.from_numpy(np.array(masks)).to(device)
            else:  # read per batch from the memory map
                self._mmap = masks

    def boxes(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each image's (boxes, labels)."""
        assert self.box_data is not None
        return self.box_data.of(idx)

    def mask(self, idx: torch.Tensor) -> torch.Tensor:
        """B x H x W uint8 masks."""
        if self.masks is not None:
            return self.masks.index_select(0, idx.to(self.masks.device))
        assert self._mmap is not None
        rows = np.sort(idx.cpu().numpy())
        order = np.argsort(np.argsort(idx.cpu().numpy()))
        part = torch.from_numpy(np.array(self._mmap[rows])[order])
        return part.to(self.device, non_blocking=True)


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x C x H x W to float 0..1 with 3 channels (grey repeated)."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    return x.contiguous()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class _Affine:
    """Per-sample output-to-input maps in normalised coordinates: x_in = a * x_out + t."""

    ax: torch.Tensor
    ay: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor

    def theta(self) -> torch.Tensor:
        zero = torch.zeros_like(self.ax)
        return torch.stack(
            [torch.stack([self.ax, zero, self.tx], 1), torch.stack([zero, self.ay, self.ty], 1)],
            1,
        )


class DenseTask:
    """A detection or segmentation run's targets, augmentation, loss and metrics."""

    def __init__(
        self,
        task: str,
        classes: list[str],
        hyper: Hyperparameters,
        train: store.SplitReader,
        val: store.SplitReader | None,
        device: torch.device,
        height: int,
        width: int,
    ) -> None:
        self.task = task
        self.classes = classes
        self.height, self.width = height, width
        self.flip_x = hyper.aug_flip in ("fliplr", "fliplrud")
        self.flip_y = hyper.aug_flip in ("flipud", "fliplrud")
        self.zoom = float(hyper.aug_scale)
        self.noise = float(hyper.aug_noise)
        self.train_targets = Targets(train, task, device)
        self.val_targets = Targets(val, task, device) if val is not None else None
        self.metric = "val.map" if task == "detection" else "val.miou"

    # ------------------------------------------------------------------ augmentation

    def _draw(self, n: int, gen: torch.Generator, device: torch.device) -> _Affine | None:
        if not (self.flip_x or self.flip_y or self.zoom > 0):
            return None
        ones = torch.ones(n, device=device)

        def sign(on: bool) -> torch.Tensor:
            if not on:
                return ones
            return torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1.0, 1.0)

        fx, fy = sign(self.flip_x), sign(self.flip_y)
        zoom = ones
        if self.zoom > 0:
            zoom = (1 + (torch.randn(n, generator=gen, device=device) * self.zoom).abs()).clamp(
                max=MAX_ZOOM
            )
        span = 1 - 1 / zoom  # the crop stays inside the image
        tx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * span
        ty = (torch.rand(n, generator=gen, device=device) * 2 - 1) * span
        return _Affine(fx / zoom, fy / zoom, tx, ty)

    def _resample(self, x: torch.Tensor, affine: _Affine, mode: str) -> torch.Tensor:
        grid = F.affine_grid(affine.theta(), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    def _move_boxes(
        self, targets: list[tuple[torch.Tensor, torch.Tensor]], affine: _Affine
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        w, h = float(self.width), float(self.height)
        out = []
        for i, (boxes, labels) in enumerate(targets):
            if boxes.numel() == 0:
                out.append((boxes, labels))
                continue
            ax, ay, tx, ty = affine.ax[i], affine.ay[i], affine.tx[i], affine.ty[i]
            xs = ((boxes[:, [0, 2]] * (2 / w) - 1 - tx) / ax + 1) * (w / 2)
            ys = ((boxes[:, [1, 3]] * (2 / h) - 1 - ty) / ay + 1) * (h / 2)
            x0, x1 = xs.min(1).values, xs.max(1).values
            y0, y1 = ys.min(1).values, ys.max(1).values
            full = (x1 - x0) * (y1 - y0)
            cx0, cx1 = x0.clamp(0, w), x1.clamp(0, w)
            cy0, cy1 = y0.clamp(0, h), y1.clamp(0, h)
            seen = (cx1 - cx0) * (cy1 - cy0)
            keep = (cx1 - cx0 >= 1) & (cy1 - cy0 >= 1) & (seen >= MIN_VISIBLE * full)
            moved = torch.stack([cx0, cy0, cx1, cy1], 1)[keep]
            out.append((moved, labels[keep]))
        return out

    # ------------------------------------------------------------------ steps

    def loss(
        self, net: nn.Module, images: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """The training loss of one batch (augmented with randomness from gen)."""
        x = _as_rgb(images)
        affine = self._draw(x.shape[0], gen, x.device)
        if affine is not None:
            x = self._resample(x, affine, "bilinear")
        if self.noise > 0:
            noise = torch.randn(x.shape, generator=gen, device=x.device)
            x = (x + noise * self.noise).clamp_(0, 1)
        if self.task == "detection":
            targets = self.train_targets.boxes(idx)
            if affine is not None:
                targets = self._move_boxes(targets, affine)
            losses = net(list(x.unbind(0)), [{"boxes": b, "labels": lab + 1} for b, lab in targets])
            return sum(losses.values())  # type: ignore[return-value]
        mask = self.train_targets.mask(idx)
        if affine is not None:  # values shifted by one so the zero padding reads as ignore
            m = self._resample(mask[:, None].float() + 1, affine, "nearest")[:, 0]
            mask = torch.where(m == 0, IGNORE + 1, m).sub_(1).to(torch.uint8)
        logits = net(_normalise(x))["out"]
        # a mean over the pixels that count; a batch with none (all ignore) is a zero loss
        total = F.cross_entropy(logits.float(), mask.long(), ignore_index=IGNORE, reduction="sum")
        return total / (mask != IGNORE).sum().clamp(min=1)

    @torch.inference_mode()
    def evaluate(
        self,
        model: nn.Module,
        split: Any,
        batch_size: int,
        amp_dtype: torch.dtype | None,
        autocast: Any,
    ) -> dict[str, float]:
        """The validation metrics of the task over the val split."""
        assert self.val_targets is not None
        was_training = model.training
        model.eval()
        try:
            if self.task == "detection":
                return self._evaluate_boxes(model, split, batch_size, autocast)
            return self._evaluate_masks(model, split, batch_size, autocast)
        finally:
            model.train(was_training)

    def _evaluate_boxes(
        self, model: nn.Module, split: Any, batch_size: int, autocast: Any
    ) -> dict[str, float]:
        from torchmetrics.detection import MeanAveragePrecision

        assert self.val_targets is not None
        metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval"
        )
        for images, idx in split.batches(None, batch_size):
            with autocast():
                out = model(list(_as_rgb(images).unbind(0)))
            preds = [_predicted(o) for o in out]
            truth = [
                {"boxes": b.cpu(), "labels": lab.cpu()} for b, lab in self.val_targets.boxes(idx)
            ]
            metric.update(preds, truth)
        result = metric.compute()
        values = {
            "val.map": _finite(result["map"]),
            "val.map_50": _finite(result["map_50"]),
            "val.map_75": _finite(result["map_75"]),
        }
        per_class = result["map_per_class"].reshape(-1).tolist()
        ids = result["classes"].reshape(-1).tolist()
        for k, value in zip(ids, per_class, strict=False):
            if 0 <= int(k) < len(self.classes) and value >= 0:
                values[series_name("val.ap", self.classes, int(k))] = float(value)
        return values

    def _evaluate_masks(
        self, model: nn.Module, split: Any, batch_size: int, autocast: Any
    ) -> dict[str, float]:
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        assert self.val_targets is not None
        k = len(self.classes)
        device = split.labels.device
        confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for images, idx in split.batches(None, batch_size):
            with autocast():
                logits = model(_normalise(_as_rgb(images)))["out"]
            logits = logits.float()
            mask = self.val_targets.mask(idx).long()
            loss_sum += F.cross_entropy(logits, mask, ignore_index=IGNORE, reduction="sum")
            confusion += multiclass_confusion_matrix(logits.argmax(1), mask, k, ignore_index=IGNORE)
        counts = confusion.to(torch.float64)
        tp = counts.diag()
        union = counts.sum(0) + counts.sum(1) - tp
        total = counts.sum()
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
        values = {
            "val.loss": float(loss_sum / total.clamp(min=1)),
            "val.miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
            "val.pixel_accuracy": float(tp.sum() / total.clamp(min=1)),
        }
        for c in range(k):
            if bool(present[c]):
                values[series_name("val.iou", self.classes, c)] = float(iou[c])
        return values


def _predicted(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detector's output for torchmetrics: class ids from 0, the background's boxes left out
    (FCOS and RetinaNet score class 0 with a sigmoid like any other)."""
    keep = out["labels"] > 0
    return {
        "boxes": out["boxes"][keep].float().cpu(),
        "scores": out["scores"][keep].float().cpu(),
        "labels": out["labels"][keep].cpu() - 1,
    }


def _finite(value: torch.Tensor) -> float:
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else 0.0


def series_name(prefix: str, classes: list[str], k: int) -> str:
    """A per-class series: val.ap.circle, or val.ap.3 where the name would pass 64 characters."""
    name = f"{prefix}.{classes[k]}"
    return name if len(name) <= 64 else f"{prefix}.{k}"


def clip_gradients(model: nn.Module) -> None:
    """Clip the gradient norm (detectors and segmenters from scratch)."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)


@torch.inference_mode()
def evaluate_split(
    model: nn.Module,
    task: str,
    classes: list[str],
    reader: store.SplitReader,
    device: torch.device,
    batch_size: int = 16,
    progress: Any = None,
) -> dict[str, Any]:
    """An evaluation job's figures: the validation metrics, and per class AP, AP@0.5, recall
    and the precision-recall curve at IoU 0.5 (detection) or IoU and pixels (segmentation)."""
    targets = Targets(reader, task, device)
    n = len(reader)
    model.eval()

    def batches() -> Any:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            images = torch.from_numpy(reader.images(idx)).to(device).permute(0, 3, 1, 2)
            yield images, torch.from_numpy(idx).to(device)
            if progress is not None:
                progress(int(idx[-1]) + 1, n)

    if task == "detection":
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            class_metrics=True,
            extended_summary=True,
            backend="faster_coco_eval",
        )
        objects = np.zeros(len(classes), dtype=np.int64)
        for images, idx in batches():
            out = model(list(_as_rgb(images).unbind(0)))
            truth = targets.boxes(idx)
            for _boxes, labels in truth:
                objects += np.bincount(labels.cpu().numpy(), minlength=len(classes))[: len(classes)]
            metric.update(
                [_predicted(o) for o in out],
                [{"boxes": b.cpu(), "labels": lab.cpu()} for b, lab in truth],
            )
        result = metric.compute()
        ids = [int(k) for k in result["classes"].reshape(-1).tolist()]
        precision = result[
            "precision"
        ]  # IoU thresholds x 101 recall points x classes x areas x max dets
        recall = result["recall"]  # IoU thresholds x classes x areas x max dets
        per_map = result["map_per_class"].reshape(-1).tolist()
        rows = []
        points = [round(r / 100, 2) for r in range(101)]
        for c, name in enumerate(classes):
            row: dict[str, Any] = {"label": name, "objects": int(objects[c])}
            if c in ids:
                k = ids.index(c)
                curve = precision[0, :, k, 0, -1].tolist()
                valid = [p for p in curve if p >= 0]
                row.update(
                    ap=max(0.0, float(per_map[k])),
                    ap_50=float(np.mean(valid)) if valid else 0.0,
                    recall_50=max(0.0, float(recall[0, k, 0, -1])),
                    pr_curve={"recall": points, "precision": [max(0.0, p) for p in curve]},
                )
            rows.append(row)
        metrics = {
            "map": _finite(result["map"]),
            "map_50": _finite(result["map_50"]),
            "map_75": _finite(result["map_75"]),
        }
        return {"images": n, "metrics": metrics, "per_class": rows, "confusion_matrix": None}
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
    loss_sum = 0.0
    for images, idx in batches():
        logits = model(_normalise(_as_rgb(images)))["out"].float()
        mask = targets.mask(idx).long()
        loss_sum += float(F.cross_entropy(logits, mask, ignore_index=IGNORE, reduction="sum"))
        confusion += multiclass_confusion_matrix(logits.argmax(1), mask, k, ignore_index=IGNORE)
    counts = confusion.to(torch.float64)
    tp = counts.diag()
    union = counts.sum(0) + counts.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    total = float(counts.sum())
    metrics = {
        "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "pixel_accuracy": float(tp.sum()) / max(1.0, total),
        "loss": loss_sum / max(1.0, total) if math.isfinite(loss_sum) else -1.0,
    }
    rows = [
        {"label": name, "iou": float(iou[c]), "pixels": int(counts[c].sum())}
        for c, name in enumerate(classes)
    ]
    return {
        "images": n,
        "metrics": metrics,
        "per_class": rows,
        "confusion_matrix": confusion.cpu().tolist(),
    }
