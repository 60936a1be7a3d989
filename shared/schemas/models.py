"""Using trained models: classify, evaluate, download, pretrained models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    """One class and its probability."""

    index: int
    label: str
    probability: float = Field(ge=0, le=1)


class ImageClassification(BaseModel):
    """The top classes of one image."""

    filename: str
    top: list[Prediction]


class ClassifyResult(BaseModel):
    """Interactive classification (answered directly)."""

    job_id: uuid.UUID
    checkpoint: str
    predictions: list[ImageClassification]
    milliseconds: float = Field(description="Time the model service spent")


class InferenceResults(BaseModel):
    """A page of an inference job's results."""

    items: list[ImageClassification]
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
