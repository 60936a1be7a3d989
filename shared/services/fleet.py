"""The fleet as the database sees it: workers, their GPUs, and why each waiting job waits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import Job, JobKind, Status, User, Worker

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

    Training jobs wait for training workers, model jobs (inference, evaluation) for cpu
    workers; positions count each line separately. With `show_jobs` false, reasons do not name
    the jobs that keep a worker busy.
    """
    now = utcnow()
    everyone = list_workers(session)
    waiting = list(
        session.scalars(
            select(Job)
            .where(Job.status == Status.WAITING, Job.delete_requested.is_(False))
            .order_by(Job.created_at, Job.id)
        )
    )
    lines = {
        "train": _Line(
            [w for w in everyone if w.kind in TRAIN_KINDS],
            stale_after,
            now,
            "no live training worker; start one with `digits worker --gpu N` or --cpu",
        ),
        "cpu": _Line(
            [w for w in everyone if w.kind == "cpu"],
            stale_after,
            now,
            "no live cpu worker; start one with `digits worker --queues cpu`",
        ),
    }
    entries: list[QueueEntry] = []
    for job in waiting:
        line = lines["train" if job.kind == JobKind.TRAIN else "cpu"]
        line.position += 1
        target = job.requested_worker if job.kind == JobKind.TRAIN else None
        matching, reason = line.place(target, show_jobs)
        entries.append(
            QueueEntry(
                job=job,
                position=line.position,
                reason=reason,
                target=target,
                candidates=[w.name for w in matching],
            )
        )
    return entries


class _Line:
    """One line of the queue: the workers that serve it, and which of them are spoken for."""

    def __init__(self, workers: list[Worker], stale_after: float, now: datetime, nobody: str):
        self.workers = workers
        self.live = [w for w in workers if is_alive(w, stale_after, now)]
        self.claimed: set[str] = {w.name for w in self.live if w.current_job_id is not None}
        self.nobody = nobody
        self.position = 0

    def place(self, target: str | None, show_jobs: bool) -> tuple[list[Worker], str]:
        """The workers that could run the next job of this line, and why it waits."""
        if target:
            matching = [w for w in self.live if _matches(w, target)]
            if not matching:
                known = [w for w in self.workers if _matches(w, target)]
                state = "stale or stopped" if known else "not registered"
                return [], f"no live worker for the requested GPU or worker {target!r} ({state})"
            if matching[0].name in self.claimed:
                busy = matching[0]
                running = (
                    f" with job {busy.current_job_id}" if busy.current_job_id and show_jobs else ""
                )
                return matching, f"worker {busy.name} is busy{running}"
            self.claimed.add(matching[0].name)
            return matching, f"starting on {matching[0].name}"
        if not self.live:
            return [], self.nobody
        free = [w for w in self.live if w.name not in self.claimed]
        if free:
            self.claimed.add(free[0].name)
            return self.live, f"starting on {free[0].name}"
        return self.live, f"all {len(self.live)} matching workers are busy"


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
