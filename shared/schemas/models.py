"""Using trained models: classify, evaluate, download, pretrained models."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.models.enums import ResizeMode
from shared.schemas.jobs import CustomNetwork, StandardNetwork


class Prediction(BaseModel):
    """One class and its probability."""

    index: int
    label: str
    probability: float = Field(ge=0, le=1)


class ImageClassification(BaseModel):
    """The top classes of one image, or why it could not be classified."""

    filename: str
    top: list[Prediction]
    error: str | None = Field(
        default=None, description="Why this image was not classified (then `top` is empty)"
    )


class Histogram(BaseModel):
    """20 equal bins over [min, max] (a constant tensor: min +- 0.5)."""

    counts: list[int] = Field(description="Values per bin; with `nonfinite`, the element count")
    edges: list[float] = Field(description="The 21 bin edges")


class TensorStats(BaseModel):
    """DIGITS's statistics of a weight or activation tensor (finite values only)."""

    shape: list[int]
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    histogram: Histogram
    nonfinite: int = Field(description="NaN and infinite values, left out of the rest")


class LayerView(BaseModel):
    """One layer of the network on one image (DIGITS's per-layer weights and activations)."""

    name: str = Field(description="The module's name in the network (`layer1.0.conv1`, `2`)")
    type: str = Field(description="The module's class (Conv2d, ReLU, Linear, ...)")
    output_shape: list[int] = Field(description="Its output for this image, without the batch")
    param_count: int = Field(description="Weights plus biases of this layer")
    calls: int = Field(description="How often it ran (a ResNet block's ReLU runs twice)")
    weights: TensorStats | None = Field(description="Of its `weight`; none for parameter-free")
    activations: TensorStats
    activations_png: str | None = Field(
        description="Base64 PNG: its first 64 channels tiled, heat-mapped (a flat output as a "
        "grid); at most 256 px a side"
    )
    filters_png: str | None = Field(
        description="Base64 PNG of the first convolution's filters (only on that layer)"
    )


class ClassifyResult(BaseModel):
    """Interactive classification (answered directly)."""

    job_id: uuid.UUID
    checkpoint: str
    predictions: list[ImageClassification]
    milliseconds: float = Field(description="Time the model service spent")
    layers: list[LayerView] | None = Field(
        default=None, description="With visualize=true: every layer of the one image, in order"
    )


class DetectedBox(BaseModel):
    """One detection above the threshold."""

    label: str
    class_id: int
    score: float
    box: list[float] = Field(description="x0, y0, x1, y1 in the uploaded image's pixels")
    stored_box: list[float] = Field(
        description="The same box at the training size (where overlay_png draws it)"
    )


class ClassArea(BaseModel):
    """How much of an image a segmentation gave one class."""

    label: str
    class_id: int
    pixels: int = Field(description="At the training size")
    fraction: float


class ImagePrediction(BaseModel):
    """A detector's boxes or a segmenter's mask for one image."""

    filename: str
    width: int | None = Field(default=None, description="The uploaded image's size")
    height: int | None = None
    boxes: list[DetectedBox] | None = Field(default=None, description="Detection, best first")
    areas: list[ClassArea] | None = Field(default=None, description="Segmentation")
    mask_png: str | None = Field(
        default=None,
        description="Segmentation: base64 greyscale PNG at the training size, each pixel its "
        "class id",
    )
    overlay_png: str | None = Field(
        default=None,
        description="Base64 PNG: the image at the training size with the "
        "prediction drawn (boxes named, or the mask blended)",
    )
    error: str | None = None


class PredictResult(BaseModel):
    """Interactive detection or segmentation (answered directly)."""

    job_id: uuid.UUID
    checkpoint: str
    task: Literal["detection", "segmentation"]
    classes: list[str]
    threshold: float
    predictions: list[ImagePrediction]
    milliseconds: float = Field(description="Time the model service spent")


ExplainMethod = Literal["gradcam", "gradcampp", "layercam", "integrated_gradients", "occlusion"]


