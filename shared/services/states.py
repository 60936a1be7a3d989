"""The one place where job and dataset states change (DIGITS's six states)."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import InvalidTransition
from shared.models import Dataset, Job, Status

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.INITIALIZED: frozenset({Status.WAITING, Status.ERROR, Status.ABORTED}),
    Status.WAITING: frozenset({Status.RUNNING, Status.ERROR, Status.ABORTED}),
    # running -> waiting is a requeue (lost worker, graceful shutdown)
    Status.RUNNING: frozenset({Status.DONE, Status.ERROR, Status.ABORTED, Status.WAITING}),
    Status.DONE: frozenset(),
    Status.ERROR: frozenset(),
    Status.ABORTED: frozenset(),
}


class Stateful(Protocol):
    status: str
    status_history: list[dict[str, Any]]
    started_at: Any
    finished_at: Any
    progress: float
    error: str | None


def transition(obj: Stateful, new: Status, *, reason: str | None = None) -> None:
    """Move obj to `new`, recording it in the history; refuse moves DIGITS never made."""
    current = Status(obj.status)
    if new not in ALLOWED[current]:
        raise InvalidTransition(f"cannot go from {current.value} to {new.value}")
    now = utcnow()
    entry: dict[str, Any] = {"status": new.value, "at": now.isoformat()}
    if reason:
        entry["reason"] = reason
    obj.status = new.value
    # a new list, so SQLAlchemy sees the change of a JSON column
    obj.status_history = [*(obj.status_history or []), entry]
    if new == Status.RUNNING:
        obj.started_at = now
    if new.is_final:
        obj.finished_at = now
    if new == Status.DONE:
        obj.progress = 1.0
    if new == Status.ERROR:
        obj.error = reason


def claim(
    session: Session, model: type[Dataset] | type[Job], obj_id: uuid.UUID, worker: str
) -> Dataset | Job | None:
    """Compare-and-set waiting -> running; a duplicate delivery claims nothing and gets None."""
    result = session.execute(
        update(model)
        .where(model.id == obj_id, model.status == Status.WAITING.value)
        .values(
            status=Status.RUNNING.value,
            worker=worker,
            attempts=model.attempts + 1,
            started_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    obj: Dataset | Job | None = session.get(model, obj_id, populate_existing=True)  # type: ignore[assignment]
    assert obj is not None
    obj.status_history = [
        *(obj.status_history or []),
        {"status": Status.RUNNING.value, "at": utcnow().isoformat(), "worker": worker},
    ]
    session.flush()
    return obj


def finish(
    session: Session,
    model: type[Dataset] | type[Job],
    obj_id: uuid.UUID,
    new: Status,
    *,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set running -> done/error/aborted; False when another moved it first."""
    stmt = (
        update(model)
        .where(model.id == obj_id, model.status == Status.RUNNING.value)
        .values(status=new.value, finished_at=utcnow(), **(values or {}))
        .execution_options(synchronize_session=False)
    )
    if new == Status.DONE:
        stmt = stmt.values(progress=1.0)
    if new == Status.ERROR:
        stmt = stmt.values(error=reason)
    result = session.execute(stmt)
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    row: Dataset | Job | None = session.get(model, obj_id, populate_existing=True)  # type: ignore[assignment]
    assert row is not None
    entry: dict[str, Any] = {"status": new.value, "at": utcnow().isoformat()}
    if reason:
        entry["reason"] = reason
    row.status_history = [*(row.status_history or []), entry]
    session.flush()
    return True
