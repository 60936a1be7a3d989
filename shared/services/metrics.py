"""Metric series shaped for charts: columns per series, decimated on the server.

Decimation is min-max per bucket (the first and last points are always kept, and in each
bucket the lowest and the highest value, in step order), so spikes and dips survive a
100,000-point series drawn with 2,000 points, as M4/min-max decimation does for line charts.

The points are read as columns, not rows: on PostgreSQL each series comes back as one packed
binary string per column (`string_agg` of `float8send`...), which numpy reads without a Python
object per point. A 100,000-point series read through ORM rows took 1.05 s; packed, about
50 ms, most of it PostgreSQL's scan.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydantic_core
from sqlalchemy import ColumnElement, false, select
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.models import Job, JobKind, MetricPoint, User
from shared.services import datasets as datasets_service

COLUMNS = ("step", "epoch", "value", "time")

_POINT = MetricPoint.__table__


def minmax_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (sorted) of at most `max_points` points that keep each bucket's extremes."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    if max_points < 4:  # too few for extremes: the ends (and the middle, for three)
        picks = [0, (n - 1) // 2, n - 1] if max_points == 3 else [0, n - 1][: max(max_points, 1)]
        return np.asarray(picks, dtype=np.int64)
    inner = values[1:-1]
    m = len(inner)
    buckets = (max_points - 2) // 2
    # integer edges (floor(b * m / buckets)): the SQL-free reference and this agree exactly
    edges = np.arange(buckets + 1, dtype=np.int64) * m // buckets
    width = int(np.max(np.diff(edges)))
    # one row per bucket, padded past its end: argmin/argmax per row, all buckets at once
    grid = edges[:-1, None] + np.arange(width, dtype=np.int64)[None, :]
    inside = grid < edges[1:, None]
    grid = np.minimum(grid, m - 1)
    cells = inner[grid]
    lows = np.where(inside, cells, np.inf).argmin(axis=1)
    highs = np.where(inside, cells, -np.inf).argmax(axis=1)
    rows = np.arange(buckets)
    lo, hi = 1 + grid[rows, lows], 1 + grid[rows, highs]
    # buckets are in order, so each one's pair, smaller first, keeps the whole list sorted
    # (np.unique's sort was an eighth of a 100-series batch read)
    pairs = np.column_stack((np.minimum(lo, hi), np.maximum(lo, hi))).ravel()
    keep = np.concatenate(([0], pairs, [n - 1]))
    return keep[np.concatenate(([True], keep[1:] != keep[:-1]))]


@dataclass
class _Series:
    """One series as numpy columns in point order."""

    ids: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)


# column -> (SQL of its packed binary form, numpy dtype of one big-endian item)
_PACKED: dict[str, tuple[str, str]] = {
    "id": ("int8send(id)", ">i8"),
    "value": ("float8send(value)", ">f8"),
    "epoch": ("float8send(epoch)", ">f8"),
    "step": ("int4send(step)", ">i4"),
    "time": ("float8send(date_part('epoch', created_at))", ">f8"),
}


def _read_packed(
    session: Session,
    job_ids: list[uuid.UUID],
    names: list[str] | None,
    since: int,
    wanted: list[str],
) -> dict[tuple[uuid.UUID, str], _Series]:
    """PostgreSQL: every (job, series) as one row of packed columns."""
    parts = ["id", *wanted]
    aggregates = ", ".join(f"string_agg({_PACKED[c][0]}, ''::bytea)" for c in parts)
    where = "job_id = ANY(%(jobs)s) AND id > %(since)s" + (
        " AND name = ANY(%(names)s)" if names else ""
    )
    table = MetricPoint.__tablename__
    sql = f"SELECT job_id, name, {aggregates} FROM {table} WHERE {where} GROUP BY job_id, name"
    # psycopg's binary results, which SQLAlchemy does not ask for: a packed column arrives as
    # it is, not as hex text twice its size (40% of the read of a 100,000-point series)
    raw = session.connection().connection.driver_connection
    assert raw is not None  # a live session's connection
    found: dict[tuple[uuid.UUID, str], _Series] = {}
    with raw.cursor(binary=True) as cur:
        cur.execute(sql, {"jobs": job_ids, "since": since, "names": names or []})
        for job_id, name, *packed in cur:
            arrays = {
                c: np.frombuffer(b, dtype=_PACKED[c][1]) for c, b in zip(parts, packed, strict=True)
            }
            ids = arrays.pop("id")
            if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
                # string_agg keeps the scan's order, which SQL does not promise: sort here
                order = np.argsort(ids, kind="stable")
                ids, arrays = ids[order], {c: a[order] for c, a in arrays.items()}
            found[(job_id, name)] = _Series(ids, arrays)
    return found


def _read_rows(
    session: Session,
    job_ids: list[uuid.UUID],
    names: list[str] | None,
    since: int,
    wanted: list[str],
) -> dict[tuple[uuid.UUID, str], _Series]:
    """Any other database (SQLite, embedded): only the needed columns, as plain rows."""
    sources: dict[str, ColumnElement[Any]] = {
        "value": _POINT.c.value,
        "epoch": _POINT.c.epoch,
        "step": _POINT.c.step,
        "time": _POINT.c.created_at,
    }
    query = select(
        _POINT.c.job_id, _POINT.c.name, _POINT.c.id, *(sources[c].label(c) for c in wanted)
    ).where(_POINT.c.job_id.in_(job_ids), _POINT.c.id > since)
    if names:
        query = query.where(_POINT.c.name.in_(names))
    grouped: dict[tuple[uuid.UUID, str], list[Any]] = {}
    for row in session.execute(query.order_by(_POINT.c.id)):
        grouped.setdefault((row.job_id, row.name), []).append(row)
    found: dict[tuple[uuid.UUID, str], _Series] = {}
    for key, rows in grouped.items():
        series = _Series(np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows)))
        for c in wanted:
            items: Iterable[Any] = (getattr(r, c) for r in rows)
            if c == "time":
                items = (_epoch_seconds(t) for t in items)
            dtype = np.int64 if c == "step" else np.float64
            series.columns[c] = np.fromiter(items, dtype=dtype, count=len(rows))
        found[key] = series
    return found


def _epoch_seconds(ts: datetime) -> float:
    # SQLite hands back naive datetimes; they were written in UTC
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def read_series(
    session: Session,
    starts: dict[uuid.UUID, datetime | None],
    *,
    names: list[str] | None,
    since: int = 0,
    max_points: int | None = None,
    columns: Sequence[str] = COLUMNS,
) -> dict[uuid.UUID, dict[str, Any]]:
    """The columnar, decimated series of these jobs (by id: when each was created), in one
    query; `columns` chooses which of step, epoch, value, time each series carries."""
    wanted = [c for c in COLUMNS if c in columns or (c == "value" and max_points is not None)]
    job_ids = list(starts)
    read = _read_packed if session.get_bind().dialect.name == "postgresql" else _read_rows
    found = read(session, job_ids, names, since, wanted) if job_ids else {}
    out: dict[uuid.UUID, dict[str, Any]] = {
        j: {"series": {}, "next_since": since, "decimated": False} for j in job_ids
    }
    for (job_id, name), series in sorted(found.items(), key=lambda kv: int(kv[1].ids[0])):
        view = out[job_id]
        view["next_since"] = max(view["next_since"], int(series.ids[-1]))
        keep: np.ndarray | slice = slice(None)
        if max_points is not None and len(series.ids) > max_points:
            keep = minmax_indices(series.columns["value"], max_points)
            view["decimated"] = True
        shown: dict[str, list[Any]] = {}
        for c in COLUMNS:
            if c not in columns:
                continue
            column = series.columns[c][keep]
            if c == "time":
                start = starts[job_id]
                origin = _epoch_seconds(start) if start is not None else float(column[0])
                column = np.round(column - origin, 3)
            shown[c] = column.tolist()
        view["series"][name] = shown
    return out


def to_json(data: Any) -> bytes:
    """Series as JSON without validating them again (they are built to MetricSeriesRead's
    shape here: validating 80,000 numbers cost a tenth of a compare page's read)."""
    return pydantic_core.to_json(data, inf_nan_mode="null")


FINAL = frozenset({"done", "error", "aborted"})


@dataclass(frozen=True)
class Stamp:
    """What a series read needs of its job: when it was created (the time column's zero),
    its status and when its row last changed (every metric write changes it too)."""

    created_at: datetime | None
    status: str
    updated_at: datetime | None


def stamp(job: Job) -> Stamp:
    """A job's Stamp."""
    return Stamp(job.created_at, str(job.status), job.updated_at)


def visible_stamps(
    session: Session, job_ids: list[uuid.UUID], user: User
) -> dict[uuid.UUID, Stamp]:
    """The Stamps of these jobs, in their order; NotFound names the first that does not
    exist for this user (one query, not one per job)."""
    rows = {
        row.id: row
        for row in session.execute(
            select(Job.id, Job.owner_id, Job.created_at, Job.status, Job.updated_at).where(
                Job.id.in_(job_ids), Job.delete_requested == false()
            )
        )
    }
    stamps: dict[uuid.UUID, Stamp] = {}
    for job_id in job_ids:
        row = rows.get(job_id)
        if row is None or not datasets_service.visible(user, row.owner_id):
            raise NotFound(f"job {job_id} does not exist", code="job_not_found")
        stamps[job_id] = Stamp(row.created_at, str(row.status), row.updated_at)
    return stamps


def group_stamps(
    session: Session, group: str, user: User, limit: int = 200
) -> dict[uuid.UUID, Stamp]:
    """The Stamps of a group's training jobs this user sees, oldest first (at most `limit`,
    the newest of them when there are more): what a compare page of the group charts."""
    query = (
        select(Job.id, Job.created_at, Job.status, Job.updated_at)
        .where(
            Job.group_name == group,
            Job.kind == JobKind.TRAIN,
            Job.delete_requested == false(),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if not user.is_admin:
        query = query.where(Job.owner_id == user.id)
    rows = list(session.execute(query))
    rows.reverse()
    return {row.id: Stamp(row.created_at, str(row.status), row.updated_at) for row in rows}


class _Kept:
    """The JSON of finished jobs' series reads, most recently used first, up to LIMIT bytes.

    A finished job's points do not change, and a point written anyway moves its job's
    updated_at (the worker writes both in one transaction), which is in the key: a compare
    page seen again, or by a colleague, reads no point (100 runs: 0.3 s -> a few ms)."""

    LIMIT = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # requests read in the thread pool

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self._size += len(body) - (len(old) if old is not None else 0)
            self._items[key] = body
            while self._size > self.LIMIT and self._items:
                self._size -= len(self._items.popitem(last=False)[1])


kept = _Kept()


def series_json(
    session: Session,
    stamps: dict[uuid.UUID, Stamp],
    *,
    names: list[str] | None,
    since: int = 0,
    max_points: int | None = None,
    columns: Sequence[str] = COLUMNS,
) -> dict[uuid.UUID, bytes]:
    """`read_series` as MetricSeriesRead JSON per job, finished jobs' from memory when kept."""
    bodies: dict[uuid.UUID, bytes] = {}
    keys: dict[uuid.UUID, tuple[Any, ...] | None] = {}
    for job_id, st in stamps.items():
        key = None
        if st.status in FINAL and st.updated_at is not None:
            key = (job_id, st.updated_at, tuple(names or ()), since, max_points, tuple(columns))
            found = kept.get(key)
            if found is not None:
                bodies[job_id] = found
                continue
        keys[job_id] = key
    if keys:
        starts = {job_id: stamps[job_id].created_at for job_id in keys}
        read = read_series(
            session, starts, names=names, since=since, max_points=max_points, columns=columns
        )
        for job_id, key in keys.items():
            bodies[job_id] = to_json(read[job_id])
            if key is not None:
                kept.put(key, bodies[job_id])
    return {job_id: bodies[job_id] for job_id in stamps}


def batch_json(bodies: dict[uuid.UUID, bytes]) -> bytes:
    """MetricsBatchRead JSON from each job's MetricSeriesRead JSON."""
    parts = (b'"' + str(job_id).encode() + b'":' + body for job_id, body in bodies.items())
    return b'{"jobs":{' + b",".join(parts) + b"}}"


def parse_columns(raw: str | None) -> tuple[str, ...]:
    """A comma-separated choice of step, epoch, value, time (all when empty); ValueError
    names a column that is not one of them."""
    if not raw:
        return COLUMNS
    chosen = [c.strip() for c in raw.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown column {unknown[0][:40]!r}; choose from {', '.join(COLUMNS)}")
    return tuple(c for c in COLUMNS if c in chosen)


def job_ids(raw: str, limit: int = 200) -> list[uuid.UUID]:
    """A comma-separated list of job ids (at most `limit`); ValueError names a bad one."""
    ids: list[uuid.UUID] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            ids.append(uuid.UUID(part))
        except ValueError as exc:
            raise ValueError(f"{part[:40]!r} is not a job id") from exc
    if len(ids) > limit:
        raise ValueError(f"at most {limit} jobs per request, not {len(ids)}")
    return list(dict.fromkeys(ids))
