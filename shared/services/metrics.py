"""Metric series shaped for charts: columns per series, decimated on the server.

Decimation is min-max per bucket (the first and last points are always kept, and in each
bucket the lowest and the highest value, in step order), so spikes and dips survive a
100,000-point series drawn with 2,000 points, as M4/min-max decimation does for line charts.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Job, MetricPoint


def minmax_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices (sorted) of at most `max_points` points that keep each bucket's extremes."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    if max_points < 4:  # too few for extremes: evenly spaced, ends included
        return np.unique(np.linspace(0, n - 1, max(max_points, 1)).round().astype(np.int64))
    inner = values[1:-1]
    buckets = (max_points - 2) // 2
    edges = np.linspace(0, len(inner), buckets + 1).astype(np.int64)
    keep = [0, n - 1]
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        chunk = inner[lo:hi]
        keep.append(1 + lo + int(np.argmin(chunk)))
        keep.append(1 + lo + int(np.argmax(chunk)))
    return np.unique(np.asarray(keep, dtype=np.int64))


def columnar(
    session: Session,
    job: Job,
    *,
    names: list[str] | None,
    since: int = 0,
    max_points: int | None = None,
) -> dict[str, Any]:
    """Each series of a job as columns (step, epoch, value, time since start), decimated."""
    query = select(
        MetricPoint.id,
        MetricPoint.name,
        MetricPoint.step,
        MetricPoint.epoch,
        MetricPoint.value,
        MetricPoint.created_at,
    ).where(MetricPoint.job_id == job.id, MetricPoint.id > since)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    rows = session.execute(query.order_by(MetricPoint.id)).all()
    start = _start(job, rows)
    grouped: dict[str, list[Any]] = {}
    last_id = since
    for row in rows:
        grouped.setdefault(row.name, []).append(row)
        last_id = max(last_id, row.id)
    series: dict[str, dict[str, list[float] | list[int]]] = {}
    decimated = False
    for name, points in grouped.items():
        values = np.fromiter((p.value for p in points), dtype=np.float64, count=len(points))
        if max_points is not None and len(points) > max_points:
            keep = minmax_indices(values, max_points)
            decimated = True
        else:
            keep = np.arange(len(points))
        chosen = [points[int(i)] for i in keep]
        series[name] = {
            "step": [int(p.step) for p in chosen],
            "epoch": [float(p.epoch) for p in chosen],
            "value": [float(v) for v in values[keep]],
            "time": [_seconds(p.created_at, start) for p in chosen],
        }
    return {"series": series, "next_since": int(last_id), "decimated": decimated}


def _start(job: Job, rows: Sequence[Any]) -> datetime | None:
    if job.created_at is not None:
        return job.created_at
    return rows[0].created_at if rows else None


def _seconds(ts: datetime, start: datetime | None) -> float:
    if start is None:
        return 0.0
    a = ts if ts.tzinfo else ts.replace(tzinfo=start.tzinfo)
    b = start if start.tzinfo else start.replace(tzinfo=a.tzinfo)
    return round((a - b).total_seconds(), 3)


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
