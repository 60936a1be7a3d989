"""Tuning studies: a search over hyperparameters whose trials are ordinary training jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow
from shared.models.lifecycle import str_enum


class StudyStatus(StrEnum):
    """A study runs until its budget is spent (done), it is aborted, or its trials all fail."""

    RUNNING = "running"
    DONE = "done"
    ABORTED = "aborted"
    ERROR = "error"

    @property
    def is_final(self) -> bool:
        """Nothing is asked any more."""
        return self != StudyStatus.RUNNING


class Study(Base):
    """The digits side of a study; Optuna keeps the trials' values in its own storage.

    `config` (the validated request) is the only record of the sampler and the pruner: Optuna
    does not store them, so every process rebuilds both from it.
    """

    __tablename__ = "study"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="RESTRICT"), default=None, index=True
    )
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="RESTRICT"), default=None, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    group_name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[StudyStatus] = mapped_column(
        str_enum(StudyStatus), default=StudyStatus.RUNNING, index=True
    )
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    optuna_name: Mapped[str] = mapped_column(String(200))
    trials_asked: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
