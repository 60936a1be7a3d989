"""Workers register themselves here and renew a heartbeat, so the API can show the fleet."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, utcnow


class Worker(Base):
    """One worker process: what it consumes, its GPUs, its heartbeat and the job it runs."""

    __tablename__ = "worker"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # cpu (datasets), gpu, cpu-train
    device: Mapped[str | None] = mapped_column(String(16), default=None)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    current_job_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    idle_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