class ImageExplanation(BaseModel):
    """Why the model gave one image its class: a heat map and what it was computed from."""

    filename: str
    top: list[Prediction]
    target: Prediction | None = Field(description="The class explained (default: the top one)")
    method: ExplainMethod
    layer: str | None = Field(description="The layer of a CAM method; none for pixel methods")
    map_size: list[int] = Field(description="[height, width] of `map`")
    overlay_png: str | None = Field(
        description="Base64 PNG: the heat map (jet) over the image the network saw, enlarged "
        "to at least 112 px for small inputs"
    )
    map: list[list[float]] | None = Field(
        default=None,
        description="With raw=true: the map as numbers. CAMs: at the layer's resolution, not "
        "normalised; integrated_gradients: per input pixel, signed, summed over channels (they "
        "add up to the target's logit minus a black image's); occlusion: per pixel, the logit "
        "drop when covered",
    )
    note: str | None = Field(default=None, description="A coarse map, the occlusion window")
    convergence_delta: float | None = Field(
        default=None, description="integrated_gradients: attribution sum minus output difference"
    )
    error: str | None = Field(default=None, description="Why this image was not explained")


class ExplainResult(BaseModel):
    """Interactive explanations (answered directly)."""

    job_id: uuid.UUID
    checkpoint: str
    method: ExplainMethod
    explanations: list[ImageExplanation]
    milliseconds: float = Field(description="Time the model service spent")


class ExplanationPage(BaseModel):
    """A page of an explain job's explanations."""

    items: list[ImageExplanation]
    total: int
    page: int
    per_page: int


class InferenceResults(BaseModel):
    """A page of an inference job's results."""

    items: list[ImageClassification]
    total: int
    page: int
    per_page: int


class PredictionResults(BaseModel):
    """A page of a prediction job's results: POST /predict's rows, without the drawings."""

    task: Literal["detection", "segmentation"]
    threshold: float | None = Field(default=None, description="Detection: the lowest score kept")
    items: list[ImagePrediction]
    total: int
    page: int
    per_page: int


class ClassMetrics(BaseModel):
    """Precision and recall of one class."""

    label: str
    support: int
    precision: float
    recall: float


class TopImage(BaseModel):
    """One of the most confident images of a class (DIGITS's top-N view)."""

    index: int
    probability: float
    true_label: str
    image_url: str | None = Field(description="The stored image, when it comes from a dataset")


class EvaluationResults(BaseModel):
    """What an evaluation job measured."""

    checkpoint: str
    dataset_id: uuid.UUID | None
    split: str
    images: int
    top1: float
    top5: float
    classes: list[str]
    confusion_matrix: list[list[int]] = Field(description="rows: true class, columns: predicted")
    per_class: list[ClassMetrics]
    top_images: dict[str, list[TopImage]]


class DenseClassMetrics(BaseModel):
    """One class of a detection or segmentation evaluation."""

    label: str
    objects: int | None = Field(default=None, description="Detection: boxes in the data")
    ap: float | None = Field(default=None, description="Detection: AP over IoU 0.5:0.95 (COCO)")
    ap_50: float | None = Field(default=None, description="Detection: AP at IoU 0.5")
    recall_50: float | None = Field(
        default=None, description="Detection: the share of boxes found at IoU 0.5 (100 a picture)"
    )
    pr_curve: dict[str, list[float]] | None = Field(
        default=None,
        description="Detection, IoU 0.5: precision at 101 recall points (COCO's interpolation)",
    )
    iou: float | None = Field(default=None, description="Segmentation: IoU of the class")
    pixels: int | None = Field(default=None, description="Segmentation: its pixels in the data")


class DenseEvaluationResults(BaseModel):
    """What a detection or segmentation evaluation job measured."""

    task: Literal["detection", "segmentation"]
    checkpoint: str
    dataset_id: uuid.UUID | None
    split: str
    images: int
    classes: list[str]
    metrics: dict[str, float] = Field(
        description="map, map_50, map_75 (detection); miou, pixel_accuracy, loss (segmentation)"
    )
    per_class: list[DenseClassMetrics]
    confusion_matrix: list[list[int]] | None = Field(
        default=None, description="Segmentation, in pixels: rows true class, columns predicted"
    )
    skipped: int | None = Field(
        default=None, description="An uploaded archive: the files its import skipped"
    )
    skipped_samples: list[dict[str, str]] | None = Field(
        default=None, description="The first of them, each with its path and reason"
    )


