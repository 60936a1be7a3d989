"""Pretrained models: uploaded or made from a job's checkpoint, usable to start new jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow


class PretrainedModel(Base):
    """A validated model folder (info.json, weights.safetensors, labels, mean)."""

    __tablename__ = "pretrained_model"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="RESTRICT"), default=None, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    network: Mapped[dict[str, Any]] = mapped_column(JSON)
    classes: Mapped[list[str]] = mapped_column(JSON)
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    image_channels: Mapped[int] = mapped_column(Integer)
    resize_mode: Mapped[str] = mapped_column(String(16))
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_job_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
