"""DIGITS's layer views for PyTorch: for every layer of one forward pass, its output shape,
parameter count, weight and activation statistics (mean, std, a 20-bin histogram) and a tiled
picture of its activations, plus the first convolution's filters.

DIGITS computed these in `get_layer_visualizations`/`get_layer_statistics` for Caffe blobs;
here they come from forward hooks on the leaf modules. Pure torch: no HTTP, SQL or Celery.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from worker.training.inference import LoadedModel

BINS = 20  # DIGITS's histogram
MAX_CHANNELS = 64  # channels tiled per layer (DIGITS showed the first ones too)
MAX_VALUES = 4096  # values of a flat (fully connected) output drawn as a grid
MAX_SIDE = 256  # the longest side of a tiled PNG
MIN_SIDE = 64  # small tilings (a 1x1 map, a few filters) are enlarged to this


@dataclass
class _Seen:
    """What the hooks kept of one module: its last output, how often it ran."""

    module: nn.Module
    output: torch.Tensor
    calls: int = 1


def stats(values: torch.Tensor) -> dict[str, Any]:
    """Shape, mean, std, min, max and a 20-bin histogram of a tensor's finite values.

    The histogram spans [min, max] (a constant tensor: min +- 0.5) and its counts plus
    `nonfinite` add up to the element count.
    """
    flat = values.detach().float().reshape(-1).cpu().numpy()
    finite = flat[np.isfinite(flat)]
    shape = [int(d) for d in values.shape]
    if finite.size == 0:
        return {
            "shape": shape,
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
            "histogram": {"counts": [0] * BINS, "edges": [0.0] * (BINS + 1)},
            "nonfinite": int(flat.size),
        }
    lo, hi = float(finite.min()), float(finite.max())
    span = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    counts, edges = np.histogram(finite, bins=BINS, range=span)
    return {
        "shape": shape,
        "mean": float(finite.mean(dtype=np.float64)),
        "std": float(finite.std(dtype=np.float64)),
        "min": lo,
        "max": hi,
        "histogram": {
            "counts": [int(c) for c in counts],
            "edges": [float(e) for e in edges],
        },
        "nonfinite": int(flat.size - finite.size),
    }


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _fit(image: Image.Image) -> Image.Image:
    """Enlarge small tilings by a whole factor (crisp pixels); shrink large ones."""
    longest = max(image.size)
    if longest > MAX_SIDE:
        scale = MAX_SIDE / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR)
    factor = max(1, min(math.ceil(MIN_SIDE / max(1, min(image.size))), MAX_SIDE // longest))
    if factor > 1:
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return image


def _grid(tiles: np.ndarray) -> np.ndarray:
    """N x h x w (x 3) tiles in a near-square grid with 1-pixel gaps (NaN)."""
    n, h, w = tiles.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    extra = tiles.shape[3:]
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, *extra), np.nan, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tiles[i]
    return canvas


def _scaled(values: np.ndarray) -> np.ndarray:
    """Min-max over the finite values of the whole tiling (so channels compare), NaN kept."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    lo, hi = float(finite.min()), float(finite.max())
    return (values - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(values), 0.5, np.nan)


def activation_png(output: torch.Tensor) -> bytes | None:
    """The first channels of a C x H x W output (or a flat output as a grid), heat-mapped."""
    data = output.detach().float().cpu().numpy()
    if data.ndim == 3:
        tiles = data[:MAX_CHANNELS]
    elif data.ndim == 1:
        values = data[:MAX_VALUES]
        side = math.ceil(math.sqrt(values.size))
        padded = np.full(side * side, np.nan, dtype=np.float32)
        padded[: values.size] = values
        tiles = padded.reshape(1, side, side)
    else:
        return None
    grid = _scaled(_grid(tiles.astype(np.float32)))
    colours = colormaps["viridis"](np.nan_to_num(grid, nan=0.0), bytes=True)[..., :3]
    colours[~np.isfinite(grid)] = 0  # gaps and padding stay black
    return _png(_fit(Image.fromarray(colours, "RGB")))


def filters_png(weight: torch.Tensor) -> bytes:
    """A convolution's first filters: RGB for 3 input channels, else their mean, in grey."""
    data = weight.detach().float().cpu().numpy()[:MAX_CHANNELS]
    tiles = np.transpose(data, (0, 2, 3, 1)) if data.shape[1] == 3 else data.mean(axis=1)
    grid = np.nan_to_num(_scaled(_grid(tiles)), nan=0.0)
    pixels = (grid * 255).round().astype(np.uint8)
    return _png(_fit(Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")))


def _leaves(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in net.named_modules() if name and not list(m.children())]


def layer_views(model: LoadedModel, image: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The probabilities of one H x W x C uint8 image and every layer's view, one forward pass.

    Hooks are put on the network's leaf modules for this call; give each thread its own model
    (a classify running on the same module would fire them). A module that runs twice (a
    ResNet block's ReLU) has one entry, with its last output and `calls` = 2.
    """
    net = model.classifier.net
    seen: dict[str, _Seen] = {}
    handles = []

    def keep(name: str, module: nn.Module) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            # cloned: a later in-place op (ReLU(inplace=True)) would change it under us
            kept = output.detach()[0].clone()
            if name in seen:
                seen[name].output, seen[name].calls = kept, seen[name].calls + 1
            else:
                seen[name] = _Seen(module, kept)

        return hook

    for name, module in _leaves(net):
        handles.append(module.register_forward_hook(keep(name, module)))
    try:
        batch = torch.from_numpy(np.ascontiguousarray(image[None])).to(model.device)
        with torch.inference_mode():
            probs = model.classifier(batch).float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
    views = []
    first_conv = True
    for name, item in seen.items():
        module = item.module
        weight = getattr(module, "weight", None)
        own = list(module.parameters(recurse=False))
        view: dict[str, Any] = {
            "name": name,
            "type": type(module).__name__,
            "output_shape": [int(d) for d in item.output.shape],
            "param_count": int(sum(p.numel() for p in own)),
            "calls": item.calls,
            "weights": stats(weight) if isinstance(weight, torch.Tensor) else None,
            "activations": stats(item.output),
            "activations_png": activation_png(item.output),
            "filters_png": None,
        }
        if first_conv and isinstance(module, nn.Conv2d) and isinstance(weight, torch.Tensor):
            view["filters_png"] = filters_png(weight)
            first_conv = False
        views.append(view)
    return probs, views


__all__ = ["BINS", "activation_png", "filters_png", "layer_views", "stats"]
