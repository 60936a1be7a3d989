"""The fleet as the database sees it: workers, their GPUs, and why each waiting job waits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import Job, Status, User, Worker

TRAIN_KINDS = ("gpu", "cpu-train")


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


def is_alive(worker: Worker, stale_after: float, now: datetime | None = None) -> bool:
    """Running and heard from within `stale_after` seconds."""
    now = now or utcnow()
    return worker.stopped_at is None and (
        now - _aware(worker.heartbeat_at) <= timedelta(seconds=stale_after)
    )


def list_workers(session: Session) -> list[Worker]:
    """Every worker that ever registered, by name."""
    return list(session.scalars(select(Worker).order_by(Worker.name)))


@dataclass
class QueueEntry:
    """A waiting job, where it stands and why."""

    job: Job
    position: int
    reason: str
    target: str | None
    candidates: list[str] = field(default_factory=list)


def _matches(worker: Worker, target: str) -> bool:
    return worker.name == target or any(g.get("uuid") == target for g in worker.gpus or [])


def own_job_ids(session: Session, user: User) -> set[uuid.UUID]:
    """The ids of the user's jobs that run now (what a non-admin may see of the fleet)."""
    return set(
        session.scalars(select(Job.id).where(Job.owner_id == user.id, Job.status == Status.RUNNING))
    )


def queue(session: Session, stale_after: float, *, show_jobs: bool = True) -> list[QueueEntry]:
    """Waiting jobs in the order they will run, each with its position and the reason it waits.

    With `show_jobs` false, reasons do not name the jobs that keep a worker busy.
    """
    now = utcnow()
    workers = [w for w in list_workers(session) if w.kind in TRAIN_KINDS]
    live = [w for w in workers if is_alive(w, stale_after, now)]
    claimed: set[str] = {w.name for w in live if w.current_job_id is not None}
    waiting = list(
        session.scalars(
            select(Job)
            .where(Job.status == Status.WAITING, Job.delete_requested.is_(False))
            .order_by(Job.created_at, Job.id)
        )
    )
    entries: list[QueueEntry] = []
    for position, job in enumerate(waiting, start=1):
        target = job.requested_worker
        if target:
            matching = [w for w in live if _matches(w, target)]
            if not matching:
                known = [w for w in workers if _matches(w, target)]
                state = "stale or stopped" if known else "not registered"
                reason = f"no live worker for the requested GPU or worker {target!r} ({state})"
            elif matching[0].name in claimed:
                busy = matching[0]
                running = (
                    f" with job {busy.current_job_id}" if busy.current_job_id and show_jobs else ""
                )
                reason = f"worker {busy.name} is busy{running}"
            else:
                claimed.add(matching[0].name)
                reason = f"starting on {matching[0].name}"
        else:
            matching = live
            free = [w for w in live if w.name not in claimed]
            if not live:
                reason = "no live training worker; start one with `digits worker --gpu N` or --cpu"
            elif free:
                claimed.add(free[0].name)
                reason = f"starting on {free[0].name}"
            else:
                reason = f"all {len(live)} matching workers are busy"
        entries.append(
            QueueEntry(
                job=job,
                position=position,
                reason=reason,
                target=target,
                candidates=[w.name for w in matching],
            )
        )
    return entries


def queue_entry(session: Session, job_id: uuid.UUID, stale_after: float) -> QueueEntry | None:
    """The queue entry of one job, if it waits."""
    for entry in queue(session, stale_after):
        if entry.job.id == job_id:
            return entry
    return None


def gpu_rows(workers: list[Worker], stale_after: float) -> list[dict[str, Any]]:
    """One row per GPU known to the fleet, with the live stats of its worker."""
    now = utcnow()
    rows = []
    for w in workers:
        for gpu in w.gpus or []:
            stats = w.stats or {}
            rows.append(
                {
                    **gpu,
                    "worker": w.name,
                    "hostname": w.hostname,
                    "alive": is_alive(w, stale_after, now),
                    "job_id": w.current_job_id,
                    "utilization": stats.get("gpu.utilization"),
                    "memory_used_bytes": stats.get("gpu.memory_used_bytes"),
                    "temperature_c": stats.get("gpu.temperature_c"),
                    "power_w": stats.get("gpu.power_w"),
                    "sampled_at": stats.get("at"),
                }
            )
    return rows