class PretrainedModelRead(BaseModel):
    """A model new jobs can start from (network `{"kind": "pretrained", "model_id": ...}`)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    network: dict[str, Any]
    classes: list[str]
    image_width: int
    image_height: int
    image_channels: int
    resize_mode: str
    source_job_id: uuid.UUID | None
    info: dict[str, Any]
    created_at: datetime


class ToPretrained(BaseModel):
    """Turn a job's checkpoint into a pretrained model."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(default="best", description="best, last, or an epoch number")
    name: str | None = Field(default=None, max_length=200)


ArchiveFormat = Literal["tar.gz", "zip"]


# -- info.json of a model folder (`digits-model/1`) -----------------------------------------
#
# An uploaded model describes itself in info.json; nothing in it is trusted before it passes
# ModelInfo. The bounds keep what a declaration can make the model service build small: the
# network is checked against the weights' shapes on the meta device before any real tensor
# is allocated, and these bounds cap what even a matching upload may declare.

INFO_FORMAT = "digits-model/1"
MAX_INPUT_SIDE = 4096  # the largest side a dataset may be resized to (DatasetCreate)
MAX_INPUT_PIXELS = 4096 * 4096
MAX_CLASSES = 65_536  # the widest linear layer a custom network may declare
MAX_CLASS_NAME = 255  # a class folder's name can be this long
MAX_METRICS = 256
INFO_MAX_BYTES = 2 * 1024**2  # 65,536 class names of ~30 characters fit
INFO_MAX_DEPTH = 16  # a custom network's layer options sit at depth 4
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")  # what str.splitlines splits on


class InvalidModelInfo(ValueError):
    """An info.json that cannot describe a model; the message says which field and why."""


def _printable(value: str) -> str:
    # Class names become lines of labels.txt and CSV cells: no newlines, NULs or escapes.
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    return value


def _plain_file_name(value: str) -> str:
    if value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError("must be a plain file name inside the model folder, not a path")
    return _printable(value)


ClassName = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_CLASS_NAME), AfterValidator(_printable)
]
FileName = Annotated[
    StrictStr, Field(min_length=1, max_length=200), AfterValidator(_plain_file_name)
]
ShortText = Annotated[StrictStr, Field(max_length=200), AfterValidator(_printable)]
ModelName = Annotated[StrictStr, Field(max_length=200)]
ModelNetwork = Annotated[StandardNetwork | CustomNetwork, Field(discriminator="kind")]


class ModelInput(BaseModel):
    """What the model takes: raw uint8 NHWC images of this size, resized this way."""

    # Every key here changes what the model computes, so an unknown one is refused rather
    # than silently ignored (a `normalize` we do not apply would give wrong answers).
    model_config = ConfigDict(extra="forbid")

    width: StrictInt = Field(ge=1, le=MAX_INPUT_SIDE)
    height: StrictInt = Field(ge=1, le=MAX_INPUT_SIDE)
    channels: Literal[1, 3] = Field(description="1 = grayscale, 3 = RGB")
    resize_mode: ResizeMode = ResizeMode.SQUASH
    crop_size: StrictInt | None = Field(
        default=None, ge=1, le=MAX_INPUT_SIDE, description="centre crop the network sees"
    )
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    use_mean: Literal["image", "pixel", "none"] | None = None

    @model_validator(mode="after")
    def _fits(self) -> ModelInput:
        if self.width * self.height > MAX_INPUT_PIXELS:
            raise ValueError(
                f"{self.width}x{self.height} exceeds {MAX_INPUT_PIXELS:,} pixels per image"
            )
        if self.crop_size is not None and self.crop_size > min(self.width, self.height):
            raise ValueError(
                f"crop_size {self.crop_size} is larger than the {self.width}x{self.height} input"
            )
        return self


class ModelFramework(BaseModel):
    """What wrote the model (informative only)."""

    model_config = ConfigDict(extra="ignore")

    name: ShortText = "pytorch"
    torch: ShortText | None = None
    torchvision: ShortText | None = None
    digits: ShortText | None = None


