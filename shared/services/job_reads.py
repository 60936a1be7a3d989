"""The job reads that dashboards poll (one job, a page of jobs): Core rows, JSON bytes.

Through the ORM one job read cost about 800 us of CPU (a session, the identity map, two
queries and the ROLLBACK that ends the session) and a 25-job page 3 ms; here the rows are
plain Core rows, views are `jobs.view` (the same mapping as JobRead, so the same JSON),
serialised without validating them again.

A finished job (done, error, aborted) changes only by an edit, which moves its `updated_at`:
its JSON is kept, keyed by (id, updated_at), so a page of finished jobs costs one narrow
query. A running or waiting job is always built afresh (its ETA depends on the clock, its
queue position on the others).

The statements run through a `Run` (see `api.reads`): async psycopg on PostgreSQL, the
SQLAlchemy engine in a thread elsewhere.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from sqlalchemy import ARRAY, ColumnElement, Select, Uuid, any_, bindparam, false, func, select

from shared.errors import NotFound
from shared.models import Job, Status, StatusChange, User
from shared.services import datasets as datasets_service
from shared.services import jobs as jobs_service

# runs a statement with its parameters; `dialect` picks statement variants
Run = Callable[[Select[Any], dict[str, Any]], Awaitable[Sequence[Any]]]

FINAL = frozenset({Status.DONE.value, Status.ERROR.value, Status.ABORTED.value})

_JOB = Job.__table__
_CHANGE = StatusChange.__table__
# the columns `jobs.view` reads (each value converted costs: not the lease and queue columns)
_VIEWED = tuple(
    _JOB.c[name]
    for name in (
        "id", "kind", "name", "group_name", "notes", "status", "error", "dataset_id", "request",
        "worker", "attempts", "progress", "epoch", "step", "total_steps", "abort_requested",
        "best", "last", "created_at", "started_at", "finished_at", "updated_at",
    )
)  # fmt: skip
# what `jobs.view` reads of a change, named as the ORM attributes are
_HISTORY = (
    _CHANGE.c.id.label("change_id"),
    _CHANGE.c.to_status,
    _CHANGE.c.at,
    _CHANGE.c.reason,
    _CHANGE.c.worker.label("change_worker"),
    _CHANGE.c.attempt,
)


class _Change:
    """A status_change row under the attribute names `jobs.view` reads."""

    __slots__ = ("at", "attempt", "reason", "to_status", "worker")

    def __init__(self, row: Any) -> None:
        self.to_status, self.at, self.reason = row.to_status, row.at, row.reason
        self.worker, self.attempt = row.change_worker, row.attempt


class _Finished:
    """JSON of finished jobs by (id, updated_at), the most recently used 20,000 (about 25 MB)."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[uuid.UUID, datetime], bytes] = OrderedDict()
        self._lock = threading.Lock()  # the threaded reads share it

    def get(self, key: tuple[uuid.UUID, datetime]) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[uuid.UUID, datetime], body: bytes) -> None:
        with self._lock:
            self._items[key] = body
            while len(self._items) > self.LIMIT:
                self._items.popitem(last=False)


finished = _Finished()


def to_json(data: Any) -> bytes:
    """Views as JSON, as JobRead's serialiser writes them, without validating them again
    (validation was a fifth of a jobs page's time); NaN and infinities become null."""
    return pydantic_core.to_json(data, inf_nan_mode="null")


def _job_json(row: Any, history: list[_Change]) -> bytes:
    """One job's JSON; kept when it is finished."""
    # a row and a _Change have the ORM objects' attribute names, which is all `view` reads
    body = to_json(jobs_service.view(row, history))  # type: ignore[arg-type]
    if str(row.status) in FINAL:
        finished.put((row.id, row.updated_at), body)
    return body


# Statements are built once with bound parameters: building a 20-column select and its cache
# key on every request cost more CPU (about 250 us) than running it
_READ_ONE = (
    select(*_VIEWED, _JOB.c.owner_id, _JOB.c.delete_requested, *_HISTORY)
    .outerjoin(_CHANGE, _CHANGE.c.subject_id == _JOB.c.id)
    .where(_JOB.c.id == bindparam("job_id"))
    .order_by(_CHANGE.c.id)
)
_PEEK_ONE = select(
    _JOB.c.status, _JOB.c.updated_at, _JOB.c.owner_id, _JOB.c.delete_requested
).where(_JOB.c.id == bindparam("job_id"))


async def read_job(run: Run, job_id: uuid.UUID, user: User) -> tuple[bytes, str]:
    """One job's JSON and its status (NotFound as `jobs.get_job` says it): a finished job
    from memory after one narrow lookup, any other with its history in one query."""
    peek = await run(_PEEK_ONE, {"job_id": job_id})
    if not peek or peek[0].delete_requested or not datasets_service.visible(user, peek[0].owner_id):
        raise NotFound(f"job {job_id} does not exist", code="job_not_found")
    status = str(peek[0].status)
    if status in FINAL:
        kept = finished.get((job_id, peek[0].updated_at))
        if kept is not None:
            return kept, status
    rows = await run(_READ_ONE, {"job_id": job_id})
    if not rows or rows[0].delete_requested:  # deleted between the two reads
        raise NotFound(f"job {job_id} does not exist", code="job_not_found")
    history = [_Change(r) for r in rows if r.change_id is not None]
    return _job_json(rows[0], history), str(rows[0].status)


