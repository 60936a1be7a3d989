"""Workers, GPUs and the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field


class WorkerRead(BaseModel):
    """A worker process and what it is doing."""

    name: str
    hostname: str | None = Field(description="Shown to admins only")
    pid: int | None = Field(description="Shown to admins only")
    kind: str = Field(description="cpu (dataset work), gpu, or cpu-train")
    device: str | None
    queues: list[str]
    gpus: list[dict[str, Any]]
    alive: bool = Field(description="Heard from within DIGITS_WORKER_STALE_AFTER seconds")
    job_id: UUID | None = Field(description="The job it runs now (if it is yours, or to admins)")
    busy: bool = Field(default=False, description="Whether it runs a job now")
    stats: dict[str, Any] = Field(description="Latest telemetry sample of its running job")
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


class GpuRead(BaseModel):
    """A GPU of the fleet, with the live stats of its worker."""

    index: int
    name: str
    uuid: str
    memory_total: int
    compute_capability: str
    worker: str
    hostname: str | None
    alive: bool
    job_id: UUID | None
    utilization: float | None
    memory_used_bytes: float | None
    temperature_c: float | None
    power_w: float | None
    sampled_at: str | None


class QueueItem(BaseModel):
    """A waiting job: its place in line and why it waits."""

    position: int = Field(description="1 = next to start")
    job_id: UUID
    name: str
    requested_worker: str | None
    reason: str
    candidates: list[str] = Field(description="Live workers that could run it")
    waiting_since: datetime


class QueueRead(BaseModel):
    """Waiting jobs in the order they will run."""

    items: list[QueueItem]
    total: int