class ModelCheckpoint(BaseModel):
    """Which checkpoint of which job the weights come from (informative only)."""

    model_config = ConfigDict(extra="ignore")

    name: ShortText | None = None
    epoch: FiniteFloat | None = Field(default=None, ge=0)
    step: int | None = Field(default=None, ge=0)
    job_id: uuid.UUID | None = None
    metrics: dict[ShortText, FiniteFloat] = Field(default_factory=dict, max_length=MAX_METRICS)

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_only(cls, value: Any) -> Any:
        # the API forwards a checkpoint's recorded metrics, and a diverged run's loss is NaN:
        # provenance keeps the numbers JSON can hold instead of refusing the whole model
        if isinstance(value, dict):
            return {
                k: v
                for k, v in value.items()
                if not (isinstance(v, float) and not math.isfinite(v))
            }
        return value


class ModelFiles(BaseModel):
    """The folder's files, by role; plain names inside the folder."""

    model_config = ConfigDict(extra="ignore")

    weights: FileName = "weights.safetensors"
    labels: FileName | None = "labels.txt"
    mean: FileName | None = None
    torchscript: FileName | None = None
    onnx: FileName | None = None
    onnx_int8: FileName | None = None
    onnx_fp16: FileName | None = None


EdgeExport = Literal["onnx", "onnx-int8", "onnx-fp16"]


class ExportFigures(BaseModel):
    """One ONNX variant measured at export time on the job's validation split."""

    model_config = ConfigDict(extra="ignore")

    file: FileName | None = Field(description="In the archive; none: measured, not included")
    bytes: int = Field(ge=0)
    top1: FiniteFloat | None = None
    agreement: FiniteFloat | None = Field(
        default=None, description="Share of validation images with the fp32 model's class"
    )
    latency_ms: FiniteFloat | None = Field(
        default=None, description="CPU, one image per call, median of 30 runs"
    )
    size_ratio: FiniteFloat | None = Field(default=None, description="bytes over fp32's")
    speedup: FiniteFloat | None = Field(default=None, description="fp32 latency over this one")


class ExportReport(BaseModel):
    """fp32 against int8/fp16 ONNX, measured when the archive was made."""

    model_config = ConfigDict(extra="ignore")

    validation_split: ShortText | None
    validation_images: int = Field(ge=0)
    calibration_split: ShortText
    calibration_images: int = Field(ge=0)
    calibration_method: ShortText
    onnxruntime: ShortText | None = None
    cpu: ShortText | None = None
    threads: int = Field(default=0, ge=0, description="0: ONNX Runtime's default")
    convert_seconds: FiniteFloat | None = None
    variants: dict[EdgeExport, ExportFigures]
    warnings: list[ShortText] = Field(default_factory=list, max_length=16)


class ModelInfo(BaseModel):
    """info.json of a model folder: what the network is, what it takes, what it answers.

    Unknown keys are dropped from the descriptive parts (framework, checkpoint, files and the
    top level) so files written by other tools or later versions still load, and what is
    stored and returned holds only these fields; they are refused in `network` and `input`,
    where an ignored key would silently change the computation.
    """

    model_config = ConfigDict(extra="ignore")

    format: Literal["digits-model/1"]
    name: ModelName = "model"
    framework: ModelFramework = Field(default_factory=ModelFramework)
    network: ModelNetwork
    input: ModelInput
    classes: list[ClassName] = Field(min_length=2, max_length=MAX_CLASSES)
    checkpoint: ModelCheckpoint = Field(default_factory=ModelCheckpoint)
    metrics: dict[ShortText, FiniteFloat] = Field(default_factory=dict, max_length=MAX_METRICS)
    files: ModelFiles
    export_report: ExportReport | None = Field(
        default=None, description="With onnx-int8/onnx-fp16 exports: what they were measured at"
    )

    @model_validator(mode="after")
    def _distinct_classes(self) -> ModelInfo:
        seen: set[str] = set()
        for name in self.classes:
            if name in seen:
                raise ValueError(f"classes: {name[:40]!r} is listed twice")
            seen.add(name)
        return self


