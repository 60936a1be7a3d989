"""Many jobs at once, for dashboards: one multiplexed event stream, one batch metrics read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import CurrentUser, SessionDep, get_current_user
from api.streams import sse_response
from shared.errors import InvalidInput
from shared.schemas.common import Problem
from shared.schemas.jobs import MetricsBatchRead
from shared.services import metrics as metrics_service

router = APIRouter(tags=["jobs"], dependencies=[Depends(get_current_user)])


def _ids(raw: str | None) -> list[uuid.UUID]:
    if not raw:
        return []
    try:
        return metrics_service.job_ids(raw)
    except ValueError as exc:
        raise InvalidInput(f"jobs: {exc}", code="invalid_job_ids") from exc


@router.get(
    "/events",
    operation_id="stream_events",
    summary="Live events of many jobs in one stream (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        404: {"model": Problem},
        422: {"model": Problem},
    },
)
async def stream_many(
    request: Request,
    user: CurrentUser,
    jobs: Annotated[
        str | None, Query(max_length=8000, description="Comma-separated job ids (at most 200)")
    ] = None,
    status: Annotated[
        str | None,
        Query(
            pattern="^running$",
            description="running: every running job of yours, "
            "including those that start while the stream is open",
        ),
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=64, description="Same as Last-Event-ID")] = None,
) -> StreamingResponse:
    """One stream for many jobs (browsers allow 6 connections per server); every event's data
    has its `job_id`. Resumable with Last-Event-ID like a job's own stream."""
    ids = _ids(jobs)
    if not ids and status is None:
        raise InvalidInput("give `jobs` or `status=running`", code="no_jobs")
    return await sse_response(
        request,
        user,
        jobs=ids,
        running=status == "running",
        cursor=last_event_id or since,
        single=False,
    )


@router.get(
    "/metrics",
    operation_id="get_metrics_batch",
    summary="Metric series of many jobs, shaped for charts",
    response_model=MetricsBatchRead,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def metrics_batch(
    session: SessionDep,
    user: CurrentUser,
    jobs: Annotated[
        str | None, Query(max_length=8000, description="Comma-separated job ids (<= 200)")
    ] = None,
    group: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Instead of `jobs`: the group's training jobs (its newest 200)",
        ),
    ] = None,
    names: Annotated[str | None, Query(description="Comma-separated series names")] = None,
    max_points: Annotated[int | None, Query(ge=2, le=100_000)] = 2000,
    columns: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Comma-separated columns of step, epoch, value, time (default all)",
        ),
    ] = None,
) -> Response:
    """Columnar, decimated series of many jobs in one request (a compare page's)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    try:
        chosen = metrics_service.parse_columns(columns)
    except ValueError as exc:
        raise InvalidInput(f"columns: {exc}", code="invalid_columns") from exc
    # one query for the jobs and one for all their points (it was two per job: 100 jobs x
    # 5 series took 9-14 s)
    if group is not None and jobs is not None:
        raise InvalidInput("give `jobs` or `group`, not both", code="jobs_and_group")
    if group is not None:  # a compare page asks for it before it has listed the group
        stamps = metrics_service.group_stamps(session, group, user)
    else:
        ids = _ids(jobs)
        if not ids:
            raise InvalidInput("give `jobs` or `group`", code="no_jobs")
        stamps = metrics_service.visible_stamps(session, ids, user)
    bodies = metrics_service.series_json(
        session, stamps, names=wanted, max_points=max_points, columns=chosen
    )
    # serialised here: returned as a model, FastAPI would validate it all again
    return Response(metrics_service.batch_json(bodies), media_type="application/json")
