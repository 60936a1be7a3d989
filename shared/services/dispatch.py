"""Getting queued work to the broker, and getting it back when the broker or a worker lost it.

The database owns job state; a broker message only says "look at job X". Every send is
recorded (`enqueued_at`); the reaper re-sends what never arrived, requeues running work whose
lease lapsed (the worker died), and gives up after the restart budget.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared import queue
from shared.db import utcnow
from shared.models import Dataset, Job, JobKind, Status, Worker
from shared.services import fleet
from shared.services import jobs as job_service
from shared.services.states import finish
from shared.settings import Settings

log = logging.getLogger("digits.dispatch")


@dataclass(frozen=True)
class Send:
    """One message to (re)send."""

    kind: str  # "job" | "dataset"
    id: uuid.UUID
    task: str
    target: str | None  # a worker's name for a job that asked for one
    devices: int = 1


def job_send(job: Job, workers: list[Worker] | None = None) -> Send | None:
    """What to send for a waiting job (None: it waits for a worker that is not registered)."""
    if job.kind == JobKind.TRAIN.value:
        target = job.requested_worker
        if target and target.startswith("GPU-"):
            owner = next(
                (
                    w.name
                    for w in workers or []
                    if any(g.get("uuid") == target for g in w.gpus or [])
                ),
                None,
            )
            if owner is None:
                return None
            target = owner
        return Send("job", job.id, queue.TRAIN, target, int(job.request.get("gpus") or 1))
    task = queue.INFER if job.kind == JobKind.INFERENCE.value else queue.EVALUATE
    return Send("job", job.id, task, None)


def deliver(celery: Celery, item: Send) -> None:
    """Put the message on the broker (raises when the broker is unreachable)."""
    if item.task == queue.TRAIN:
        queue.send_train(celery, item.id, item.target, item.devices)
    elif item.task == queue.IMPORT_DATASET:
        queue.send_import(celery, item.id)
    else:
        queue.send_task(celery, item.task, item.id)


def mark_enqueued(session: Session, item: Send) -> None:
    """Record that the message reached the broker."""
    model = Job if item.kind == "job" else Dataset
    session.execute(update(model).where(model.id == item.id).values(enqueued_at=utcnow()))


def try_deliver(celery: Celery, session: Session, item: Send) -> bool:
    """Send and record it; False (logged) when the broker is down: the reaper sends it later."""
    try:
        deliver(celery, item)
    except Exception as exc:
        log.warning(
            "%s=%s not sent, the broker is unreachable (%s); it waits in the database",
            item.kind,
            item.id,
            str(exc).splitlines()[0] if str(exc) else exc,
        )
        return False
    mark_enqueued(session, item)
    return True


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


def requeue(session: Session, job_id: uuid.UUID, reason: str, *, count_attempt: bool) -> bool:
    """Running -> waiting (compare-and-set); a graceful stop gives its attempt back."""
    values: dict[str, Any] = {"status": Status.WAITING.value, "worker": None, "enqueued_at": None}
    if not count_attempt:
        values["attempts"] = Job.attempts - 1
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == Status.RUNNING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    entry = {"status": "waiting", "at": utcnow().isoformat(), "reason": reason}
    job.status_history = [*(job.status_history or []), entry]
    job_service.record_event(session, job_id, "status", entry)
    session.flush()
    return True


def reap(session: Session, settings: Settings) -> list[Send]:
    """Find lost work: lapsed leases (requeue or give up), unsent and lost messages."""
    now = utcnow()
    lease_cutoff = now - timedelta(seconds=settings.lease_timeout)
    sends: list[Send] = []
    workers = fleet.list_workers(session)

    lapsed = session.scalars(
        select(Job).where(
            Job.status == Status.RUNNING.value,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < lease_cutoff),
        )
    )
    for job in list(lapsed):
        silent = (now - (_aware(job.heartbeat_at) or now)).total_seconds()
        if job.attempts >= settings.max_attempts:
            reason = (
                f"gave up after {job.attempts} attempts: its worker stopped answering "
                f"({job.worker or 'unknown'}, silent {silent:.0f}s)"
            )
            if finish(session, Job, job.id, Status.ERROR, reason=reason):
                job_service.record_event(
                    session,
                    job.id,
                    "status",
                    {"status": "error", "at": now.isoformat(), "reason": reason},
                )
                log.warning("job=%s %s", job.id, reason)
            continue
        reason = f"requeued: worker {job.worker} stopped answering (silent {silent:.0f}s)"
        if requeue(session, job.id, reason, count_attempt=True):
            log.warning("job=%s %s", job.id, reason)

    unsent_cutoff = now - timedelta(seconds=2)
    for job in session.scalars(
        select(Job).where(
            Job.status == Status.WAITING.value,
            Job.enqueued_at.is_(None),
            Job.created_at < unsent_cutoff,
        )
    ):
        item = job_send(job, workers)
        if item is not None:
            sends.append(item)
    for dataset in session.scalars(
        select(Dataset).where(
            Dataset.status == Status.WAITING.value,
            Dataset.enqueued_at.is_(None),
            Dataset.created_at < unsent_cutoff,
        )
    ):
        sends.append(Send("dataset", dataset.id, queue.IMPORT_DATASET, None))

    # a message the broker lost (a restart without persistence): its job waits while a
    # worker that could run it sits idle
    resend_cutoff = now - timedelta(seconds=settings.resend_after)
    # idle for a while: a worker between two jobs takes the next message by itself
    idle = [
        w
        for w in workers
        if fleet.is_alive(w, settings.worker_stale_after, now)
        and w.current_job_id is None
        and w.idle_since is not None
        and (_aware(w.idle_since) or now) < resend_cutoff
    ]
    if idle:
        idle_train = [w for w in idle if w.kind in fleet.TRAIN_KINDS]
        idle_cpu = [w for w in idle if w.kind == "cpu"]
        for job in session.scalars(
            select(Job)
            .where(Job.status == Status.WAITING.value, Job.enqueued_at < resend_cutoff)
            .order_by(Job.created_at)
        ):
            pool = idle_train if job.kind == JobKind.TRAIN.value else idle_cpu
            target = job.requested_worker
            if any(
                target is None
                or w.name == target
                or any(g.get("uuid") == target for g in w.gpus or [])
                for w in pool
            ):
                item = job_send(job, workers)
                if item is not None:
                    sends.append(item)
        if idle_cpu:
            for dataset in session.scalars(
                select(Dataset).where(
                    Dataset.status == Status.WAITING.value, Dataset.enqueued_at < resend_cutoff
                )
            ):
                sends.append(Send("dataset", dataset.id, queue.IMPORT_DATASET, None))
    # stale dataset imports (their worker died): start them again from scratch
    for dataset in session.scalars(
        select(Dataset).where(
            Dataset.status == Status.RUNNING.value, Dataset.updated_at < lease_cutoff
        )
    ):
        result = session.execute(
            update(Dataset)
            .where(
                Dataset.id == dataset.id,
                Dataset.status == Status.RUNNING.value,
                Dataset.updated_at < lease_cutoff,
            )
            .values(status=Status.WAITING.value, enqueued_at=None, worker=None)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            if dataset.attempts >= settings.max_attempts:
                session.execute(
                    update(Dataset)
                    .where(Dataset.id == dataset.id)
                    .values(
                        status=Status.ERROR.value,
                        finished_at=now,
                        error=f"gave up after {dataset.attempts} attempts: its worker stopped",
                    )
                )
            else:
                sends.append(Send("dataset", dataset.id, queue.IMPORT_DATASET, None))
    session.flush()
    return sends
