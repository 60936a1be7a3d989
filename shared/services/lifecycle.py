"""The one owner of queued work's state: every status change of a job or a dataset import.

`move` is the only code that writes `status`. It is a compare-and-set (`UPDATE ... WHERE id
AND status = <from>`), checks the transition table once, and appends a `status_change` row,
which is the history (`status_history` in the API) and the SSE status events. Claim, finish,
requeue, abort and give-up are one-line uses of it. A worker holds its claim through an
attempt number: renewals and its finish only apply while the row is still running that
attempt on that worker, so a worker that lost its lease can never overwrite a newer attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Select, delete, select, update
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import InvalidTransition
from shared.models import Dataset, Job, Status, StatusChange

Work = type[Job] | type[Dataset]
# typed as Work, so a loop over the models sees each class (a bare tuple's items join to Base)
MODELS: tuple[Work, ...] = (Job, Dataset)
# SQLAlchemy types select()/Session.get() of `type[Job] | type[Dataset]` as their base class;
# a TypeVar bound to the union keeps it (see `get`, `select_work`)
_W = TypeVar("_W", bound=Job | Dataset)

# DIGITS's six states; running -> waiting is a requeue (lost worker, graceful shutdown)
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.INITIALIZED: frozenset({Status.WAITING, Status.ERROR, Status.ABORTED}),
    Status.WAITING: frozenset({Status.RUNNING, Status.ERROR, Status.ABORTED}),
    Status.RUNNING: frozenset({Status.DONE, Status.ERROR, Status.ABORTED, Status.WAITING}),
    Status.DONE: frozenset(),
    Status.ERROR: frozenset(),
    Status.ABORTED: frozenset(),
}

REASON_LIMIT = 2000


def subject_of(model: Work) -> str:
    """The name a model's rows have in the history."""
    return "job" if model is Job else "dataset"


def allowed(current: Status, to: Status) -> bool:
    """Whether DIGITS's state machine allows the move."""
    return to in TRANSITIONS[current]


def _values_for(
    model: Work, to: Status, reason: str | None, worker: str | None, now: datetime
) -> dict[str, Any]:
    values: dict[str, Any] = {"status": to, "updated_at": now}
    if to == Status.RUNNING:
        values.update(worker=worker, attempts=model.attempts + 1, started_at=now, heartbeat_at=now)
    elif to == Status.WAITING:
        values.update(worker=None, heartbeat_at=None, enqueued_at=None)
    elif to.is_final:
        values["finished_at"] = now
        if to == Status.DONE:
            values["progress"] = 1.0
        if to == Status.ERROR:
            values["error"] = reason
    return values


