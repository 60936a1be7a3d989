"""Networks: DIGITS's LeNet, AlexNet, GoogLeNet; torchvision classifiers; custom layer lists."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from pydantic import TypeAdapter
from torch import nn

from shared import networks
from shared.networks import CATALOG, Layer, check_custom, check_standard

log = logging.getLogger(__name__)

SMALL_STEM_BELOW = 64  # inputs whose shorter side is under this get a stride-1 3x3 stem

_TORCHVISION = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "efficientnet_b0": "efficientnet_b0",
    "convnext_tiny": "convnext_tiny",
    "vgg16": "vgg16_bn",
    "vit_b_16": "vit_b_16",
}

_LAYERS = TypeAdapter(list[Layer])


def _out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet(nn.Sequential):
    """DIGITS's LeNet: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, fc 500, relu, fc classes."""

    def __init__(self, num_classes: int, channels: int, height: int, width: int) -> None:
        # Unpadded (DIGITS's exact net) from 16 px; smaller inputs get "same" padding instead.
        pad = 0 if min(height, width) >= 16 else 2
        h, w = height, width
        for _ in range(2):
            h, w = _out(h, 5, 1, pad) // 2, _out(w, 5, 1, pad) // 2
        super().__init__(
            nn.Conv2d(channels, 20, 5, padding=pad),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=pad),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(50 * h * w, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )


