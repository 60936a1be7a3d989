"""The live event stream of jobs: status changes (from the history) merged with what workers
report (progress, metrics, checkpoints, log lines), in order, resumable from a cursor.

The two sources are two append-only tables with their own ids, so a cursor is the pair
"<last job_event id>.<last status_change id>"; a client treats it as an opaque string and
sends it back as `Last-Event-ID`. Each row is delivered exactly once across reconnects.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import JobEvent, StatusChange
from shared.services import lifecycle

MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    """Where a stream stands: the last event and the last status change it delivered."""

    event: int = 0
    status: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> Cursor:
        """`E.S` (what streams send), or a bare `E` (older clients); anything else: the start."""
        if not raw:
            return cls()
        head, _, tail = raw.strip().partition(".")
        try:
            event, status = int(head), int(tail or 0)
        except ValueError:
            return cls()
        if not (0 <= event <= MAX_ID and 0 <= status <= MAX_ID):
            return cls()
        return cls(event, status)

    def __str__(self) -> str:
        return f"{self.event}.{self.status}"


@dataclass(frozen=True)
class StreamEvent:
    """One event as SSE sends it."""

    cursor: Cursor
    kind: str
    data: dict[str, Any]
    at: datetime


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=utcnow().tzinfo)


def read(
    session: Session, job_ids: list[uuid.UUID], cursor: Cursor, limit: int = 500
) -> list[StreamEvent]:
    """The events of these jobs after the cursor, oldest first (at most about `limit`)."""
    if not job_ids:
        return []
    events = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id.in_(job_ids), JobEvent.id > cursor.event)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )
    changes = lifecycle.changes_after(session, job_ids, cursor.status, limit)
    # when one source filled its page, the other may only go as far in time, or order breaks
    horizon: datetime | None = None
    if len(events) == limit:
        horizon = _aware(events[-1].created_at)
    if len(changes) == limit:
        last = _aware(changes[-1].at)
        horizon = last if horizon is None else min(horizon, last)
    merged: list[tuple[datetime, int, Any]] = [(_aware(e.created_at), 1, e) for e in events] + [
        (_aware(c.at), 0, c) for c in changes
    ]
    merged.sort(key=lambda item: (item[0], item[1], item[2].id))
    out: list[StreamEvent] = []
    event_id, status_id = cursor.event, cursor.status
    for at, _, row in merged:
        if horizon is not None and at > horizon:
            break
        if isinstance(row, StatusChange):
            status_id = row.id
            data = {"job_id": str(row.subject_id), **lifecycle.as_entry(row)}
            kind = "status"
        else:
            event_id = row.id
            data = {"job_id": str(row.job_id), **row.data}
            kind = row.kind
        out.append(StreamEvent(Cursor(event_id, status_id), kind, data, at))
    return out
