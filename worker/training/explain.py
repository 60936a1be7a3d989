"""Why a model said what it said: class-activation maps (torchcam) and pixel attributions
(Captum) for one image at a time, with the heat map drawn over the image the network saw.

The attribution maths is the libraries'; this module picks the layer, runs them the same way
for every network, and turns their tensors into maps, PNGs and numbers. Pure torch: no HTTP,
SQL or Celery.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, Occlusion
from PIL import Image
from torch import nn
from torchcam.methods import GradCAM, GradCAMpp, LayerCAM

# the locator torchcam itself uses when no layer is given (it is exported from _utils only)
from torchcam.methods._utils import locate_candidate_layer
from torchcam.utils import overlay_mask

from worker.training.inference import LoadedModel, top_k

log = logging.getLogger(__name__)

Method = Literal["gradcam", "gradcampp", "layercam", "integrated_gradients", "occlusion"]
METHODS: tuple[Method, ...] = (
    "gradcam",
    "gradcampp",
    "layercam",
    "integrated_gradients",
    "occlusion",
)
CAM_METHODS: dict[str, type[GradCAM | GradCAMpp | LayerCAM]] = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "layercam": LayerCAM,
}
# one forward + one backward per image for the CAMs; `steps` of them for Integrated
# Gradients; one forward per window position for Occlusion
EXPENSIVE_METHODS = frozenset({"integrated_gradients", "occlusion"})

IG_STEPS = 50  # Captum's default; completeness within 1 % on LeNet and ResNet-18 digits
MAX_IG_STEPS = 512
DISPLAY_MIN_SIDE = 112  # small inputs (28 px digits) are enlarged for the overlay PNG
OVERLAY_ALPHA = 0.5  # weight of the image under the heat map

# The layer each built-in network is explained at, and the container searched (its direct
# children, last first) when that layer's map is 1x1 at this input size. torchcam's locator
# takes the last 4-D output with a spatial size above 1, which is wrong for some: on VGG it
# picks `avgpool`, an AdaptiveAvgPool2d that *upsamples* a 1x1 map to 7x7 on small inputs;
# inside GoogLeNet's blocks it would land on one branch of an Inception block.
TARGET_LAYERS: dict[str, tuple[str, str]] = {
    "lenet": ("2", ""),  # the last convolution: 8x8 at 28 px (the pool after it is 4x4)
    "alexnet": ("features.13", "features"),  # the last ReLU before the final pool
    "googlenet": ("blocks", "blocks"),
    "resnet18": ("layer4", ""),  # 1x1 at 28-32 px: then layer3 (2x2), a coarse map
    "resnet50": ("layer4", ""),
    "mobilenet_v3_small": ("features", "features"),
    "mobilenet_v3_large": ("features", "features"),
    "efficientnet_b0": ("features", "features"),
    "convnext_tiny": ("features", "features"),
    "vgg16": ("features", "features"),
}
NO_SPATIAL_MAP = {"vit_b_16": "a vision transformer has tokens, not a convolutional feature map"}


class ExplainError(ValueError):
    """A request this model cannot be explained for (method, target, options); says why."""


@dataclass(frozen=True)
class TargetLayer:
    """The layer a CAM is computed at, its map size, and why it is not the usual one."""

    name: str
    size: tuple[int, int]
    note: str | None = None


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: the method, the class (None: the top prediction), and method knobs."""

    method: Method = "gradcam"
    target: int | None = None
    top_k: int = 5
    steps: int = IG_STEPS  # Integrated Gradients
    window: int | None = None  # Occlusion: square window side in pixels; None = about 1/7


@dataclass
class Explanation:
    """One image's explanation."""

    top: list[dict[str, Any]]
    target: dict[str, Any]
    method: str
    layer: str | None
    raw: np.ndarray  # CAM: layer resolution, unnormalised; IG/Occlusion: per input pixel, signed
    heat: np.ndarray  # H x W in [0, 1] at the network's input resolution
    overlay_png: bytes
    note: str | None = None
    delta: float | None = None  # IG: sum of attributions minus the output difference


