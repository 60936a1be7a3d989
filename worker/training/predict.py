"""Predictions of detection and segmentation checkpoints: boxes with scores, or class masks.

Images come in as the dataset stored them (uint8 H x W x C at the training size); the model
service maps boxes back onto the uploaded image with the resize geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import networks
from worker.training import checkpoint as ckpt
from worker.training import dense
from worker.training.inference import ModelFileError

log = logging.getLogger(__name__)

MAX_BOXES = 300  # per image, best first


@dataclass
class DenseModel:
    """A loaded detector or segmenter and what its inputs must be."""

    model: nn.Module
    task: str
    classes: list[str]
    height: int
    width: int
    channels: int
    device: torch.device
    meta: dict[str, Any]

    @torch.inference_mode()
    def detect(self, images: np.ndarray, threshold: float) -> list[list[dict[str, Any]]]:
        """Per image, its boxes above threshold: {label, class_id, score, box: [x0,y0,x1,y1]}."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        out = self.model(list(dense._as_rgb(x).unbind(0)))
        results = []
        for o in out:
            scores = o["scores"].float().cpu()
            # class 0 is the background: FCOS and RetinaNet score it too
            found = (scores >= threshold) & (o["labels"].cpu() > 0)
            keep = torch.nonzero(found).flatten()[:MAX_BOXES]
            boxes = o["boxes"].float().cpu()[keep].tolist()
            labels = (o["labels"].cpu()[keep] - 1).tolist()
            results.append(
                [
                    {
                        "label": self.classes[c] if 0 <= c < len(self.classes) else str(c),
                        "class_id": int(c),
                        "score": round(float(scores[i]), 5),
                        "box": [round(float(v), 2) for v in box],
                    }
                    for i, c, box in zip(keep.tolist(), labels, boxes, strict=True)
                ]
            )
        return results

    @torch.inference_mode()
    def segment(self, images: np.ndarray) -> np.ndarray:
        """Class-index masks (N x H x W uint8)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        logits = self.model(dense._normalise(dense._as_rgb(x)))["out"]
        return logits.argmax(1).to(torch.uint8).cpu().numpy()


def load(path: Path, device: str | torch.device = "cpu") -> DenseModel:
    """A detection or segmentation training checkpoint, ready to predict."""
    try:
        data = ckpt.load(Path(path))
        task = str(data.get("task", "classification"))
        height, width, channels = (int(v) for v in data["image_shape"])
        classes = [str(c) for c in data["classes"]]
        name = str(dict(data["network"]).get("name"))
        state = ckpt.model_state(data)
    except FileNotFoundError:
        raise ModelFileError("the checkpoint file is missing") from None
    except Exception as exc:
        log.warning("unreadable checkpoint %s: %s", Path(path).name, type(exc).__name__)
        raise ModelFileError(
            "the checkpoint cannot be read (damaged or not a checkpoint)"
        ) from None
    if task not in ("detection", "segmentation"):
        raise ModelFileError(f"the checkpoint is a {task} model, not a detector or segmenter")
    try:
        model = dense.build(name, task, len(classes), height, width)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"the checkpoint does not fit its network: {exc}") from None
    dev = torch.device(device)
    model.to(dev).eval()
    meta = {"epoch": data.get("epoch"), "step": data.get("step"), "network_name": name}
    return DenseModel(model, task, classes, height, width, channels, dev, meta)


class _DetectorExport(nn.Module):
    """One uint8 H x W x C image in; its boxes (pixels at the training size), scores and class
    ids out, after the network's own post-processing (score floor, NMS, top-k), background
    dropped."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = dense._as_rgb(image.permute(2, 0, 1).unsqueeze(0))[0]
        out = self.model([x])[0]
        keep = out["labels"] > 0
        return out["boxes"][keep], out["scores"][keep], out["labels"][keep] - 1