def with_queue_entry(body: bytes, position: int, reason: str) -> bytes:
    """A waiting job's JSON with where it stands in the queue, and why."""
    view = pydantic_core.from_json(body)
    view["queue_position"], view["waiting_reason"] = position, reason
    return to_json(view)


_HISTORIES = {
    # PostgreSQL takes the ids as one array parameter (one statement for any number of them)
    "postgresql": (
        select(_CHANGE.c.subject_id, *_HISTORY)
        .where(_CHANGE.c.subject_id == any_(bindparam("ids", type_=ARRAY(Uuid()))))
        .order_by(_CHANGE.c.id)
    ),
    "other": (
        select(_CHANGE.c.subject_id, *_HISTORY)
        .where(_CHANGE.c.subject_id.in_(bindparam("ids", expanding=True)))
        .order_by(_CHANGE.c.id)
    ),
}
_ROWS = {
    "postgresql": select(*_VIEWED).where(
        _JOB.c.id == any_(bindparam("ids", type_=ARRAY(Uuid()))),
        _JOB.c.delete_requested == false(),
    ),
    "other": select(*_VIEWED).where(
        _JOB.c.id.in_(bindparam("ids", expanding=True)), _JOB.c.delete_requested == false()
    ),
}
_LISTS: dict[tuple[bool, bool, bool, bool], tuple[Select[Any], Select[Any]]] = {}


def _list_statements(
    owned: bool, status: bool, group: bool, dataset: bool
) -> tuple[Select[Any], Select[Any]]:
    """The page and count statements of one combination of filters (16 at most), cached."""
    key = (owned, status, group, dataset)
    if key in _LISTS:
        return _LISTS[key]
    # `= false`, not `IS false`: the listing index (delete_requested, created_at, id) needs it
    conditions: list[ColumnElement[bool]] = [_JOB.c.delete_requested == false()]
    if owned:
        conditions.append(_JOB.c.owner_id == bindparam("owner_id"))
    if status:
        conditions.append(_JOB.c.status == bindparam("status", type_=_JOB.c.status.type))
    if group:
        conditions.append(_JOB.c.group_name == bindparam("group"))
    if dataset:
        conditions.append(_JOB.c.dataset_id == bindparam("dataset_id"))
    count = select(func.count()).select_from(_JOB).where(*conditions)
    # the page's ids and versions with the filter's count (the database computes it once):
    # the rows of the jobs not kept in memory are read next, then their histories
    page = (
        select(
            _JOB.c.id,
            _JOB.c.status,
            _JOB.c.updated_at,
            count.scalar_subquery().label("total_count"),
        )
        .where(*conditions)
        # id ascending breaks ties as it always has (a sweep's jobs can share a created_at):
        # PostgreSQL scans the index backward and sorts only runs of equal created_at
        .order_by(_JOB.c.created_at.desc(), _JOB.c.id)
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    _LISTS[key] = (page, count)
    return page, count


async def list_jobs_json(
    run: Run,
    dialect: str,
    user: User,
    *,
    status: Status | None = None,
    group: str | None = None,
    dataset_id: uuid.UUID | None = None,
    page: int = 1,
    per_page: int = 25,
) -> bytes:
    """A page of jobs as Page[JobRead] JSON, newest first, with the count of the filter."""
    paged, count = _list_statements(
        not user.is_admin, status is not None, group is not None, dataset_id is not None
    )
    params: dict[str, Any] = {
        "owner_id": user.id,
        # the value: a driver may bind an enum member by its name
        "status": status.value if status is not None else None,
        "group": group,
        "dataset_id": dataset_id,
        "offset": (page - 1) * per_page,
        "limit": per_page,
    }
    entries = await run(paged, params)
    bodies: dict[uuid.UUID, bytes] = {}
    for entry in entries:
        if str(entry.status) in FINAL:
            kept = finished.get((entry.id, entry.updated_at))
            if kept is not None:
                bodies[entry.id] = kept
    missing = [e.id for e in entries if e.id not in bodies]
    if missing:
        variant = "postgresql" if dialect == "postgresql" else "other"
        histories: dict[uuid.UUID, list[_Change]] = {i: [] for i in missing}
        for change in await run(_HISTORIES[variant], {"ids": missing}):
            histories[change.subject_id].append(_Change(change))
        for row in await run(_ROWS[variant], {"ids": missing}):
            bodies[row.id] = _job_json(row, histories[row.id])
    # past the last page there is no row to carry the count
    if entries:
        total = int(entries[0].total_count)
    else:
        found = await run(count, params)
        total = int(found[0][0]) if found else 0
    # a job deleted between the two reads drops out of its page
    items = b",".join(bodies[e.id] for e in entries if e.id in bodies)
    tail = f'],"total":{total},"page":{page},"per_page":{per_page}}}'.encode()
    return b'{"items":[' + items + tail
