"""Columns every kind of queued work has (jobs and dataset imports), and its status history."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, DateTime, Enum, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, BigId, utcnow
from shared.models.enums import Status


def str_enum(enum: type[StrEnum]) -> Enum:
    """A column type stored as the member's value in a VARCHAR(16); the ORM hands out members."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


StatusType = str_enum(Status)


class QueuedWork:
    """The lifecycle columns. Only `shared.services.lifecycle.move` writes `status`."""

    status: Mapped[Status] = mapped_column(StatusType, default=Status.INITIALIZED, index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # DELETE of running work: hidden at once, removed by its worker when it has stopped
    delete_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # when the task last reached the broker; None: never (the reaper sends it)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # the lease: renewed in the background by the worker running it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class StatusChange(Base):
    """One move of a job or dataset import: the append-only history, and the SSE status events."""

    __tablename__ = "status_change"
    __table_args__ = (Index("ix_status_change_subject_id_id", "subject_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(16))  # "job" | "dataset"
    subject_id: Mapped[uuid.UUID] = mapped_column()
    from_status: Mapped[Status | None] = mapped_column(StatusType, default=None)
    to_status: Mapped[Status] = mapped_column(StatusType)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