# -- the layer ------------------------------------------------------------------------------


def _output_shapes(net: nn.Module, shape: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    """Every module's output shape for one zero image (the last call of a reused module)."""
    shapes: dict[str, Any] = {}
    handles = []

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)

        return hook

    for name, module in net.named_modules():
        handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            net(torch.zeros((1, *shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _spatial(shape: Any) -> tuple[int, int] | None:
    if shape is None or len(shape) != 4:
        return None
    return int(shape[2]), int(shape[3])


_LAYERS: weakref.WeakKeyDictionary[nn.Module, TargetLayer | str] = weakref.WeakKeyDictionary()
_LAYERS_LOCK = threading.Lock()


def find_target_layer(model: LoadedModel) -> TargetLayer:
    """The layer CAMs use: the network's own entry, or torchcam's locator for custom networks.

    Raises ExplainError when the network has no feature map larger than 1x1.
    """
    net = model.classifier.net
    with _LAYERS_LOCK:
        known = _LAYERS.get(net)
    if known is None:
        known = _find_target_layer(model)
        with _LAYERS_LOCK:
            _LAYERS[net] = known
    if isinstance(known, str):
        raise ExplainError(known)
    return known


def _input_shape(model: LoadedModel) -> tuple[int, int, int]:
    crop = model.classifier.crop
    return (model.channels, crop or model.height, crop or model.width)


def _find_target_layer(model: LoadedModel) -> TargetLayer | str:
    net, shape = model.classifier.net, _input_shape(model)
    kind = model.network.get("kind", "standard")
    name = str(model.network.get("name", ""))
    size_text = f"{shape[2]}x{shape[1]}"
    if kind == "standard" and name in NO_SPATIAL_MAP:
        return f"CAM methods need a spatial feature map: {NO_SPATIAL_MAP[name]}; use " + (
            "integrated_gradients or occlusion"
        )
    if kind == "standard" and name in TARGET_LAYERS:
        preferred, within = TARGET_LAYERS[name]
        shapes = _output_shapes(net, shape, model.device)
        size = _spatial(shapes.get(preferred))
        if size is not None and max(size) > 1:
            return TargetLayer(preferred, size)
        container = net.get_submodule(within) if within else net
        prefix = f"{within}." if within else ""
        for child, _module in reversed(list(container.named_children())):
            size = _spatial(shapes.get(prefix + child))
            if size is not None and max(size) > 1:
                return TargetLayer(
                    prefix + child,
                    size,
                    f"{preferred} is 1x1 at {size_text} input; the map comes from "
                    f"{prefix + child} ({size[1]}x{size[0]}) and is coarse",
                )
        return f"no layer of {name} keeps a feature map larger than 1x1 at {size_text} input"
    found = locate_candidate_layer(net, shape)
    if not found:
        return (
            "this network has no convolutional feature map larger than 1x1 for CAM methods; "
            "use integrated_gradients or occlusion"
        )
    size = _spatial(_output_shapes(net, shape, model.device).get(found)) or (1, 1)
    return TargetLayer(found, size)


# -- maps and pictures ------------------------------------------------------------------------


def _normalised(values: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] (torchcam's normalisation); a flat map becomes zeros."""
    lo, hi = values.amin(), values.amax()
    return (values - lo) / (hi - lo + 1e-8)


def _to_input_size(values: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A map upsampled (bilinear) to the network's input size."""
    if tuple(values.shape) != (height, width):
        values = F.interpolate(
            values[None, None].float(), (height, width), mode="bilinear", align_corners=False
        )[0, 0]
    return values.detach().cpu().numpy().astype(np.float32)


def seen_image(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    """The part of an H x W x C uint8 image the network sees (its centre crop, if any)."""
    c = model.classifier
    if c.crop:
        return image[c.top : c.top + c.crop, c.left : c.left + c.crop]
    return image


def overlay(image: np.ndarray, heat: np.ndarray) -> bytes:
    """The heat map (jet) blended over the image, enlarged for small inputs, as PNG bytes."""
    base = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    scale = max(1, math.ceil(DISPLAY_MIN_SIDE / min(base.size)))
    if scale > 1:
        base = base.resize((base.width * scale, base.height * scale), Image.Resampling.NEAREST)
    mask = Image.fromarray(np.clip(heat, 0.0, 1.0).astype(np.float32), mode="F")
    out = io.BytesIO()
    overlay_mask(base.convert("RGB"), mask, alpha=OVERLAY_ALPHA).save(out, format="PNG")
    return out.getvalue()


# -- methods ----------------------------------------------------------------------------------


def freeze(model: LoadedModel) -> None:
    """No parameter gradients: attributions only need the input's and the layers' gradients."""
    for p in model.classifier.parameters():
        p.requires_grad_(False)


def _target_of(options: ExplainOptions, probs: torch.Tensor, classes: list[str]) -> int:
    if options.target is None:
        return int(probs.argmax())
    if not 0 <= options.target < len(classes):
        raise ExplainError(f"target class {options.target} is not one of 0..{len(classes) - 1}")
    return options.target


def _cam(
    model: LoadedModel, x: torch.Tensor, options: ExplainOptions
) -> tuple[torch.Tensor, torch.Tensor, int, TargetLayer]:
    """(probabilities, raw CAM at the layer, class, layer): one forward and one backward."""
    layer = find_target_layer(model)
    net = model.classifier.net
    method = CAM_METHODS[options.method]
    # the input carries the graph (parameters are frozen); torchcam needs grad mode on
    with torch.enable_grad(), method(net, layer.name, input_shape=tuple(x.shape[1:])) as cam:
        logits = net(x.requires_grad_(True)).float()
        probs = torch.softmax(logits.detach(), dim=1)[0]
        target = _target_of(options, probs, model.classes)
        raw = cam(class_idx=target, scores=logits, normalized=False)[0][0]
    return probs, raw.detach(), target, layer


def _black(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """A black image as the network sees it (mean subtracted): the attribution baseline."""
    h, w, c = model.height, model.width, model.channels
    zeros = torch.zeros((1, h, w, c), dtype=torch.uint8, device=x.device)
    return model.classifier.preprocess(zeros)


def _integrated_gradients(
    model: LoadedModel, x: torch.Tensor, target: int, steps: int
) -> tuple[torch.Tensor, float]:
    """Per-pixel attributions (summed over channels) from a black image, and the gap."""
    if not 2 <= steps <= MAX_IG_STEPS:
        raise ExplainError(f"steps must be from 2 to {MAX_IG_STEPS}")
    ig = IntegratedGradients(model.classifier.net)
    attributions, delta = ig.attribute(
        x,
        baselines=_black(model, x),
        target=target,
        n_steps=steps,
        internal_batch_size=min(steps, 64),
        return_convergence_delta=True,
    )
    return attributions[0].sum(0).detach(), float(delta.reshape(-1)[0])


def _occlusion(
    model: LoadedModel, x: torch.Tensor, target: int, window: int | None
) -> tuple[torch.Tensor, str]:
    """Per-pixel score drop when a black square covers it; the window used, as a note."""
    _, channels, height, width = x.shape
    side = window or max(2, round(min(height, width) / 7))
    if not 1 <= side <= min(height, width):
        raise ExplainError(f"window must be from 1 to {min(height, width)} pixels")
    stride = max(1, side // 2)
    attributions = Occlusion(model.classifier.net).attribute(
        x,
        sliding_window_shapes=(channels, side, side),
        strides=(channels, stride, stride),
        baselines=_black(model, x),
        target=target,
        perturbations_per_eval=32,
    )
    return attributions[0].mean(0).detach(), f"occlusion window {side}x{side}, stride {stride}"


def explain_image(model: LoadedModel, image: np.ndarray, options: ExplainOptions) -> Explanation:
    """Explain one H x W x C uint8 image (already at the model's input size), batch of one.

    Runs in fp32 with gradients on (never inside inference_mode); call `freeze` on the model
    once first, and give each thread its own model: the methods hook its modules.
    """
    if options.method not in METHODS:
        raise ExplainError(f"unknown method {options.method!r}: use one of {', '.join(METHODS)}")
    batch = torch.from_numpy(np.ascontiguousarray(image[None])).to(model.device)
    x = model.classifier.preprocess(batch).detach()
    height, width = int(x.shape[2]), int(x.shape[3])
    note: str | None = None
    delta: float | None = None
    layer: str | None = None
    if options.method in CAM_METHODS:
        probs, raw, target, found = _cam(model, x, options)
        heat_small = _normalised(raw)
        layer, note = found.name, found.note
    else:
        with torch.no_grad():
            probs = torch.softmax(model.classifier.net(x).float(), dim=1)[0]
        target = _target_of(options, probs, model.classes)
        if options.method == "integrated_gradients":
            raw, delta = _integrated_gradients(model, x, target, options.steps)
            heat_small = _normalised(raw.abs())
        else:
            raw, note = _occlusion(model, x, target, options.window)
            heat_small = _normalised(raw.clamp(min=0))
    heat = _to_input_size(heat_small, height, width)
    probs_np = probs.detach().cpu().numpy()[None]
    return Explanation(
        top=top_k(probs_np, model.classes, options.top_k)[0],
        target={
            "index": target,
            "label": model.classes[target],
            "probability": float(probs_np[0, target]),
        },
        method=options.method,
        layer=layer,
        raw=raw.cpu().numpy().astype(np.float32),
        heat=heat,
        overlay_png=overlay(seen_image(model, image), heat),
        note=note,
        delta=delta,
    )


def target_index(raw: str | None, classes: list[str]) -> int | None:
    """A target given as a class label or index (labels win: a class may be named "3")."""
    if raw is None or raw == "":
        return None
    if raw in classes:
        return classes.index(raw)
    if raw.isdigit() and int(raw) < len(classes):
        return int(raw)
    shown = raw if len(raw) <= 40 else raw[:39] + "…"
    raise ExplainError(
        f"target {shown!r} is neither a class label nor an index 0..{len(classes) - 1}"
    )


def as_json(filename: str, item: Explanation, raw: bool = False) -> dict[str, Any]:
    """An explanation as the API answers it (ImageExplanation): the PNG in base64."""
    return {
        "filename": filename,
        "top": item.top,
        "target": item.target,
        "method": item.method,
        "layer": item.layer,
        "map_size": [int(d) for d in item.raw.shape],
        "overlay_png": base64.b64encode(item.overlay_png).decode("ascii"),
        "map": np.round(item.raw.astype(np.float64), 6).tolist() if raw else None,
        "note": item.note,
        "convergence_delta": item.delta,
        "error": None,
    }


def failed_json(filename: str, method: str, error: str) -> dict[str, Any]:
    """An image that could not be explained, in the same shape."""
    return {
        "filename": filename,
        "top": [],
        "target": None,
        "method": method,
        "layer": None,
        "map_size": [0, 0],
        "overlay_png": None,
        "map": None,
        "note": None,
        "convergence_delta": None,
        "error": error,
    }


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum."""
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col)


__all__ = [
    "CAM_METHODS",
    "EXPENSIVE_METHODS",
    "METHODS",
    "TARGET_LAYERS",
    "ExplainError",
    "ExplainOptions",
    "Explanation",
    "TargetLayer",
    "as_json",
    "explain_image",
    "failed_json",
    "find_target_layer",
    "freeze",
    "peak",
    "target_index",
]
