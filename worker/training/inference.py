"""Using a trained model: load a checkpoint, preprocess images exactly as training did,
classify, and export (TorchScript, ONNX, safetensors). Pure torch: no HTTP, SQL or Celery."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import images
from worker.training import checkpoint as ckpt
from worker.training.models import build_model

log = logging.getLogger(__name__)


class InferenceInputError(ValueError):
    """An input image that cannot be used; the message names it."""


class ModelFileError(ValueError):
    """A model file (checkpoint, weights, info.json) that cannot be used; says why."""


class Classifier(nn.Module):
    """A trained network with its preprocessing: raw uint8 N x H x W x C in, probabilities out.

    The same module serves the service's classify and the exports, so they agree exactly.
    """

    def __init__(
        self, net: nn.Module, mean: torch.Tensor | None, crop: int | None, height: int, width: int
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1, 1, 1))
        self.crop = int(crop) if crop else 0
        self.top = (height - self.crop) // 2 if self.crop else 0
        self.left = (width - self.crop) // 2 if self.crop else 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) * (1.0 / 255.0)
        if self.crop:
            x = x[:, :, self.top : self.top + self.crop, self.left : self.left + self.crop]
        return torch.softmax(self.net(x).float(), dim=1)


@dataclass
class LoadedModel:
    """A model ready to classify, with what its inputs must look like."""

    classifier: Classifier
    classes: list[str]
    height: int
    width: int
    channels: int
    network: dict[str, Any]
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N x classes) for uint8 images N x H x W x C."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                out.append(self.classifier(batch.to(self.device)).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def _mean_tensor(
    pre: dict[str, Any], channels: int, height: int, width: int
) -> torch.Tensor | None:
    mean = pre.get("mean")
    if mean is None:
        return None
    mean = torch.as_tensor(mean, dtype=torch.float32)  # C x H x W, or C x 1 x 1 (pixel)
    return mean.reshape(channels, *mean.shape[-2:]).contiguous()


def from_parts(
    network: dict[str, Any],
    classes: list[str],
    state: dict[str, torch.Tensor],
    *,
    height: int,
    width: int,
    channels: int,
    mean: torch.Tensor | None,
    crop: int | None,
    device: str | torch.device = "cpu",
    meta: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build the network, load its weights strictly, and wrap it with its preprocessing."""
    in_h, in_w = (crop, crop) if crop else (height, width)
    net = build_model(network, len(classes), channels, in_h, in_w)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(f"the weights do not fit the declared network: {first}") from exc
    net.eval()
    dev = torch.device(device)
    classifier = Classifier(net, mean, crop, height, width).to(dev).eval()
    return LoadedModel(
        classifier, list(classes), height, width, channels, dict(network), dev, meta or {}
    )


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A training checkpoint as a classifier (loaded with weights_only=True)."""
    data = ckpt.load(Path(path))
    height, width, channels = (int(v) for v in data["image_shape"])
    pre = data.get("preprocess") or {}
    return from_parts(
        data["network"],
        list(data["classes"]),
        ckpt.model_state(data),
        height=height,
        width=width,
        channels=channels,
        mean=_mean_tensor(pre, channels, height, width),
        crop=pre.get("crop_size"),
        device=device,
        meta={
            "epoch": data.get("epoch"),
            "step": data.get("step"),
            "metrics": dict(data.get("metrics") or {}),
            "use_mean": pre.get("use_mean"),
            "hyper": data.get("hyper"),
        },
    )


ALLOWED_FORMATS = images.ALLOWED_FORMATS


def prepare_image(
    data: bytes,
    name: str,
    *,
    width: int,
    height: int,
    channels: int,
    resize_mode: str,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> np.ndarray:
    """Decode one uploaded image and give it the dataset's size, channels and resize mode.

    The same rules as dataset import (shared.images): same formats, limits and messages.
    """
    try:
        img = images.decode(data, max_pixels=max_pixels)
        rng = np.random.default_rng(seed)
        return images.prepare(img, width, height, channels, resize_mode, rng)
    except images.ImageError as exc:
        raise InferenceInputError(f"{name}: {exc.message}") from None


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[list[dict[str, Any]]]:
    """The k most probable classes of each row."""
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [
            {"index": int(i), "label": classes[int(i)], "probability": float(row[int(i)])}
            for i in idx
        ]
        for row, idx in zip(probs, order, strict=True)
    ]


# -- export -------------------------------------------------------------------------------


def export_torchscript(model: LoadedModel, path: Path) -> None:
    """TorchScript of the classifier with its preprocessing (uint8 NHWC in, probabilities out)."""
    cpu = model.classifier.to("cpu").eval()
    example = torch.zeros(1, model.height, model.width, model.channels, dtype=torch.uint8)
    with torch.inference_mode():
        traced = torch.jit.trace(cpu, example, check_trace=False)
    traced.save(str(path))
    model.classifier.to(model.device)


def export_onnx(model: LoadedModel, path: Path) -> None:
    """ONNX of the classifier with its preprocessing and a dynamic batch dimension."""
    cpu = model.classifier.to("cpu").eval()
    example = torch.zeros(2, model.height, model.width, model.channels, dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            cpu,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    model.classifier.to(model.device)


def save_safetensors(model: LoadedModel, path: Path) -> None:
    """The network's weights as safetensors (no code, no pickle)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.classifier.net.state_dict().items()}
    save_file(state, str(path), metadata={"format": "digits"})


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file; anything else is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{Path(path).name} is not a valid safetensors file: {exc}") from exc


