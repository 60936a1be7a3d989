"""Using a trained model: load a checkpoint, preprocess images exactly as training did,
classify, and export (TorchScript, ONNX, safetensors). Pure torch: no HTTP, SQL or Celery."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from shared import images
from shared.schemas.models import (
    INFO_FORMAT,
    INFO_MAX_BYTES,
    InvalidModelInfo,
    ModelInfo,
    ModelInput,
    parse_model_info,
    validation_message,
)
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

    mean: torch.Tensor  # a registered buffer (nn.Module types those as `Tensor | Module`)

    def __init__(
        self, net: nn.Module, mean: torch.Tensor | None, crop: int | None, height: int, width: int
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1, 1, 1))
        self.crop = int(crop) if crop else 0
        self.top = (height - self.crop) // 2 if self.crop else 0
        self.left = (width - self.crop) // 2 if self.crop else 0

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """What the network sees: float N x C x H x W, mean subtracted, scaled, cropped."""
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) * (1.0 / 255.0)
        if self.crop:
            x = x[:, :, self.top : self.top + self.crop, self.left : self.left + self.crop]
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(self.preprocess(images)).float(), dim=1)


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
    """Build the network, load its weights strictly, and wrap it with its preprocessing.

    The weights' names and shapes are checked against the network built on the meta device
    first, so weights that do not fit never cost the memory of the network they would need.
    """
    in_h, in_w = (crop, crop) if crop else (height, width)
    found: dict[str, TensorSpec] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"the weights hold a {type(value).__name__}, not a tensor")
        found[key] = (tuple(value.shape), value.is_floating_point())
    check_weights_fit(expected_state(network, len(classes), channels, in_h, in_w), found)
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
    try:
        data = ckpt.load(Path(path))
        height, width, channels = (int(v) for v in data["image_shape"])
        pre = data.get("preprocess") or {}
        network, classes = dict(data["network"]), [str(c) for c in data["classes"]]
        state = ckpt.model_state(data)
    except FileNotFoundError:
        raise ModelFileError("the checkpoint file is missing") from None
    except Exception as exc:
        # torch.load of a damaged file raises whatever its unpickler or zip reader meets
        # (UnpicklingError, RuntimeError, EOFError, ...): all mean the same to the caller.
        log.warning("unreadable checkpoint %s: %s", Path(path).name, type(exc).__name__)
        raise ModelFileError(
            "the checkpoint cannot be read (damaged or not a checkpoint)"
        ) from None
    return from_parts(
        network,
        classes,
        state,
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

    name = Path(path).name
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{name} is not a valid safetensors file: {reason}") from None
    except OSError:  # its message holds the server path
        raise ModelFileError(f"{name} cannot be read") from None


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
) -> ModelInfo:
    """The DIGITS-style description of a model folder, validated like an upload's info.json."""
    import torchvision

    from shared import __version__ as digits_version

    has_mean = mean_array(model) is not None
    # a diverged run's NaN loss has no JSON form: only finite numbers are described
    metrics = {
        str(k): float(v)
        for k, v in (model.meta.get("metrics") or {}).items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    doc = {
        "format": INFO_FORMAT,
        "name": name[:200],
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
            "use_mean": model.meta.get("use_mean") or ("image" if has_mean else "none"),
        },
        "classes": model.classes,
        "checkpoint": checkpoint,
        "metrics": metrics,
        "files": {
            "weights": "weights.safetensors",
            "labels": "labels.txt",
            "mean": "mean.npy" if has_mean else None,
            **exports,
        },
    }
    try:
        return ModelInfo.model_validate(doc)
    except ValidationError as exc:
        raise ModelFileError(
            f"this model cannot be written as {INFO_FORMAT}: {validation_message(exc)}"
        ) from None


# -- uploaded model folders ---------------------------------------------------------------
#
# An upload is checked in order of cost: info.json's size, depth and schema; the weights
# file's size and header (shapes only, no tensor read) against the declared network built on
# the meta device; the mean's .npy header. Only a folder that passes all of them is loaded.

TensorSpec = tuple[tuple[int, ...], bool]
"""A tensor's shape, and whether it is floating point."""

SAFETENSORS_MAX_HEADER = 4 * 1024**2  # ResNet-50's header is 30 kB
_SAFETENSORS_FLOAT = {"F16": True, "BF16": True, "F32": True, "F64": True}
_SAFETENSORS_INT = {"I64": False, "I32": False, "I16": False, "I8": False, "U8": False}
_SAFETENSORS_DTYPES = {**_SAFETENSORS_FLOAT, **_SAFETENSORS_INT}


@dataclass(frozen=True)
class ModelLimits:
    """How large the files of an uploaded model may be."""

    weights_bytes: int = 1024**3
    info_bytes: int = INFO_MAX_BYTES


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "a scalar"


def _key(key: str) -> str:
    return repr(key[:80])