def json_depth(data: bytes) -> int:
    """The nesting depth of a JSON text, found without parsing it (and without recursion).

    Escapes, then strings, are cut out, leaving only the brackets; the deepest running sum
    of opens minus closes is the depth. Linear, and in C: 20 ms for 2 MiB of brackets.
    """
    skeleton = _STRING.sub(b"", _ESCAPE.sub(b"", data)).translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    marks = np.frombuffer(skeleton, dtype=np.uint8)
    steps = np.where((marks == ord("[")) | (marks == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def validation_message(exc: ValidationError, prefix: str = "", limit: int = 5) -> str:
    """`field.path: reason; ...` of a ValidationError, without echoing the input's values."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}" if loc else f"{prefix}{err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_model_info(data: bytes, *, max_bytes: int = INFO_MAX_BYTES) -> ModelInfo:
    """Validate the bytes of an info.json; raise InvalidModelInfo saying what is wrong.

    Pure Python (no torch): the API can call it on an upload before the model service does.
    The size and nesting are bounded before parsing, so a hostile file costs a linear scan.
    """
    if len(data) > max_bytes:
        raise InvalidModelInfo(
            f"info.json is {len(data):,} bytes; at most {max_bytes:,} are accepted"
        )
    if json_depth(data) > INFO_MAX_DEPTH:
        raise InvalidModelInfo(f"info.json is nested too deep (more than {INFO_MAX_DEPTH} levels)")
    try:
        return ModelInfo.model_validate_json(data)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidModelInfo("info.json is not valid JSON") from None
        raise InvalidModelInfo(validation_message(exc, "info.json ")) from None


class CellImage(BaseModel):
    """One image of a confusion-matrix cell."""

    index: int = Field(description="Its index in the evaluated split")
    image_url: str | None = Field(description="The stored image; none for uploaded archives")
    probability: float = Field(description="The model's probability for the predicted class")
    true_label: str
    predicted_label: str


class CellImages(BaseModel):
    """A page of the images whose true class is `true` and predicted class is `pred`."""

    items: list[CellImage]
    total: int
    page: int
    per_page: int


# -- what the API sends the model service ------------------------------------------------
#
# Paths are inside the data directory, chosen by the API after its ownership checks; the
# model service checks them again (inside the data directory, no NUL, no overlong name).

ServicePath = Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class ModelServiceExport(BaseModel):
    """POST /export: write a model folder (plus exports) from a checkpoint, packed as `out`."""

    model_config = ConfigDict(extra="forbid")

    model: ServicePath = Field(description="checkpoint file or model folder")
    out: ServicePath = Field(description="the archive to write")
    name: StrictStr = Field(default="model", max_length=1000, description="cut to 200 chars")
    resize_mode: ResizeMode = ResizeMode.SQUASH
    checkpoint: ModelCheckpoint = Field(default_factory=ModelCheckpoint)
    exports: list[Literal["torchscript", "onnx", "onnx-int8", "onnx-fp16"]] = Field(
        default_factory=list, max_length=4
    )
    format: ArchiveFormat = "tar.gz"
    dataset_id: uuid.UUID | None = Field(
        default=None, description="the job's dataset: calibration and validation of int8/fp16"
    )
    task: Literal["classification", "detection", "segmentation"] = "classification"


class ModelServicePretrained(BaseModel):
    """POST /pretrained: validate an upload folder (or a checkpoint) and write it to `out_dir`.

    The answer is the written model's info.json (ModelInfo, as JSON).
    """

    model_config = ConfigDict(extra="forbid")

    source: ServicePath = Field(description="unpacked upload folder, or a checkpoint file")
    out_dir: ServicePath
    name: StrictStr | None = Field(
        default=None, max_length=1000, description="cut to 200 chars; default: info.json's"
    )
    resize_mode: ResizeMode | None = Field(
        default=None, description="for a checkpoint source; a folder's info.json has its own"
    )
    checkpoint: ModelCheckpoint | None = Field(
        default=None, description="default: the info.json's checkpoint"
    )