class AlexNet(nn.Module):
    """DIGITS's AlexNet (grouped convs, LRN); 3x3 stride-1 stem for small inputs."""

    def __init__(self, num_classes: int, channels: int, height: int, width: int) -> None:
        super().__init__()
        if min(height, width) < SMALL_STEM_BELOW:
            stem = nn.Conv2d(channels, 96, 3, stride=1, padding=1)
        else:
            stem = nn.Conv2d(channels, 96, 11, stride=4, padding=2)
        self.features = nn.Sequential(
            stem,
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores."""
        return self.classifier(self.avgpool(self.features(x)))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """An Inception v1 block: 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = _conv_bn(cin, c1, 1)
        self.b2 = nn.Sequential(_conv_bn(cin, c3r, 1), _conv_bn(c3r, c3, 3, padding=1))
        self.b3 = nn.Sequential(_conv_bn(cin, c5r, 1), _conv_bn(c5r, c5, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), _conv_bn(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the branches along channels."""
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 (batch-normed convs, no auxiliary heads); small stem under 64 px."""

    def __init__(self, num_classes: int, channels: int, height: int, width: int) -> None:
        super().__init__()
        if min(height, width) < SMALL_STEM_BELOW:
            self.stem = nn.Sequential(
                _conv_bn(channels, 64, 3, padding=1),
                _conv_bn(64, 64, 1),
                _conv_bn(64, 192, 3, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                _conv_bn(channels, 64, 7, stride=2, padding=3),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                _conv_bn(64, 64, 1),
                _conv_bn(64, 192, 3, padding=1),
                nn.MaxPool2d(3, 2, ceil_mode=True),
            )
        self.blocks = nn.Sequential(
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Inception(480, 192, 96, 208, 16, 48, 64),
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores."""
        return self.head(self.blocks(self.stem(x)))


def _first_conv_to(model: nn.Module, channels: int) -> None:
    """Replace the first Conv2d by one taking `channels` inputs (same geometry)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == channels:
                return
            # torch types these attributes tuple[int, ...] but the constructor's parameters
            # int | tuple[int, int]; a Conv2d's are always 2-tuples
            new = nn.Conv2d(
                channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=1,
                bias=module.bias is not None,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ValueError("the network has no convolution to adapt to the input channels")


def _torchvision(name: str, num_classes: int, channels: int, height: int) -> nn.Module:
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name == "vit_b_16":
        kwargs["image_size"] = height
    model: nn.Module = getattr(torchvision.models, _TORCHVISION[name])(**kwargs)
    if channels != 3:
        _first_conv_to(model, channels)
    return model


def build_custom(
    layers: list[Any], num_classes: int, channels: int, height: int, width: int
) -> nn.Sequential:
    """Build a custom network from its (validated) layer list; no user code runs."""
    specs = _LAYERS.validate_python(
        [layer.model_dump() if hasattr(layer, "model_dump") else layer for layer in layers]
    )
    check_custom(specs, channels, height, width, num_classes)
    shape: tuple[int, ...] = (channels, height, width)
    modules: list[nn.Module] = []
    for spec in specs:
        module: nn.Module
        # isinstance, not the `type` tag, so the checker knows each branch's fields
        if isinstance(spec, networks.Conv2d):
            pad = (spec.kernel_size - 1) // 2 if spec.padding == "same" else spec.padding
            stride = 1 if spec.padding == "same" else spec.stride
            module = nn.Conv2d(
                shape[0],
                spec.out_channels,
                spec.kernel_size,
                stride=stride,
                padding=pad,
                groups=spec.groups,
                bias=spec.bias,
            )
            shape = (
                spec.out_channels,
                _out(shape[1], spec.kernel_size, stride, pad),
                _out(shape[2], spec.kernel_size, stride, pad),
            )
        elif isinstance(spec, networks.Pool2d):
            stride = spec.stride or spec.kernel_size
            cls = nn.MaxPool2d if spec.type == "maxpool2d" else nn.AvgPool2d
            module = cls(spec.kernel_size, stride=stride, padding=spec.padding)
            shape = (
                shape[0],
                _out(shape[1], spec.kernel_size, stride, spec.padding),
                _out(shape[2], spec.kernel_size, stride, spec.padding),
            )
        elif isinstance(spec, networks.AdaptiveAvgPool2d):
            module = nn.AdaptiveAvgPool2d(spec.output_size)
            shape = (shape[0], spec.output_size, spec.output_size)
        elif isinstance(spec, networks.BatchNorm):
            if spec.type == "batchnorm2d":
                module = nn.BatchNorm2d(shape[0])
            else:
                module = nn.BatchNorm1d(shape[0])
        elif isinstance(spec, networks.Flatten):
            module = nn.Flatten()
            size = 1
            for d in shape:
                size *= d
            shape = (size,)
        elif isinstance(spec, networks.Linear):
            out = spec.out_features or num_classes
            module = nn.Linear(shape[0], out, bias=spec.bias)
            shape = (out,)
        elif isinstance(spec, networks.Dropout):
            module = nn.Dropout(spec.p) if spec.type == "dropout" else nn.Dropout2d(spec.p)
        elif spec.type == "leaky_relu":  # the rest are activations
            module = nn.LeakyReLU(spec.negative_slope)
        else:
            module = {
                "relu": nn.ReLU,
                "gelu": nn.GELU,
                "sigmoid": nn.Sigmoid,
                "tanh": nn.Tanh,
                "silu": nn.SiLU,
                "elu": nn.ELU,
            }[spec.type]()
        modules.append(module)
    return nn.Sequential(*modules)


def build_model(
    network: Mapping[str, Any], num_classes: int, channels: int, height: int, width: int
) -> nn.Module:
    """The network of a job's request, with random weights, for the given input shape."""
    kind = network.get("kind", "standard")
    if kind == "custom":
        return build_custom(list(network["layers"]), num_classes, channels, height, width)
    if kind != "standard":
        raise ValueError(f"cannot build a {kind!r} network here; resolve it to its source first")
    name = str(network["name"])
    if name not in CATALOG:
        raise ValueError(f"unknown network {name!r}")
    if CATALOG[name].task != "classification":
        raise ValueError(f"{name} is a {CATALOG[name].task} network, not a classifier")
    check_standard(name, channels, height, width)
    if name == "lenet":
        return LeNet(num_classes, channels, height, width)
    if name == "alexnet":
        return AlexNet(num_classes, channels, height, width)
    if name == "googlenet":
        return GoogLeNet(num_classes, channels, height, width)
    return _torchvision(name, num_classes, channels, height)


def has_conv(model: nn.Module) -> bool:
    """Whether the model convolves (and so gains from channels_last on CUDA)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def load_init_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the tensors whose names and shapes match into model; return the skipped keys.

    Keys the model lacks, and those whose shapes differ (a classifier for another number of
    classes), are skipped; the model keeps its fresh initialisation for them.
    """
    own = model.state_dict()
    load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and tuple(target.shape) == tuple(value.shape):
            load[key] = value
        else:
            skipped.append(key)
    missing = [key for key in own if key not in load and key not in state_dict]
    skipped.extend(missing)
    model.load_state_dict(load, strict=False)
    return skipped
