"""The networks a job may use, and validation of custom networks (pure Python, no torch).

A custom network is a declarative list of layers; the API checks it with the dataset's input
shape before queueing, so a bad one is refused with the layer named, and no user code runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class NetworkInfo:
    """One entry of the catalog."""

    name: str
    family: Literal["digits", "torchvision"]
    description: str
    default_batch_size: int
    min_size: int  # smallest input side the network accepts
    task: Literal["classification", "detection", "segmentation"] = "classification"
    # detection and segmentation: the classification network whose weights fit the backbone
    backbone: str | None = None


CLASSIFIER_EXPORTS = ("torchscript", "onnx", "onnx-int8", "onnx-fp16")
# torchvision's Faster R-CNN traces its RoI pooling into ONNX shapes that fail (onnxruntime:
# "invalid expand shape") on images whose proposals leave a pyramid level empty, and SSDlite's
# traced graph scores differently from the model; FCOS and RetinaNet export and match
ONNX_DETECTORS = ("fcos_resnet18_fpn", "fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2")


def exports_of(name: str | None) -> tuple[str, ...]:
    """What a trained model of this network can be downloaded as, besides its weights."""
    info = CATALOG.get(name or "")
    if info is None or info.task == "classification":
        return CLASSIFIER_EXPORTS
    if info.task == "segmentation":
        return ("onnx", "torchscript")
    return ("onnx",) if info.name in ONNX_DETECTORS else ()


CATALOG: dict[str, NetworkInfo] = {
    n.name: n
    for n in [
        NetworkInfo(
            "lenet",
            "digits",
            "LeNet-5 (DIGITS's standard network for small images "
            "such as MNIST), adapted to the input size and channels",
            64,
            8,
        ),
        NetworkInfo(
            "alexnet",
            "digits",
            "AlexNet (DIGITS's default), with a smaller stem for inputs under 64 px",
            128,
            16,
        ),
        NetworkInfo(
            "googlenet",
            "digits",
            "GoogLeNet / Inception v1, with a smaller stem for inputs under 64 px",
            32,
            16,
        ),
        NetworkInfo("resnet18", "torchvision", "ResNet-18 (torchvision), random weights", 128, 16),
        NetworkInfo("resnet50", "torchvision", "ResNet-50 (torchvision), random weights", 64, 16),
        NetworkInfo(
            "mobilenet_v3_small", "torchvision", "MobileNetV3-Small (torchvision)", 128, 16
        ),
        NetworkInfo(
            "mobilenet_v3_large", "torchvision", "MobileNetV3-Large (torchvision)", 128, 16
        ),
        NetworkInfo("efficientnet_b0", "torchvision", "EfficientNet-B0 (torchvision)", 64, 16),
        NetworkInfo("convnext_tiny", "torchvision", "ConvNeXt-Tiny (torchvision)", 64, 32),
        NetworkInfo("vgg16", "torchvision", "VGG-16 with batch norm (torchvision)", 64, 32),
        NetworkInfo(
            "vit_b_16",
            "torchvision",
            "ViT-B/16 (torchvision); image sides must be multiples of 16",
            32,
            16,
        ),
        # detection and segmentation (torchvision's builders, never with downloaded weights)
        NetworkInfo(
            "fcos_resnet18_fpn",
            "torchvision",
            "FCOS, anchor-free, on a ResNet-18 FPN backbone: the detector that learns fastest "
            "from scratch (the shapes test's)",
            16,
            32,
            "detection",
            "resnet18",
        ),
        NetworkInfo(
            "fcos_resnet50_fpn",
            "torchvision",
            "FCOS on a ResNet-50 FPN",
            8,
            32,
            "detection",
            "resnet50",
        ),
        NetworkInfo(
            "retinanet_resnet50_fpn_v2",
            "torchvision",
            "RetinaNet v2 on a ResNet-50 FPN",
            8,
            32,
            "detection",
            "resnet50",
        ),
        NetworkInfo(
            "fasterrcnn_mobilenet_v3_large_fpn",
            "torchvision",
            "Faster R-CNN on a MobileNetV3-Large FPN",
            8,
            32,
            "detection",
            "mobilenet_v3_large",
        ),
        NetworkInfo(
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "torchvision",
            "Faster R-CNN on a MobileNetV3-Large FPN, for small images (fewer proposals)",
            8,
            32,
            "detection",
            "mobilenet_v3_large",
        ),
        NetworkInfo(
            "ssdlite320_mobilenet_v3_large",
            "torchvision",
            "SSDlite on MobileNetV3-Large; images are scaled to 320x320 inside the model",
            32,
            32,
            "detection",
            None,  # its backbone splits and halves MobileNet's tail: no classifier fits it
        ),
        NetworkInfo(
            "lraspp_mobilenet_v3_large",
            "torchvision",
            "LR-ASPP on MobileNetV3-Large: light and quick to train",
            16,
            32,
            "segmentation",
            "mobilenet_v3_large",
        ),
        NetworkInfo(
            "deeplabv3_mobilenet_v3_large",
            "torchvision",
            "DeepLabV3 on MobileNetV3-Large",
            16,
            32,
            "segmentation",
            "mobilenet_v3_large",
        ),
        NetworkInfo(
            "fcn_resnet50", "torchvision", "FCN on a ResNet-50", 8, 32, "segmentation", "resnet50"
        ),
    ]
}

# the metrics a task's validation reports, the first the default for best_metric and early
# stopping
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("val.accuracy", "val.loss", "val.top5"),
    "detection": ("val.map", "val.map_50", "val.map_75"),
    "segmentation": ("val.miou", "val.loss", "val.pixel_accuracy"),
}


def network_task(name: str) -> str:
    """The task a standard network does (classification for names outside the catalog)."""
    info = CATALOG.get(name)
    return info.task if info else "classification"


# Recipes that train well without tuning (a user who sets only the epochs gets a good model):
# one-cycle schedules, as fastai's and torchvision's reference recipes use. DIGITS's own
# defaults (SGD at 0.01, step policy, weight decay lr/100) stay the API's defaults; a job
# gets these with `"recipe": "recommended"`.
_SGD_ONECYCLE = {"solver": "sgd", "momentum": 0.9, "lr_policy": "onecycle", "weight_decay": 5e-4}
_ADAMW_ONECYCLE = {"solver": "adamw", "lr_policy": "onecycle"}
RECOMMENDED: dict[str, dict[str, object]] = {
    "lenet": {**_SGD_ONECYCLE, "learning_rate": 0.05, "batch_size": 64},
    "alexnet": {**_SGD_ONECYCLE, "learning_rate": 0.02, "batch_size": 128},
    "googlenet": {**_SGD_ONECYCLE, "learning_rate": 0.05, "batch_size": 64},
    "resnet18": {**_SGD_ONECYCLE, "learning_rate": 0.1, "batch_size": 128},
    "resnet50": {**_SGD_ONECYCLE, "learning_rate": 0.1, "batch_size": 64},
    "vgg16": {**_SGD_ONECYCLE, "learning_rate": 0.02, "batch_size": 64},
    "mobilenet_v3_small": {**_ADAMW_ONECYCLE, "learning_rate": 2e-3, "weight_decay": 0.01},
    "mobilenet_v3_large": {**_ADAMW_ONECYCLE, "learning_rate": 2e-3, "weight_decay": 0.01},
    "efficientnet_b0": {**_ADAMW_ONECYCLE, "learning_rate": 2e-3, "weight_decay": 0.01},
    "convnext_tiny": {**_ADAMW_ONECYCLE, "learning_rate": 1e-3, "weight_decay": 0.05},
    "vit_b_16": {**_ADAMW_ONECYCLE, "learning_rate": 5e-4, "weight_decay": 0.05},
    # detectors and segmenters from scratch: AdamW with a one-cycle warm-up (the shapes:
    # FCOS at 1e-3 reached mAP@0.5 0.9 in 155 CPU seconds at 64 px, LR-ASPP at 3e-3 mIoU 0.86
    # in 56 s)
    **{
        name: {
            **_ADAMW_ONECYCLE,
            "learning_rate": 1e-3 if info.task == "detection" else 3e-3,
            "weight_decay": 1e-4,
            "aug_flip": "fliplr",
        }
        for name, info in CATALOG.items()
        if info.task != "classification"
    },
}


def recommended(name: str) -> dict[str, object]:
    """The recommended recipe of a standard network (its hyperparameters)."""
    return dict(RECOMMENDED.get(name, {}))


NetworkName = Literal[
    "lenet",
    "alexnet",
    "googlenet",
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vgg16",
    "vit_b_16",
    "fcos_resnet18_fpn",
    "fcos_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite320_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50",
]


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Conv2d(_Layer):
    """2-D convolution."""

    type: Literal["conv2d"]
    out_channels: int = Field(ge=1, le=8192)
    kernel_size: int = Field(ge=1, le=31)
    stride: int = Field(default=1, ge=1, le=16)
    padding: Annotated[int, Field(ge=0, le=64)] | Literal["same"] = 0
    groups: int = Field(default=1, ge=1)
    bias: bool = True


class Pool2d(_Layer):
    """Max or average pooling."""

    type: Literal["maxpool2d", "avgpool2d"]
    kernel_size: int = Field(ge=1, le=31)
    stride: int | None = Field(default=None, ge=1, le=31)
    padding: int = Field(default=0, ge=0)


class AdaptiveAvgPool2d(_Layer):
    """Average pooling to a fixed output size."""

    type: Literal["adaptive_avgpool2d"]
    output_size: int = Field(default=1, ge=1, le=64)


class BatchNorm(_Layer):
    """Batch normalisation (2-D on feature maps, 1-D on vectors); features are inferred."""

    type: Literal["batchnorm2d", "batchnorm1d"]


class Activation(_Layer):
    """An element-wise non-linearity."""

    type: Literal["relu", "leaky_relu", "gelu", "sigmoid", "tanh", "silu", "elu"]
    negative_slope: float = Field(default=0.01, ge=0, le=1)


class Dropout(_Layer):
    """Dropout (2-D drops whole channels)."""

    type: Literal["dropout", "dropout2d"]
    p: float = Field(default=0.5, ge=0, lt=1)


class Flatten(_Layer):
    """Feature map to vector."""

    type: Literal["flatten"]


class Linear(_Layer):
    """Fully connected; `out_features` may be omitted on the last layer (= number of classes)."""

    type: Literal["linear"]
    out_features: int | None = Field(default=None, ge=1, le=65536)
    bias: bool = True


Layer = Annotated[
    Conv2d | Pool2d | AdaptiveAvgPool2d | BatchNorm | Activation | Dropout | Flatten | Linear,
    Field(discriminator="type"),
]

MAX_PARAMETERS = 500_000_000


class NetworkShapeError(ValueError):
    """A custom network that cannot run on the dataset's images; names the layer."""

    def __init__(self, index: int, layer_type: str, message: str) -> None:
        super().__init__(f"layer {index} ({layer_type}): {message}")
        self.index = index
        self.layer_type = layer_type


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_custom(
    layers: list[
        Conv2d | Pool2d | AdaptiveAvgPool2d | BatchNorm | Activation | Dropout | Flatten | Linear
    ],
    channels: int,
    height: int,
    width: int,
    num_classes: int,
) -> int:
    """Infer shapes through the layers; raise NetworkShapeError naming the first bad layer.

    Returns the parameter count.
    """
    shape: tuple[int, ...] = (channels, height, width)
    params = 0
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        t = layer.type
        if (
            isinstance(layer, Conv2d | Pool2d | AdaptiveAvgPool2d)
            or t == "batchnorm2d"
            or (t == "dropout2d")
        ) and len(shape) != 3:
            raise NetworkShapeError(
                i,
                t,
                "needs a feature map, but the input is a vector (it comes after flatten or linear)",
            )
        c, *hw = shape
        if isinstance(layer, Conv2d):
            if c % layer.groups or layer.out_channels % layer.groups:
                raise NetworkShapeError(
                    i,
                    t,
                    f"groups={layer.groups} must divide in "
                    f"({c}) and out ({layer.out_channels}) channels",
                )
            pad = (layer.kernel_size - 1) // 2 if layer.padding == "same" else layer.padding
            stride = 1 if layer.padding == "same" else layer.stride
            h, w = hw
            if layer.kernel_size > h + 2 * pad or layer.kernel_size > w + 2 * pad:
                raise NetworkShapeError(
                    i,
                    t,
                    f"kernel {layer.kernel_size} is larger than its {h}x{w} input (padding {pad})",
                )
            shape = (
                layer.out_channels,
                _out(h, layer.kernel_size, stride, pad),
                _out(w, layer.kernel_size, stride, pad),
            )
            params += layer.out_channels * (c // layer.groups) * layer.kernel_size**2
            params += layer.out_channels if layer.bias else 0
        elif isinstance(layer, Pool2d):
            h, w = hw
            stride = layer.stride or layer.kernel_size
            if layer.padding * 2 > layer.kernel_size:
                raise NetworkShapeError(i, t, "padding must be at most half the kernel size")
            if layer.kernel_size > h + 2 * layer.padding or layer.kernel_size > w + 2 * (
                layer.padding
            ):
                raise NetworkShapeError(
                    i, t, f"kernel {layer.kernel_size} is larger than its {h}x{w} input"
                )
            shape = (
                c,
                _out(h, layer.kernel_size, stride, layer.padding),
                _out(w, layer.kernel_size, stride, layer.padding),
            )
        elif isinstance(layer, AdaptiveAvgPool2d):
            shape = (c, layer.output_size, layer.output_size)
        elif t == "batchnorm2d":
            params += 2 * c
        elif t == "batchnorm1d":
            if len(shape) != 1:
                raise NetworkShapeError(i, t, "needs a vector; use batchnorm2d on feature maps")
            params += 2 * c
        elif isinstance(layer, Flatten):
            size = 1
            for d in shape:
                size *= d
            shape = (size,)
        elif isinstance(layer, Linear):
            if len(shape) != 1:
                raise NetworkShapeError(
                    i,
                    t,
                    f"needs a vector but gets a {'x'.join(map(str, shape))}"
                    " feature map; add a flatten layer before it",
                )
            out = layer.out_features
            if out is None:
                if i != last:
                    raise NetworkShapeError(
                        i, t, "out_features is required except on the last layer"
                    )
                out = num_classes
            params += shape[0] * out + (out if layer.bias else 0)
            shape = (out,)
        if any(d < 1 for d in shape):
            raise NetworkShapeError(
                i,
                t,
                f"output would be {'x'.join(map(str, shape))}: the feature map shrinks to nothing",
            )
        if params > MAX_PARAMETERS:
            raise NetworkShapeError(i, t, f"the network exceeds {MAX_PARAMETERS:,} parameters")
    if shape != (num_classes,):
        t = layers[last].type if layers else "none"  # type: ignore[assignment]
        raise NetworkShapeError(
            last,
            t,
            f"the network must end with {num_classes} outputs (one per class), but it "
            f"ends with shape {'x'.join(map(str, shape))}; end with a linear layer",
        )
    return params


def check_standard(name: str, channels: int, height: int, width: int) -> None:
    """Refuse an input size a standard network cannot take."""
    info = CATALOG[name]
    side = min(height, width)
    if side < info.min_size:
        raise ValueError(
            f"{name} needs images of at least {info.min_size}x{info.min_size}; "
            f"this dataset's are {width}x{height}"
        )
    if name == "vit_b_16" and (height != width or height % 16):
        raise ValueError(
            f"vit_b_16 needs square images whose side is a multiple of 16, not {width}x{height}"
        )
