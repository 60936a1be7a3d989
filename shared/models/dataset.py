"""The dataset table: an imported, training-ready image set."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base
from shared.models.lifecycle import QueuedWork


class Dataset(QueuedWork, Base):
    """An image dataset (classification, detection or segmentation); its import runs as
    queued work with DIGITS's states."""

    __tablename__ = "dataset"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    group_name: Mapped[str | None] = mapped_column(String(200), default=None)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="RESTRICT"), default=None, index=True
    )
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    task: Mapped[str] = mapped_column(
        String(16), default="classification", server_default="classification"
    )
    annotation_format: Mapped[str | None] = mapped_column(String(8), default=None)
    split_images: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    classes: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    counts: Mapped[dict[str, list[int]] | None] = mapped_column(JSON, default=None)
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    image_channels: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str | None] = mapped_column(String(8), default=None)
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    skipped_samples: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    dropped_classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    import_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    images_per_second: Mapped[float | None] = mapped_column(Float, default=None)