def expected_state(
    network: dict[str, Any], num_classes: int, channels: int, height: int, width: int
) -> dict[str, TensorSpec]:
    """The state-dict names and shapes of a network, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            net = build_model(network, num_classes, channels, height, width)
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelFileError(f"the network cannot be built: {reason}") from None
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in net.state_dict().items()}


def check_weights_fit(expected: dict[str, TensorSpec], found: dict[str, TensorSpec]) -> None:
    """Refuse weights whose names, shapes or kinds differ from the network's, naming them."""
    problems = []
    for key, (shape, floating) in expected.items():
        if key not in found:
            continue
        got, got_floating = found[key]
        if got != shape:
            problems.append(
                f"{_key(key)} is {_shape(got)} in the weights but {_shape(shape)} in the network"
            )
        elif got_floating != floating:
            kind = "floating point" if floating else "integer"
            problems.append(f"{_key(key)} must be {kind}")
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        names = ", ".join(_key(k) for k in missing[:3])
        problems.append(
            f"{len(missing)} tensors are missing ({names}{', ...' if len(missing) > 3 else ''})"
        )
    if unexpected:
        names = ", ".join(_key(k) for k in unexpected[:3])
        problems.append(
            f"{len(unexpected)} tensors are not in the network "
            f"({names}{', ...' if len(unexpected) > 3 else ''})"
        )
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ModelFileError(
            "the weights do not fit the declared network: " + "; ".join(problems[:4]) + more
        )


def _model_file(folder: Path, name: str, role: str) -> Path:
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise ModelFileError(f"the {role} file {name!r} is missing")
    return path


def read_model_info(folder: Path, max_bytes: int = INFO_MAX_BYTES) -> ModelInfo:
    """The folder's info.json, bounded and validated (the file is not read when too large)."""
    path = _model_file(folder, "info.json", "info.json")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(f"info.json is {size:,} bytes; at most {max_bytes:,} are accepted")
    try:
        return parse_model_info(path.read_bytes(), max_bytes=max_bytes)
    except InvalidModelInfo as exc:
        raise ModelFileError(str(exc)) from None


def inspect_safetensors(path: Path, max_bytes: int) -> dict[str, TensorSpec]:
    """Each tensor's shape and kind from a safetensors header; no tensor data is read."""
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(
            f"{path.name} is {size / 1024**2:,.1f} MiB, larger than the "
            f"{max_bytes / 1024**2:,.0f} MiB an uploaded model may hold"
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
    header = int.from_bytes(head, "little") if len(head) == 8 else -1
    if header < 2 or header > min(SAFETENSORS_MAX_HEADER, size - 8):
        raise ModelFileError(f"{path.name} is not a safetensors file (bad header length)")
    specs: dict[str, TensorSpec] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                part = f.get_slice(key)
                dtype = part.get_dtype()
                if dtype not in _SAFETENSORS_DTYPES:
                    raise ModelFileError(
                        f"{path.name}: {_key(key)} has the unsupported dtype {dtype}"
                    )
                specs[key] = (tuple(int(d) for d in part.get_shape()), _SAFETENSORS_DTYPES[dtype])
    except SafetensorError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise ModelFileError(f"{path.name} is not a valid safetensors file: {reason}") from None
    except OSError:
        raise ModelFileError(f"{path.name} cannot be read") from None
    return specs


def _inspect_mean(path: Path, inp: ModelInput) -> None:
    """Refuse a mean whose .npy header is not C x H x W (or C x 1 x 1) of the input."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _order, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _order, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError):
        raise ModelFileError(f"{path.name} is not a plain numpy array") from None
    c, h, w = inp.channels, inp.height, inp.width
    if tuple(shape) not in ((c, h, w), (c, 1, 1)):
        raise ModelFileError(
            f"{path.name} is {_shape(tuple(shape))}; the input needs {c}x{h}x{w} or {c}x1x1"
        )
    if dtype.kind not in "fu":
        raise ModelFileError(f"{path.name} must hold numbers, not {dtype.kind!r} values")


def validate_model_dir(folder: Path, limits: ModelLimits = ModelLimits()) -> ModelInfo:
    """Check an unpacked model folder without building its network or reading its weights."""
    info = read_model_info(folder, limits.info_bytes)
    inp = info.input
    found = inspect_safetensors(
        _model_file(folder, info.files.weights, "weights"), limits.weights_bytes
    )
    side_h, side_w = (inp.crop_size, inp.crop_size) if inp.crop_size else (inp.height, inp.width)
    network = info.network.model_dump(mode="json")
    check_weights_fit(
        expected_state(network, len(info.classes), inp.channels, side_h, side_w), found
    )
    if info.files.mean:
        _inspect_mean(_model_file(folder, info.files.mean, "mean"), inp)
    return info


def load_model_dir(
    folder: Path, device: str | torch.device = "cpu", limits: ModelLimits = ModelLimits()
) -> tuple[LoadedModel, ModelInfo]:
    """A model from an unpacked archive (info.json, weights.safetensors, mean), validated first."""
    info = validate_model_dir(folder, limits)
    inp = info.input
    state = load_safetensors(folder / info.files.weights)
    mean = None
    if info.files.mean:
        try:
            mean_np = np.load(folder / info.files.mean, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise ModelFileError(f"{info.files.mean} is not a plain numpy array") from None
        mean = torch.from_numpy(mean_np.astype(np.float32))
    model = from_parts(
        info.network.model_dump(mode="json"),
        list(info.classes),
        state,
        height=inp.height,
        width=inp.width,
        channels=inp.channels,
        mean=mean,
        crop=inp.crop_size,
        device=device,
        meta={"metrics": dict(info.metrics), "use_mean": inp.use_mean},
    )
    return model, info
