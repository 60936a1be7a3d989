"""The job table: queued work (training, inference, evaluation) with DIGITS's six states."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base
from shared.models.enums import JobKind
from shared.models.lifecycle import QueuedWork, str_enum


class Job(QueuedWork, Base):
    """A unit of queued work; the row, not the broker, is the source of truth for its state."""

    __tablename__ = "job"
    # GET /jobs: newest first among the jobs not being deleted (all, or one owner's)
    __table_args__ = (
        Index("ix_job_listing", "delete_requested", "created_at", "id"),
        Index("ix_job_owner_listing", "owner_id", "delete_requested", "created_at", "id"),
        # one job per trial of a study: a trial is never queued twice
        UniqueConstraint("study_id", "trial_number"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[JobKind] = mapped_column(str_enum(JobKind), default=JobKind.TRAIN, index=True)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="RESTRICT"), default=None, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    group_name: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    notes: Mapped[str | None] = mapped_column(Text, default=None)
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="RESTRICT"), default=None, index=True
    )
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requested_worker: Mapped[str | None] = mapped_column(String(200), default=None)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # a trial of a tuning study (shared.services.studies); None for every other job
    study_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("study.id", ondelete="SET NULL"), default=None, index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer, default=None)