def move(
    session: Session,
    model: Work,
    ids: uuid.UUID | Iterable[uuid.UUID],
    to: Status,
    *,
    from_: Status | Iterable[Status],
    reason: str | None = None,
    worker: str | None = None,
    attempt: int | None = None,
    values: dict[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    now: datetime | None = None,
) -> list[uuid.UUID]:
    """Compare-and-set `from_ -> to` for each id; returns the ids that moved (in no order).

    `worker` and `attempt` given together guard the move: it applies only while the row runs
    that attempt on that worker (a running row's own finish, renewals, a worker's requeue).
    For a move to running, `worker` is the claimer instead. `where` adds conditions checked
    in the same statement (the reaper's "the lease has lapsed", so a renewal that lands first
    keeps the work).
    """
    wanted = [ids] if isinstance(ids, uuid.UUID) else list(ids)
    starts = [from_] if isinstance(from_, Status) else list(from_)
    for start in starts:
        if not allowed(start, to):
            raise InvalidTransition(f"cannot go from {start.value} to {to.value}")
    if reason is not None:
        reason = reason[:REASON_LIMIT]
    now = now or utcnow()
    moved: list[uuid.UUID] = []
    remaining = set(wanted)
    for start in starts:
        if not remaining:
            break
        stmt = update(model).where(model.id.in_(remaining), model.status == start, *where)
        if attempt is not None and to != Status.RUNNING:
            stmt = stmt.where(model.worker == worker, model.attempts == attempt)
        stmt = stmt.values(
            **_values_for(model, to, reason, worker, now), **(values or {})
        ).returning(model.id, model.attempts)
        rows = session.execute(stmt.execution_options(synchronize_session=False)).all()
        for row_id, attempts in rows:
            session.add(
                StatusChange(
                    subject=subject_of(model),
                    subject_id=row_id,
                    from_status=start,
                    to_status=to,
                    reason=reason,
                    worker=worker if to == Status.RUNNING else None,
                    attempt=attempts if to == Status.RUNNING else None,
                    at=now,
                )
            )
            moved.append(row_id)
            remaining.discard(row_id)
    if moved:
        session.flush()
        for row_id in moved:  # loaded copies in this session must not show the old state
            obj = session.identity_map.get(session.identity_key(model, row_id))
            if obj is not None:
                session.expire(obj)
    return moved


def record_created(session: Session, obj: Job | Dataset, *, now: datetime | None = None) -> None:
    """The first entry of a new row's history (it was inserted `initialized`)."""
    session.flush()
    session.add(
        StatusChange(
            subject=subject_of(type(obj)),
            subject_id=obj.id,
            from_status=None,
            to_status=Status.INITIALIZED,
            at=now or obj.created_at or utcnow(),
        )
    )


def create(session: Session, rows: Sequence[Job | Dataset]) -> None:
    """Insert new work (`initialized`) in one flush and queue it (`waiting`)."""
    if not rows:
        return
    now = utcnow()
    model = type(rows[0])
    for row in rows:
        row.status = Status.INITIALIZED
        row.created_at = row.created_at or now
    session.add_all(rows)
    session.flush()
    for row in rows:
        record_created(session, row, now=now)
    move(session, model, [r.id for r in rows], Status.WAITING, from_=Status.INITIALIZED, now=now)


def claim(
    session: Session, model: Work, obj_id: uuid.UUID, worker: str, *, now: datetime | None = None
) -> Job | Dataset | None:
    """Waiting -> running for `worker`; None when there is nothing to claim (a duplicate)."""
    if not move(
        session, model, obj_id, Status.RUNNING, from_=Status.WAITING, worker=worker, now=now
    ):
        return None
    return get(session, model, obj_id, populate_existing=True)


def get(
    session: Session, model: type[_W], obj_id: uuid.UUID, *, populate_existing: bool = False
) -> _W | None:
    """The row of `model` with this id, or None (typed `Job | Dataset` for a `Work`)."""
    return session.get(model, obj_id, populate_existing=populate_existing)


def select_work(model: type[_W]) -> Select[_W]:
    """`select(model)`, with rows typed `Job | Dataset` when `model` is a `Work`."""
    return select(model)


def finish(
    session: Session,
    model: Work,
    obj_id: uuid.UUID,
    to: Status,
    *,
    worker: str,
    attempt: int,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Running -> done/error/aborted, only while `worker` still holds `attempt`."""
    return bool(
        move(
            session,
            model,
            obj_id,
            to,
            from_=Status.RUNNING,
            worker=worker,
            attempt=attempt,
            reason=reason,
            values=values,
        )
    )


def requeue(
    session: Session,
    model: Work,
    obj_id: uuid.UUID,
    reason: str,
    *,
    count_attempt: bool,
    worker: str | None = None,
    attempt: int | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    now: datetime | None = None,
) -> bool:
    """Running -> waiting; a graceful stop gives its attempt back (the reaper guards by lease)."""
    values = {} if count_attempt else {"attempts": model.attempts - 1}
    return bool(
        move(
            session,
            model,
            obj_id,
            Status.WAITING,
            from_=Status.RUNNING,
            reason=reason,
            worker=worker,
            attempt=attempt,
            values=values,
            where=where,
            now=now,
        )
    )


@dataclass(frozen=True)
class AbortOutcome:
    """What an abort did: ended the work at once, or asked its worker to stop."""

    status: Status
    stopped_now: bool


def request_abort(session: Session, model: Work, obj_id: uuid.UUID) -> AbortOutcome:
    """End work that has not started; flag running work so its worker stops at the next check.

    Both are compare-and-set, so an abort racing a claim either wins (the claim finds nothing)
    or loses (the flag is set on the running row); it never overwrites the claim.
    """
    for _ in range(5):
        current = session.scalar(select(model.status).where(model.id == obj_id))
        if current is None:
            return AbortOutcome(Status.ABORTED, True)
        if current.is_final:
            return AbortOutcome(current, False)
        if current in (Status.INITIALIZED, Status.WAITING):
            if move(
                session, model, obj_id, Status.ABORTED, from_=current, reason="aborted by user"
            ):
                return AbortOutcome(Status.ABORTED, True)
            continue
        # Session.execute is typed as returning a Result; an UPDATE's is a CursorResult
        flagged = cast(
            CursorResult[Any],
            session.execute(
                update(model)
                .where(model.id == obj_id, model.status == Status.RUNNING)
                .values(abort_requested=True)
                .execution_options(synchronize_session=False)
            ),
        )
        if flagged.rowcount == 1:
            obj = session.identity_map.get(session.identity_key(model, obj_id))
            if obj is not None:
                session.expire(obj)
            return AbortOutcome(Status.RUNNING, False)
    raise InvalidTransition(f"{subject_of(model)} {obj_id} kept changing; try again")


@dataclass(frozen=True)
class Lease:
    """A renewal's answer: whether the worker still holds the work, and whether to stop."""

    alive: bool
    abort_requested: bool = False
    delete_requested: bool = False


def renew(
    session: Session,
    model: Work,
    obj_id: uuid.UUID,
    worker: str,
    *,
    attempt: int,
    now: datetime | None = None,
    values: dict[str, Any] | None = None,
) -> Lease:
    """Renew the lease of a running attempt; not alive when it was reaped, finished or deleted."""
    row = session.execute(
        update(model)
        .where(
            model.id == obj_id,
            model.status == Status.RUNNING,
            model.worker == worker,
            model.attempts == attempt,
        )
        .values(heartbeat_at=now or utcnow(), **(values or {}))
        .returning(model.abort_requested, model.delete_requested)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return Lease(alive=False)
    return Lease(alive=True, abort_requested=bool(row[0]), delete_requested=bool(row[1]))


def history(session: Session, subject_id: uuid.UUID) -> list[StatusChange]:
    """The status changes of one job or dataset, oldest first."""
    return list(
        session.scalars(
            select(StatusChange)
            .where(StatusChange.subject_id == subject_id)
            .order_by(StatusChange.id)
        )
    )


def histories(
    session: Session, subject_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[StatusChange]]:
    """The histories of many rows in one query."""
    wanted = list(subject_ids)
    found: dict[uuid.UUID, list[StatusChange]] = {i: [] for i in wanted}
    if wanted:
        for change in session.scalars(
            select(StatusChange)
            .where(StatusChange.subject_id.in_(wanted))
            .order_by(StatusChange.id)
        ):
            found[change.subject_id].append(change)
    return found


def changes_after(
    session: Session, subject_ids: Iterable[uuid.UUID], after: int, limit: int = 500
) -> list[StatusChange]:
    """Status changes of these rows after a cursor, oldest first (the SSE status events)."""
    return list(
        session.scalars(
            select(StatusChange)
            .where(StatusChange.subject_id.in_(list(subject_ids)), StatusChange.id > after)
            .order_by(StatusChange.id)
            .limit(limit)
        )
    )


def forget(session: Session, subject_id: uuid.UUID) -> None:
    """Remove a deleted row's history (it has no foreign key: two tables share it)."""
    session.execute(delete(StatusChange).where(StatusChange.subject_id == subject_id))


def as_entry(change: StatusChange) -> dict[str, Any]:
    """A change as the API and the event stream show it."""
    entry: dict[str, Any] = {"status": change.to_status.value, "at": change.at.isoformat()}
    if change.reason:
        entry["reason"] = change.reason
    if change.worker:
        entry["worker"] = change.worker
    if change.attempt is not None:
        entry["attempt"] = change.attempt
    return entry