def mean_array(model: LoadedModel) -> np.ndarray | None:
    """The mean the model subtracts, C x H x W float32, or None."""
    mean = model.classifier.mean
    if mean.numel() == 1 and float(mean.abs().sum()) == 0.0:
        return None
    return mean.detach().cpu().numpy().astype(np.float32)


def info_json(
    model: LoadedModel,
    *,
    name: str,
    resize_mode: str,
    checkpoint: dict[str, Any],
    exports: dict[str, str],
) -> dict[str, Any]:
    """The DIGITS-style description of a downloaded model."""
    import torchvision

    from shared import __version__ as digits_version

    return {
        "format": "digits-model/1",
        "name": name,
        "framework": {
            "name": "pytorch",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "digits": digits_version,
        },
        "network": model.network,
        "input": {
            "width": model.width,
            "height": model.height,
            "channels": model.channels,
            "resize_mode": resize_mode,
            "crop_size": model.classifier.crop or None,
            "dtype": "uint8",
            "layout": "NHWC",
            "use_mean": model.meta.get("use_mean")
            or ("image" if mean_array(model) is not None else "none"),
        },
        "classes": model.classes,
        "checkpoint": checkpoint,
        "metrics": {k: float(v) for k, v in (model.meta.get("metrics") or {}).items()},
        "files": {
            "weights": "weights.safetensors",
            "labels": "labels.txt",
            "mean": "mean.npy" if mean_array(model) is not None else None,
            **exports,
        },
    }


REQUIRED_INFO = ("format", "network", "input", "classes", "files")


def load_model_dir(
    folder: Path, device: str | torch.device = "cpu"
) -> tuple[LoadedModel, dict[str, Any]]:
    """A model from an unpacked archive (info.json, weights.safetensors, labels, mean)."""
    info_path = folder / "info.json"
    if not info_path.is_file():
        raise ModelFileError("info.json is missing")
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"info.json is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ModelFileError("info.json must hold an object")
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        raise ModelFileError(f"info.json is missing {', '.join(missing)}")
    inp = info["input"]
    try:
        height, width, channels = int(inp["height"]), int(inp["width"]), int(inp["channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError("info.json input needs width, height and channels") from exc
    classes = info["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise ModelFileError("info.json classes must list at least 2 class names")
    weights_name = (info.get("files") or {}).get("weights") or "weights.safetensors"
    weights = folder / Path(weights_name).name
    if not weights.is_file():
        raise ModelFileError(f"the weights file {weights_name!r} is missing")
    state = load_safetensors(weights)
    mean = None
    mean_name = (info.get("files") or {}).get("mean")
    if mean_name:
        mean_path = folder / Path(mean_name).name
        if not mean_path.is_file():
            raise ModelFileError(f"the mean file {mean_name!r} is missing")
        try:
            mean_np = np.load(mean_path, allow_pickle=False)
        except ValueError as exc:
            raise ModelFileError(f"{mean_name} is not a plain numpy array") from exc
        mean = torch.from_numpy(mean_np.astype(np.float32))
    network = info["network"]
    if not isinstance(network, dict) or network.get("kind") not in ("standard", "custom"):
        raise ModelFileError("info.json network must be a standard or custom network")
    try:
        model = from_parts(
            network,
            [str(c) for c in classes],
            state,
            height=height,
            width=width,
            channels=channels,
            mean=mean,
            crop=inp.get("crop_size"),
            device=device,
            meta={"metrics": info.get("metrics") or {}, "use_mean": inp.get("use_mean")},
        )
    except ModelFileError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"the network in info.json cannot be built: {exc}") from exc
    return model, info
