"""Dataset requests and responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.models.enums import ResizeMode
from shared.schemas.common import StatusEntry

Split = Literal["train", "val", "test"]


class DatasetOptions(BaseModel):
    """Import options, with DIGITS's defaults and meanings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["digits-28"])
    task: Literal["classification", "detection", "segmentation"] = Field(
        default="classification",
        description="classification: class folders or list files; detection: images with "
        "COCO, Pascal VOC, KITTI or YOLO boxes; segmentation: images/ and masks/ pairs",
    )
    annotation_format: Literal["auto", "coco", "voc", "kitti", "yolo"] = Field(
        default="auto",
        description="Detection only: the boxes' format; auto tells it from the files",
    )
    class_names: str | None = Field(
        default=None,
        max_length=20_000,
        description="Detection and segmentation: the classes to keep, comma-separated, in "
        "class-id order (boxes of other classes are skipped and listed); default: the files' own",
    )
    group: str | None = Field(default=None, max_length=200)
    image_width: int = Field(default=256, ge=1, le=4096, description="Resize width in pixels")
    image_height: int = Field(default=256, ge=1, le=4096, description="Resize height in pixels")
    channels: int = Field(default=3, ge=1, le=3, description="1 = grayscale, 3 = RGB")
    resize_mode: ResizeMode = Field(
        default=ResizeMode.SQUASH,
        description="squash: ignore aspect ratio; crop: scale the short side, centre-crop; "
        "fill: scale the long side, pad with noise; half_crop: half of each",
    )
    val_pct: float = Field(default=25.0, ge=0, le=100, description="% of each class for val")
    test_pct: float = Field(default=0.0, ge=0, le=100, description="% of each class for test")
    min_per_class: int = Field(default=2, ge=1, description="Classes with fewer are dropped")
    max_per_class: int | None = Field(default=None, ge=1, description="Cap per class")
    encoding: Literal["auto", "raw", "png", "jpg"] = Field(
        default="auto",
        description="Storage: raw uint8 arrays, or PNG/JPEG-encoded; auto = raw up to 128x128x3",
    )
    shuffle: bool = Field(default=True, description="Shuffle text-file lists")
    seed: int | None = Field(default=None, ge=0, description="Split seed; random when omitted")
    train_path: str | None = Field(
        default=None, description="Server folder (under an allowed import root) with class folders"
    )
    val_path: str | None = Field(default=None, description="Server folder for a separate val set")
    test_path: str | None = Field(default=None, description="Server folder for a separate test set")
    image_root: str | None = Field(
        default=None, description="Server folder that relative paths of list files refer to"
    )

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: int) -> int:
        if value not in (1, 3):
            raise ValueError("channels must be 1 (grayscale) or 3 (RGB)")
        return value

    @field_validator("class_names")
    @classmethod
    def _check_class_names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [n.strip() for n in value.split(",")]
        if not all(names) or len(set(names)) != len(names):
            raise ValueError("class_names: comma-separated names, none empty, none twice")
        if any(len(n) > 200 or any(ord(c) < 32 for c in n) for n in names):
            raise ValueError("class_names: names of at most 200 characters, no control characters")
        if len(names) > 1000:
            raise ValueError("class_names: at most 1000 classes")
        return ",".join(names)

    @model_validator(mode="after")
    def _check_split(self) -> DatasetOptions:
        if self.task == "classification" and (
            self.annotation_format != "auto" or self.class_names is not None
        ):
            raise ValueError("annotation_format and class_names are for detection and segmentation")
        if self.task == "segmentation" and self.annotation_format != "auto":
            raise ValueError("annotation_format is for detection (masks have one format)")
        if self.val_pct + self.test_pct >= 100:
            raise ValueError("val_pct + test_pct must be below 100 so training keeps images")
        if self.max_per_class is not None and self.max_per_class < self.min_per_class:
            raise ValueError("max_per_class must be at least min_per_class")
        return self


class SplitSummary(BaseModel):
    """Images per class of one split."""

    images: int
    per_class: dict[str, int] = Field(
        description="Per class: images (classification), boxes (detection) or pixels "
        "(segmentation); see the dataset's count_unit"
    )


class SkippedFile(BaseModel):
    """A file the import could not use."""

    path: str
    reason: str


class DatasetRead(BaseModel):
    """A dataset and, once imported, what it holds."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    group: str | None
    task: Literal["classification", "detection", "segmentation"] = "classification"
    annotation_format: str | None = Field(
        default=None, description="Detection: the format the boxes were read from"
    )
    count_unit: Literal["images", "boxes", "pixels"] = Field(
        default="images", description="What splits' per_class counts"
    )
    status: str = Field(examples=["done"])
    status_history: list[StatusEntry]
    error: str | None = Field(description="Why the import failed, for a person")
    progress: float = Field(ge=0, le=1)
    attempts: int = Field(default=0, description="Import attempts (a lost worker's is retried)")
    worker: str | None = Field(default=None, description="The worker running the import")
    options: dict[str, object]
    source: dict[str, object]
    method: Literal["folder", "textfile"]
    image_width: int
    image_height: int
    image_channels: int
    resize_mode: str
    encoding: str | None
    classes: list[str] | None
    splits: dict[str, SplitSummary] | None
    num_images: int
    skipped: int
    skipped_samples: list[SkippedFile]
    dropped_classes: list[str]
    size_bytes: int
    import_seconds: float | None
    images_per_second: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SampleBox(BaseModel):
    """One box of a stored detection image."""

    label: int
    class_name: str
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in pixels")


class SampleRead(BaseModel):
    """One stored image of a split."""

    index: int
    label: int = Field(description="The image's class; -1 for detection and segmentation")
    class_name: str
    image_url: str
    annotated_url: str | None = Field(
        default=None, description="Detection and segmentation: the image with its boxes or mask"
    )
    boxes: list[SampleBox] | None = Field(
        default=None, description="Detection: the image's boxes, in stored pixels"
    )


class SamplePage(BaseModel):
    """A page of samples (DIGITS's explore view)."""

    split: str
    label: int | None
    items: list[SampleRead]
    total: int
    page: int
    per_page: int