class _SegmenterExport(nn.Module):
    """uint8 N x H x W x C images in; class-index masks (uint8) and per-pixel class
    probabilities out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = dense._normalise(dense._as_rgb(images.permute(0, 3, 1, 2)))
        probs = self.model(x)["out"].softmax(1)
        return probs.argmax(1).to(torch.uint8), probs


def exports_of(model: DenseModel) -> tuple[str, ...]:
    """What this model exports (shared.networks says why Faster R-CNN and SSDlite do not)."""
    return networks.exports_of(type_name(model))


# what the exported files take and give (info.json repeats it)
EXPORT_IO = {
    "detection": {
        "inputs": {"image": "uint8 [height, width, channels]: one image at the training size"},
        "outputs": {
            "boxes": "float32 [n, 4]: x0, y0, x1, y1 in the input's pixels",
            "scores": "float32 [n], best first, above the network's own floor",
            "labels": "int64 [n]: index into labels.txt",
        },
    },
    "segmentation": {
        "inputs": {"images": "uint8 [batch, height, width, channels] at the training size"},
        "outputs": {
            "mask": "uint8 [batch, height, width]: index into labels.txt",
            "probabilities": "float32 [batch, classes, height, width]",
        },
    },
}


def export_onnx(model: DenseModel, path: Path) -> None:
    """ONNX with the pre- and post-processing inside (opset 17, TorchScript-based exporter:
    torchvision's detectors trace their NMS and box decoding into ONNX ops)."""
    import warnings

    cpu = model.model.to("cpu").eval()
    if model.task == "detection":
        wrapper: nn.Module = _DetectorExport(cpu)
        # noise, not zeros: the trace follows the branches of an image that yields boxes
        gen = torch.Generator().manual_seed(0)
        shape = (model.height, model.width, model.channels)
        example = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        inputs, outputs = ["image"], ["boxes", "scores", "labels"]
        axes = {"boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}}
    else:
        wrapper = _SegmenterExport(cpu)
        example = torch.zeros(1, model.height, model.width, model.channels, dtype=torch.uint8)
        inputs, outputs = ["images"], ["mask", "probabilities"]
        axes = {"images": {0: "batch"}, "mask": {0: "batch"}, "probabilities": {0: "batch"}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on python ints in torchvision's box code: expected, not faults
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper.eval(),
                (example,),
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    finally:
        model.model.to(model.device)


def export_torchscript(model: DenseModel, path: Path) -> None:
    """TorchScript of a segmenter with its preprocessing (uint8 NHWC in, mask and
    probabilities out). Detectors trace no further than their first image list: ONNX only."""
    if model.task != "segmentation":
        raise ValueError("only segmenters export TorchScript")
    import warnings

    cpu = model.model.to("cpu").eval()
    example = torch.zeros(1, model.height, model.width, model.channels, dtype=torch.uint8)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_SegmenterExport(cpu).eval(), example, check_trace=False)
        traced.save(str(path))
    finally:
        model.model.to(model.device)


EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def mask_png(mask: np.ndarray) -> bytes:
    """A class-index mask as a greyscale PNG whose values are the class ids."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def prediction_rows(
    model: DenseModel,
    payload: list[tuple[str, bytes]],
    *,
    resize_mode: str,
    threshold: float,
    max_pixels: int,
    describe: Callable[[str, Exception], str],
    drawn: bool = True,
) -> list[dict[str, Any]]:
    """One row per (name, bytes): boxes mapped back onto the image's own pixels (and
    `stored_box` at the training size), or the class mask as a PNG with per-class areas;
    with `drawn`, the prediction drawn on the stored image (`overlay_png`). An image that
    cannot be read is a row with `error` (`describe` words it)."""
    import base64

    from shared import images, overlays

    rows: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    places: list[tuple[int, tuple[float, float, float, float]]] = []
    for name, data in payload:
        try:
            img = images.decode(data, max_pixels=max_pixels)
            arr = images.prepare(
                img,
                model.width,
                model.height,
                model.channels,
                resize_mode,
                np.random.default_rng(0),
            )
        except Exception as exc:
            rows.append({"filename": name, "error": describe(name, exc)})
            continue
        geometry = images.geometry(img.width, img.height, model.width, model.height, resize_mode)
        places.append((len(rows), geometry))
        rows.append({"filename": name, "width": img.width, "height": img.height})
        arrays.append(arr)
    if not arrays:
        return rows
    batch = np.stack(arrays)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    if model.task == "detection":
        for (row_i, (sx, sy, dx, dy)), arr, boxes in zip(
            places, arrays, model.detect(batch, threshold), strict=True
        ):
            row = rows[row_i]
            w, h = row["width"], row["height"]
            for box in boxes:  # back onto the uploaded image
                x0, y0, x1, y1 = box["box"]
                box["box"] = [
                    round(max(0.0, min(w, (x0 - dx) / sx)), 2),
                    round(max(0.0, min(h, (y0 - dy) / sy)), 2),
                    round(max(0.0, min(w, (x1 - dx) / sx)), 2),
                    round(max(0.0, min(h, (y1 - dy) / sy)), 2),
                ]
                box["stored_box"] = [x0, y0, x1, y1]
            row["boxes"] = boxes
            if drawn:
                stored = np.array([b["stored_box"] for b in boxes], dtype=np.float32)
                row["overlay_png"] = b64(
                    overlays.boxes_png(
                        arr,
                        stored.reshape(-1, 4),
                        np.array([b["class_id"] for b in boxes], dtype=np.int64),
                        model.classes,
                        scores=np.array([b["score"] for b in boxes], dtype=np.float32),
                    )
                )
    else:
        for (row_i, _geometry), arr, mask in zip(places, arrays, model.segment(batch), strict=True):
            row = rows[row_i]
            row["areas"] = class_areas(mask, model.classes)
            row["mask_png"] = b64(mask_png(mask))
            if drawn:
                row["overlay_png"] = b64(overlays.mask_png(arr, mask))
    return rows


def class_areas(mask: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Pixels and share of the image per class present in a mask."""
    counts = np.bincount(mask.reshape(-1), minlength=len(classes))
    total = max(1, int(mask.size))
    return [
        {"label": classes[c], "class_id": c, "pixels": int(n), "fraction": round(n / total, 5)}
        for c, n in enumerate(counts[: len(classes)].tolist())
        if n
    ]


def write_model_dir(
    model: DenseModel,
    folder: Path,
    *,
    name: str,
    resize_mode: str,
    checkpoint: dict[str, Any],
    exports: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """info.json, labels.txt and weights.safetensors of a detector or segmenter, and the
    exports asked for (model.onnx, model.torchscript.pt).

    The weights load into the torchvision builder info.json names, with weights=None,
    num_classes as info.json says (detectors count a background class 0) and
    min_size/max_size the image size."""
    import json

    from safetensors.torch import save_file

    unknown = [e for e in exports if e not in exports_of(model)]
    if unknown:
        raise ValueError(f"a {type_name(model)} model does not export {unknown[0]}")
    files = {e: EXPORT_FILES[e] for e in exports}
    if "onnx" in files:
        export_onnx(model, folder / files["onnx"])
    if "torchscript" in files:
        export_torchscript(model, folder / files["torchscript"])

    state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"), metadata={"format": "digits"})
    (folder / "labels.txt").write_text("\n".join(model.classes) + "\n")
    info = {
        "format": "digits-dense-1",
        "name": name,
        "task": model.task,
        "network": {"kind": "standard", "name": type_name(model)},
        "classes": model.classes,
        "num_classes": len(model.classes) + (1 if model.task == "detection" else 0),
        "background_class": 0 if model.task == "detection" else None,
        "input": {
            "height": model.height,
            "width": model.width,
            "channels": model.channels,
            "resize_mode": resize_mode,
            "scale": "0..1 RGB (grey repeated)"
            + ("" if model.task == "detection" else ", then ImageNet mean and std"),
        },
        "checkpoint": checkpoint,
        "exports": files,
        **({"export_io": EXPORT_IO[model.task]} if files else {}),
        "epoch": model.meta.get("epoch"),
        "step": model.meta.get("step"),
    }
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return info


def type_name(model: DenseModel) -> str:
    """The catalog name the model was built from."""
    return str(model.meta.get("network_name", ""))
