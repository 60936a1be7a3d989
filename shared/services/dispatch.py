"""Getting queued work to the broker after the commit, and getting it back when it was lost.

The database owns the state; a broker message only says "look at row X". Services record what
to send (`enqueue`) or to take back (`retract`) on the session while they work, and one hook,
installed on the session factory, sends it once the transaction has committed (never before:
a worker must find the row). The reaper requeues running work whose lease lapsed, re-sends
what never reached the broker, and gives up after the restart budget -- the same way for every
kind of work, because every kind renews the same lease.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import queue
from shared.db import utcnow
from shared.models import Dataset, Job, JobKind, Status, Worker
from shared.queue import Message
from shared.services import fleet, lifecycle
from shared.settings import Settings

log = logging.getLogger("digits.dispatch")

OUTBOX = "digits.outbox"
SENDER = "digits.sender"


class Sender(Protocol):
    """What the commit hook hands messages to: the broker, or a recorder in tests."""

    def send(self, message: Message) -> None:
        """Put one message on the broker; raise when it cannot."""

    def drop(self, messages: list[Message]) -> int:
        """Remove still-queued messages (best effort); how many were removed."""


@dataclass
class CelerySender:
    """The real broker, through the Celery app."""

    app: Any
    settings: Settings

    def send(self, message: Message) -> None:
        queue.send(self.app, message)

    def drop(self, messages: list[Message]) -> int:
        return queue.drop(self.app, self.settings, messages)


@dataclass
class RecordingSender:
    """A sender that keeps what it was given (route and service tests)."""

    sent: list[Message] = field(default_factory=list)
    dropped: list[Message] = field(default_factory=list)

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def drop(self, messages: list[Message]) -> int:
        self.dropped.extend(messages)
        return len(messages)


@dataclass
class _Outbox:
    sends: list[Message] = field(default_factory=list)
    drops: list[Message] = field(default_factory=list)


def _outbox(session: Session) -> _Outbox:
    box: _Outbox | None = session.info.get(OUTBOX)
    if box is None:
        box = session.info[OUTBOX] = _Outbox()
    return box


# -- routing --------------------------------------------------------------------------------


def message_for(row: Job | Dataset, workers: list[Worker] | None = None) -> Message | None:
    """The message that makes a worker run this row (None: a job waits for a GPU no worker has)."""
    if isinstance(row, Dataset):
        return queue.cpu_message(queue.IMPORT_DATASET, row.id)
    if row.kind == JobKind.TRAIN:
        target = row.requested_worker
        if target and target.startswith("GPU-"):
            target = next(
                (
                    w.name
                    for w in workers or []
                    if any(g.get("uuid") == target for g in w.gpus or [])
                ),
                None,
            )
            if target is None:
                return None
        return queue.training_message(row.id, target, int(row.request.get("gpus") or 1))
    task = {JobKind.INFERENCE: queue.INFER, JobKind.EXPLAIN: queue.EXPLAIN}.get(
        row.kind, queue.EVALUATE
    )
    return queue.cpu_message(task, row.id)


# -- the outbox -----------------------------------------------------------------------------


def enqueue(session: Session, rows: Sequence[Job | Dataset]) -> int:
    """Send these waiting rows once the transaction commits; returns how many will be sent."""
    needs_workers = any(isinstance(r, Job) and r.requested_worker for r in rows)
    workers = fleet.list_workers(session) if needs_workers else []
    now = utcnow()
    box = _outbox(session)
    count = 0
    for row in rows:
        message = message_for(row, workers)
        if message is None:
            continue
        box.sends.append(message)
        # optimistic: the hook clears it again when the broker refuses the message
        model = type(row)
        session.execute(
            update(model)
            .where(model.id == row.id)
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
        count += 1
    return count


def retract(session: Session, rows: Sequence[Job | Dataset]) -> None:
    """Take the queued messages of these (aborted) rows off the broker after the commit."""
    box = _outbox(session)
    for row in rows:
        message = message_for(row)
        if message is not None:
            box.drops.append(message)


def install(factory: sessionmaker[Session], sender: Sender) -> None:
    """Send what sessions of this factory enqueued, after each commit; forget it on rollback."""
    factory.configure(info={SENDER: sender})
    if not event.contains(factory, "after_commit", _after_commit):
        event.listen(factory, "after_commit", _after_commit)
        event.listen(factory, "after_soft_rollback", _after_rollback)


def _after_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():
        session.info.pop(OUTBOX, None)


def _after_commit(session: Session) -> None:
    box: _Outbox | None = session.info.pop(OUTBOX, None)
    sender: Sender | None = session.info.get(SENDER)
    if box is None or sender is None:
        return
    if box.drops:
        try:
            removed = sender.drop(box.drops)
            log.info("dropped %d queued message(s) of %d aborted row(s)", removed, len(box.drops))
        except Exception as exc:  # harmless: a worker taking one finds nothing to claim
            log.warning("could not drop queued messages: %s", _first_line(exc))
    unsent: list[Message] = []
    for message in box.sends:
        try:
            sender.send(message)
        except Exception as exc:
            log.warning(
                "%s=%s not sent, the broker is unreachable (%s); it waits in the database",
                message.subject,
                message.id,
                _first_line(exc),
            )
            unsent.append(message)
    if unsent:
        _mark_unsent(session, unsent)


def _mark_unsent(session: Session, messages: list[Message]) -> None:
    """Clear enqueued_at of what the broker refused, so the reaper sends it later."""
    bind = session.get_bind()
    if not isinstance(bind, Engine):
        return
    try:
        with bind.begin() as conn:
            for model, subject in ((Job, "job"), (Dataset, "dataset")):
                ids = [m.id for m in messages if m.subject == subject]
                if ids:
                    conn.execute(update(model).where(model.id.in_(ids)).values(enqueued_at=None))
    except Exception as exc:  # the reaper's lost-message sweep still finds them
        log.warning("could not mark unsent messages: %s", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the reaper -----------------------------------------------------------------------------


def _aware(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


@dataclass
class Sweep:
    """What one reaper pass did (for logs and tests)."""

    requeued: list[uuid.UUID] = field(default_factory=list)
    gave_up: list[uuid.UUID] = field(default_factory=list)
    sent: list[uuid.UUID] = field(default_factory=list)
    purged: list[tuple[str, uuid.UUID]] = field(default_factory=list)


def reap(session: Session, settings: Settings, *, now: datetime | None = None) -> Sweep:
    """One pass: lapsed leases, never-sent and lost messages, and deleted work that stopped.

    The caller commits; the messages go out after the commit, folders of purged rows are for
    the caller to remove.
    """
    now = now or utcnow()
    sweep = Sweep()
    lease_cutoff = now - timedelta(seconds=settings.lease_timeout)
    for model in lifecycle.MODELS:
        lapsed = or_(model.heartbeat_at.is_(None), model.heartbeat_at < lease_cutoff)
        for row in session.scalars(
            lifecycle.select_work(model).where(model.status == Status.RUNNING, lapsed)
        ).all():
            silent = (now - (_aware(row.heartbeat_at) or now)).total_seconds()
            if row.attempts >= settings.max_attempts:
                reason = (
                    f"gave up after {row.attempts} attempts: its worker stopped answering "
                    f"({row.worker or 'unknown'}, silent {silent:.0f}s)"
                )
                if lifecycle.move(
                    session,
                    model,
                    row.id,
                    Status.ERROR,
                    from_=Status.RUNNING,
                    reason=reason,
                    where=[lapsed],
                    now=now,
                ):
                    sweep.gave_up.append(row.id)
                    log.warning("%s=%s %s", lifecycle.subject_of(model), row.id, reason)
                continue
            reason = f"requeued: worker {row.worker} stopped answering (silent {silent:.0f}s)"
            if lifecycle.requeue(
                session, model, row.id, reason, count_attempt=True, where=[lapsed], now=now
            ):
                sweep.requeued.append(row.id)
                log.warning("%s=%s %s", lifecycle.subject_of(model), row.id, reason)
    session.flush()
    for model in lifecycle.MODELS:  # back on the broker at once, not at the next pass
        requeued = session.scalars(
            lifecycle.select_work(model).where(model.id.in_(sweep.requeued))
        ).all()
        enqueue(session, list(requeued))

    workers = fleet.list_workers(session)
    # never reached the broker (its sender died, or the broker was down)
    unsent_cutoff = now - timedelta(seconds=2)
    for model in lifecycle.MODELS:
        rows = session.scalars(
            lifecycle.select_work(model)
            .where(
                model.status == Status.WAITING,
                model.enqueued_at.is_(None),
                model.updated_at < unsent_cutoff,
            )
            .order_by(model.created_at)
        ).all()
        sweep.sent += [r.id for r in rows]
        enqueue(session, list(rows))

    # lost by the broker (a restart without persistence): a worker that could run it sits idle.
    # Re-send only as many as there are such workers, oldest first, so a long queue is never
    # sent twice over.
    resend_cutoff = now - timedelta(seconds=settings.resend_after)
    idle = [
        w
        for w in workers
        if fleet.is_alive(w, settings.worker_stale_after, now)
        and w.current_job_id is None
        and w.idle_since is not None
        and (_aware(w.idle_since) or now) < resend_cutoff
    ]
    idle_train = [w for w in idle if w.kind in fleet.TRAIN_KINDS]
    idle_cpu = [w for w in idle if w.kind == "cpu"]
    if idle_train:
        stale_train = session.scalars(
            select(Job)
            .where(
                Job.status == Status.WAITING,
                Job.kind == JobKind.TRAIN,
                Job.enqueued_at < resend_cutoff,
            )
            .order_by(Job.created_at)
            .limit(50 * len(idle_train))
        ).all()
        chosen = _fits(stale_train, idle_train)
        sweep.sent += [j.id for j in chosen]
        enqueue(session, chosen)
    if idle_cpu:
        stale_cpu: list[Job | Dataset] = [
            *session.scalars(
                select(Job)
                .where(
                    Job.status == Status.WAITING,
                    Job.kind != JobKind.TRAIN,
                    Job.enqueued_at < resend_cutoff,
                )
                .order_by(Job.created_at)
                .limit(len(idle_cpu))
            ),
            *session.scalars(
                select(Dataset)
                .where(Dataset.status == Status.WAITING, Dataset.enqueued_at < resend_cutoff)
                .order_by(Dataset.created_at)
                .limit(len(idle_cpu))
            ),
        ]
        stale_cpu.sort(key=lambda r: _aware(r.created_at) or now)
        chosen_cpu = stale_cpu[: len(idle_cpu)]
        sweep.sent += [r.id for r in chosen_cpu]
        enqueue(session, chosen_cpu)

    # deleted while running, now stopped (its worker died before it could remove it)
    for model in lifecycle.MODELS:
        for row in session.scalars(
            lifecycle.select_work(model).where(
                model.delete_requested.is_(True),
                model.status.in_([Status.DONE, Status.ERROR, Status.ABORTED]),
            )
        ).all():
            purge(session, model, row.id)
            sweep.purged.append((lifecycle.subject_of(model), row.id))
    return sweep


def delete_work(session: Session, model: lifecycle.Work, row: Job | Dataset) -> bool:
    """Delete queued work; True when it is gone now, False when its worker removes it.

    Work not yet running is aborted (its queued message taken back) and removed; running work
    is hidden at once (`delete_requested`) and asked to stop, and the worker that runs it
    deletes the row and its folder when it has stopped (the reaper does, if that worker died).
    """
    row_id = row.id
    outcome = lifecycle.request_abort(session, model, row_id)
    if outcome.status == Status.RUNNING:
        session.execute(
            update(model)
            .where(model.id == row_id, model.status == Status.RUNNING)
            .values(delete_requested=True)
            .execution_options(synchronize_session=False)
        )
        if session.scalar(select(model.status).where(model.id == row_id)) == Status.RUNNING:
            return False
    if outcome.stopped_now:
        retract(session, [row])
    session.expunge(row)
    purge(session, model, row_id)
    return True


def purge(session: Session, model: lifecycle.Work, row_id: uuid.UUID) -> None:
    """Delete a row and its history (metrics, events and checkpoints go by cascade)."""
    lifecycle.forget(session, row_id)
    session.execute(delete(model).where(model.id == row_id))


def _fits(jobs: Sequence[Job], idle: list[Worker]) -> list[Job]:
    """Waiting training jobs that the idle workers can take, at most one per worker."""
    free = list(idle)
    chosen: list[Job] = []
    for job in jobs:
        target = job.requested_worker
        match = next(
            (
                w
                for w in free
                if target is None
                or w.name == target
                or any(g.get("uuid") == target for g in w.gpus or [])
            ),
            None,
        )
        if match is not None:
            chosen.append(job)
            free.remove(match)
        if not free:
            break
    return chosen
