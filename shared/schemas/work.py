"""What crosses a process or queue boundary, defined once: import sources, training plans,
checkpoint records, and how a training child ended. The API writes these, workers read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.schemas.jobs import Hyperparameters


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- dataset import sources (stored in dataset.source) ----------------------------------------


class ArchiveInput(_Frozen):
    """An uploaded archive, kept in the dataset's uploads folder until the import ends."""

    kind: Literal["archive"] = "archive"
    file: str = Field(description="Path relative to the dataset's folder")
    filename: str | None = Field(default=None, description="The name the client gave it")
    archive: str = Field(description="zip, tar or tar.gz")
    members: int


class PathInput(_Frozen):
    """A folder on the server, under an allowed import root (checked by the API)."""

    kind: Literal["path"] = "path"
    path: str


class ListInput(_Frozen):
    """An uploaded list file of `path label` lines (DIGITS's textfile method)."""

    kind: Literal["list"] = "list"
    file: str = Field(description="Path relative to the dataset's folder")
    filename: str | None = None


ImageInput = Annotated[ArchiveInput | PathInput, Field(discriminator="kind")]


class FolderSource(_Frozen):
    """DIGITS's folder method: one sub-folder per class, per split."""

    method: Literal["folder"] = "folder"
    train: ImageInput
    val: ImageInput | None = None
    test: ImageInput | None = None


class TextfileSource(_Frozen):
    """DIGITS's textfile method: list files naming images in an archive or a server folder."""

    method: Literal["textfile"] = "textfile"
    images: ImageInput
    labels: str = Field(description="The labels file, relative to the dataset's folder")
    train: ListInput
    val: ListInput | None = None
    test: ListInput | None = None


ImportSource = Annotated[FolderSource | TextfileSource, Field(discriminator="method")]
IMPORT_SOURCE: TypeAdapter[FolderSource | TextfileSource] = TypeAdapter(ImportSource)


def public_source(source: FolderSource | TextfileSource) -> dict[str, Any]:
    """The source as its owner may see it: no storage paths."""
    public: dict[str, Any] = {"method": source.method}
    for split in ("train", "val", "test"):
        item = getattr(source, split)
        if item is not None:
            public[split] = item.model_dump(mode="json", exclude={"file"})
    return public


# -- training: what the worker hands its child, and what the child hands back ---------------


class CheckpointRef(_Frozen):
    """A recorded checkpoint a job may resume from: its file and the step its row says."""

    path: str
    step: int


class TrainingPlan(_Frozen):
    """Everything a training child needs, resolved by its worker from the database."""

    job_id: str
    dataset_dir: str
    network: dict[str, Any]
    hyper: Hyperparameters
    out_dir: str
    init_checkpoint: str | None = None
    resume_candidates: list[CheckpointRef] = Field(default_factory=list)
    world_size: int = Field(default=1, ge=1)
    keep_snapshots: int = Field(default=5, ge=1)


class TrainingOutcome(_Frozen):
    """How a training child ended, sent back to its worker over a pipe."""

    status: Literal["done", "error", "aborted", "shutdown"]
    reason: str | None = None
    steps: int = 0
    images_per_second: float = 0.0


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file just written by the engine (reported, then recorded as a row)."""

    name: str
    path: Path
    epoch: float
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    is_best: bool = False
