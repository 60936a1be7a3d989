"""The one worker-side lifecycle of every kind of queued work: claim, lease, run, finish.

A task calls `run(model, id, work)`. The row is claimed with a compare-and-set; a lease thread
renews it in the background for as long as the work runs (not tied to progress calls, so a
long silent step such as extracting an archive or loading a big model keeps its lease) and
carries the abort flag back; the work reports progress and checks `should_stop()`; its outcome
is recorded with one guarded `finish` (or `requeue`). A row deleted while it ran is removed
here once it has stopped. New kinds of work add only their `work` function.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from shared import artifacts
from shared.db import session_scope
from shared.models import Job, Status
from shared.services import dispatch, lifecycle
from worker import context

log = logging.getLogger("digits.worker.lifecycle")


class Stopped(Exception):
    """Raised by work that saw `should_stop()`: aborted, or the lease was lost."""


class WorkError(Exception):
    """Work that cannot go on; the message is for the person who asked for it (no paths)."""


@dataclass
class Outcome:
    """How the work ended: a final status (or `waiting` to give it back) and what to record."""

    status: Status
    reason: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    count_attempt: bool = True  # for `waiting`: a graceful shutdown gives its attempt back
    lost: bool = False  # the lease was lost: another worker may hold the row now


class Lease:
    """Renews a running attempt's lease in the background; learns of aborts and losses."""

    def __init__(self, model: lifecycle.Work, row_id: uuid.UUID, attempt: int) -> None:
        ctx = context.get()
        self.model, self.row_id, self.attempt = model, row_id, attempt
        self.interval = max(0.05, ctx.settings.lease_timeout / 4)
        self.aborted = threading.Event()
        self.lost = threading.Event()
        self.deleted = threading.Event()
        self._done = threading.Event()
        self._progress: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=f"lease-{row_id}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def report(self, **values: Any) -> None:
        """Columns to write with the next renewal (progress of the work)."""
        with self._lock:
            self._progress = {**(self._progress or {}), **values}

    def renew_now(self) -> None:
        ctx = context.get()
        with self._lock:
            values, self._progress = self._progress, None
        try:
            with session_scope(ctx.sessions) as session:
                state = lifecycle.renew(
                    session, self.model, self.row_id, ctx.name, attempt=self.attempt, values=values
                )
            self.failures = 0
        except Exception as exc:  # a database outage: keep working, the reaper decides
            self.failures += 1
            with self._lock:
                if values and self._progress is None:
                    self._progress = values
            log.warning(
                "%s=%s lease renewal failed (%d): %s",
                lifecycle.subject_of(self.model),
                self.row_id,
                self.failures,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return
        if not state.alive:
            if not self.lost.is_set():
                log.warning(
                    "%s=%s lease lost: it was requeued, finished or deleted elsewhere",
                    lifecycle.subject_of(self.model),
                    self.row_id,
                )
            self.lost.set()
        if state.abort_requested:
            self.aborted.set()
        if state.delete_requested:
            self.deleted.set()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.renew_now()

    def should_stop(self) -> bool:
        return self.aborted.is_set() or self.lost.is_set()


@dataclass
class Running:
    """What a piece of work sees of its lifecycle."""

    model: lifecycle.Work
    id: uuid.UUID
    attempt: int
    row: Any  # a detached copy of the claimed row (its request, options, source)
    lease: Lease

    def progress(self, fraction: float, **values: Any) -> None:
        """Record how far it has come (written with the next renewal, at most ~4 times a lease)."""
        self.lease.report(progress=round(min(max(fraction, 0.0), 0.99), 4), **values)

    def should_stop(self) -> bool:
        """Aborted by its owner, or the lease was lost (another worker may hold it now)."""
        return self.lease.should_stop()

    def check(self) -> None:
        """Raise Stopped when the work should stop."""
        if self.should_stop():
            raise Stopped


Work = Callable[[Running], Outcome]


def run(model: lifecycle.Work, row_id: uuid.UUID, work: Work) -> Outcome | None:
    """Claim the row, run `work` under a renewed lease, and record how it ended.

    Returns None when there was nothing to claim (a duplicate delivery, aborted or gone).
    """
    ctx = context.get()
    subject = lifecycle.subject_of(model)
    with session_scope(ctx.sessions) as session:
        row = lifecycle.claim(session, model, row_id, ctx.name)
        if row is None:
            log.info(
                "%s=%s nothing to claim (duplicate delivery, aborted or gone)", subject, row_id
            )
            return None
        attempt = row.attempts
        session.expunge(row)
    log.info("%s=%s attempt %d starts on %s", subject, row_id, attempt, ctx.name)
    lease = Lease(model, row_id, attempt).start()
    running = Running(model, row_id, attempt, row, lease)
    ctx.current_job = row_id if model is Job else None
    if ctx.heartbeat is not None:
        ctx.heartbeat.beat_now()
    started = time.monotonic()
    try:
        outcome = _guarded(work, running)
    finally:
        lease.stop()
        ctx.current_job = None
        if ctx.heartbeat is not None:
            ctx.heartbeat.beat_now()
    if lease.lost.is_set():
        log.warning("%s=%s stopped: its lease was lost; nothing recorded", subject, row_id)
        return Outcome(outcome.status, outcome.reason, outcome.values, lost=True)
    record(model, row_id, attempt, outcome)
    log.info(
        "%s=%s attempt %d ended %s in %.2fs%s",
        subject,
        row_id,
        attempt,
        outcome.status.value,
        time.monotonic() - started,
        f": {outcome.reason}" if outcome.reason else "",
    )
    return outcome


def _guarded(work: Work, running: Running) -> Outcome:
    try:
        return work(running)
    except Stopped:
        if running.lease.lost.is_set():
            return Outcome(Status.ABORTED, "its lease was lost", lost=True)
        return Outcome(Status.ABORTED, "aborted by user")
    except WorkError as exc:
        log.warning("%s=%s failed: %s", lifecycle.subject_of(running.model), running.id, exc)
        return Outcome(Status.ERROR, str(exc) or type(exc).__name__)
    except Exception as exc:
        log.exception("%s=%s crashed", lifecycle.subject_of(running.model), running.id)
        return Outcome(Status.ERROR, f"internal error: {type(exc).__name__}")


def record(model: lifecycle.Work, row_id: uuid.UUID, attempt: int, outcome: Outcome) -> None:
    """Finish (or give back) the attempt; remove the row if it was deleted while it ran."""
    ctx = context.get()
    with session_scope(ctx.sessions) as session:
        if outcome.status == Status.WAITING:
            if lifecycle.requeue(
                session,
                model,
                row_id,
                outcome.reason or "requeued",
                count_attempt=outcome.count_attempt,
                worker=ctx.name,
                attempt=attempt,
            ):
                requeued = lifecycle.get(session, model, row_id)
                if requeued is not None:
                    dispatch.enqueue(session, [requeued])
            return
        moved = lifecycle.finish(
            session,
            model,
            row_id,
            outcome.status,
            worker=ctx.name,
            attempt=attempt,
            reason=outcome.reason,
            values=outcome.values,
        )
        deleted = bool(session.scalar(select(model.delete_requested).where(model.id == row_id)))
        if deleted and moved:
            dispatch.purge(session, model, row_id)
    if deleted and moved:
        if model is Job:
            artifacts.remove_job(ctx.settings, row_id)
        else:
            artifacts.remove_dataset(ctx.settings, row_id)
        log.info("%s=%s deleted while it ran: removed", lifecycle.subject_of(model), row_id)
