"""Training jobs: submit (and sweep), list, read, edit, abort, clone, delete, metrics, events."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.conditional import NOT_MODIFIED, IfNoneMatch, json_or_not_modified
from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user
from api.streams import sse_response
from shared import artifacts
from shared.db import reading
from shared.errors import InvalidInput
from shared.models import Status
from shared.schemas.common import PROBLEM_RESPONSES, Page, Problem
from shared.schemas.jobs import (
    CheckpointRead,
    JobClone,
    JobCreate,
    JobRead,
    JobsCreated,
    JobUpdate,
    MetricPoint,
    MetricSeriesRead,
    MetricsRead,
)
from shared.services import fleet, job_reads
from shared.services import jobs as jobs_service
from shared.services import metrics as metrics_service

log = logging.getLogger("digits.api.jobs")

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(get_current_user)])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 422: {"model": Problem}}


MAX_INT = 2**63 - 1  # the largest cursor a database integer holds
COLUMNS_QUERY = Query(
    max_length=64,
    description="columnar: comma-separated columns of step, epoch, value, time (default all)",
)


def _columns(raw: str | None) -> tuple[str, ...]:
    try:
        return metrics_service.parse_columns(raw)
    except ValueError as exc:
        raise InvalidInput(f"columns: {exc}", code="invalid_columns") from exc


LOG_CHUNK = 1024 * 1024


@router.post(
    "",
    status_code=202,
    operation_id="create_job",
    summary="Queue a training job (or a sweep)",
    response_model=JobsCreated,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
def create_job(
    body: JobCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> JobsCreated:
    """Queue training; lists of learning rates / batch sizes make one job per combination."""
    jobs = jobs_service.create_training_jobs(session, body, user, settings)
    reads = jobs_service.read_many(session, jobs)
    session.commit()  # the jobs' messages leave now
    log.info("jobs queued: %s", ", ".join(str(j.id) for j in jobs))
    return JobsCreated(jobs=reads, group=jobs[0].group_name)


@router.get(
    "",
    operation_id="list_jobs",
    summary="List jobs",
    response_model=Page[JobRead],
    responses={422: {"model": Problem}, **NOT_MODIFIED},
)
async def list_jobs(
    request: Request,
    status: Status | None = None,
    group: str | None = None,
    dataset_id: uuid.UUID | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
    if_none_match: Annotated[str | None, IfNoneMatch] = None,
) -> Response:
    """A page of jobs, newest first, filtered by status, group or dataset."""
    user = await get_current_user(request)  # the router's dependency checked it: no second solve
    reads = request.app.state.reads
    body = await job_reads.list_jobs_json(
        reads,
        reads.dialect,
        user,
        status=status,
        group=group,
        dataset_id=dataset_id,
        page=page,
        per_page=per_page,
    )
    return json_or_not_modified(body, if_none_match)


@router.get(
    "/{job_id}",
    operation_id="get_job",
    summary="Show a job",
    response_model=JobRead,
    responses={**NOT_FOUND, **NOT_MODIFIED},
)
async def get_job(
    job_id: uuid.UUID,
    request: Request,
    if_none_match: Annotated[str | None, IfNoneMatch] = None,
) -> Response:
    """A job: its request, status history, progress, ETA, worker, best and last metrics.

    Send its ETag back in If-None-Match: an unchanged job answers 304 with no body.
    """
    state = request.app.state
    user = await get_current_user(request)  # the router's dependency checked it: no second solve
    settings = state.settings
    body, status = await job_reads.read_job(state.reads, job_id, user)
    if status == Status.WAITING:  # where it stands in the queue, and why (the ORM's rules)

        def queue_entry() -> fleet.QueueEntry | None:
            with reading(state.session_factory) as session:
                return fleet.queue_entry(session, job_id, settings.worker_stale_after)

        entry = await run_in_threadpool(queue_entry)
        if entry is not None:
            body = job_reads.with_queue_entry(body, entry.position, entry.reason)
    return json_or_not_modified(body, if_none_match)


@router.patch(
    "/{job_id}",
    operation_id="update_job",
    summary="Edit a job's name, notes, group",
    response_model=JobRead,
    responses={**NOT_FOUND, 409: {"model": Problem}},
)
def update_job(
    job_id: uuid.UUID, body: JobUpdate, session: SessionDep, user: CurrentUser
) -> JobRead:
    """Change name, notes or group (the stored request follows, so clones keep them)."""
    job = jobs_service.update_job(session, job_id, body, user)
    read = jobs_service.read(session, job)
    session.commit()
    return read


@router.post(
    "/{job_id}/abort",
    operation_id="abort_job",
    summary="Abort a job",
    response_model=JobRead,
    responses={**NOT_FOUND, 409: {"model": Problem}},
)
def abort_job(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> JobRead:
    """Stop a job at its next step; what it saved is kept and its worker takes the next job."""
    job = jobs_service.request_abort(session, job_id, user)
    read = jobs_service.read(session, job)
    session.commit()
    return read


@router.post(
    "/{job_id}/clone",
    status_code=202,
    operation_id="clone_job",
    summary="Queue a copy of a job, with overrides",
    response_model=JobsCreated,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
def clone_job(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    body: JobClone | None = None,
) -> JobsCreated:
    """A new job from the stored request; given fields (and hyperparameters) override it."""
    jobs = jobs_service.clone_job(session, job_id, body or JobClone(), user, settings)
    reads = jobs_service.read_many(session, jobs)
    session.commit()
    return JobsCreated(jobs=reads, group=jobs[0].group_name)


@router.delete(
    "/{job_id}",
    status_code=204,
    operation_id="delete_job",
    summary="Delete a job",
    responses={**NOT_FOUND, 409: {"model": Problem}},
)
def delete_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> Response:
    """Delete a job with its metrics, checkpoints and files; a running one stops first.

    A running job disappears at once (404 from then on) and its worker removes it, files
    included, as soon as it has stopped.
    """
    gone = jobs_service.request_delete(session, job_id, user)
    session.commit()
    if gone:
        artifacts.remove_job(settings, job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/metrics",
    operation_id="get_job_metrics",
    summary="Points of a job's metric series",
    response_model=MetricsRead | MetricSeriesRead,
    responses=NOT_FOUND,
)
def get_metrics(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    names: Annotated[str | None, Query(description="Comma-separated series names")] = None,
    since: Annotated[int, Query(ge=0, le=MAX_INT, description="Only points after this cursor")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    format: Annotated[
        str,
        Query(pattern="^(rows|columnar)$", description="rows (paged by `since`) or columnar"),
    ] = "rows",
    max_points: Annotated[
        int | None,
        Query(ge=2, le=100_000, description="columnar: decimate each series to this many"),
    ] = None,
    columns: Annotated[str | None, COLUMNS_QUERY] = None,
) -> MetricsRead | MetricSeriesRead | Response:
    """Named series (train.loss, val.accuracy, ...), oldest first; resume with `since`.

    `format=columnar` answers each series as columns (step, epoch, value, seconds since the
    job was created), min-max decimated to `max_points`, for charts; `columns` picks some.
    """
    job = jobs_service.get_job(session, job_id, user)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    if format == "columnar":
        bodies = metrics_service.series_json(
            session,
            {job.id: metrics_service.stamp(job)},
            names=wanted,
            since=since,
            max_points=max_points,
            columns=_columns(columns),
        )
        # serialised here: returned as a model, FastAPI would validate 100,000 numbers again
        return Response(bodies[job.id], media_type="application/json")
    points = jobs_service.metrics(session, job_id, names=wanted, since=since, limit=limit)
    return MetricsRead(
        items=[
            MetricPoint(id=p.id, name=p.name, step=p.step, epoch=p.epoch, value=p.value)
            for p in points
        ],
        next_since=points[-1].id if points else since,
    )


@router.get(
    "/{job_id}/checkpoints",
    operation_id="list_job_checkpoints",
    summary="A job's saved checkpoints",
    response_model=list[CheckpointRead],
    responses=NOT_FOUND,
)
def list_checkpoints(
    job_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> list[CheckpointRead]:
    """Snapshots by epoch, plus `best` and `last`."""
    jobs_service.get_job(session, job_id, user)
    return [
        CheckpointRead(
            name=c.name,
            epoch=c.epoch,
            step=c.step,
            size_bytes=c.size_bytes,
            metrics=c.metrics or {},
            created_at=c.created_at,
        )
        for c in jobs_service.checkpoints(session, job_id)
    ]


@router.get(
    "/{job_id}/logs",
    operation_id="get_job_logs",
    summary="A job's log",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}, **NOT_FOUND},
)
def get_logs(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    tail: Annotated[int | None, Query(ge=1, le=100_000, description="Last N lines")] = None,
    offset: Annotated[
        int | None, Query(ge=0, le=MAX_INT, description="Bytes from this offset (follow)")
    ] = None,
) -> PlainTextResponse:
    """The training log as text; `offset` follows it (the next offset is in `X-Log-Offset`)."""
    jobs_service.get_job(session, job_id, user)
    if offset is not None and tail is not None:
        raise InvalidInput("give tail or offset, not both", code="invalid_log_range")
    # the data folder's file, or the bucket's copy (uploaded every few seconds while it runs)
    store = artifacts.get_store(settings)
    key = f"{artifacts.job_prefix(job_id)}/job.log"
    try:
        size = store.stat(key).size
    except FileNotFoundError:
        size = 0
    if offset is not None:
        start = min(offset, size)
        data = store.read_range(key, start, LOG_CHUNK) if size else b""
        # whole lines only, so a follower never sees half of one (unless one line fills a chunk)
        cut = data.rfind(b"\n") + 1
        data = data if cut == 0 and len(data) == LOG_CHUNK else data[:cut]
        return PlainTextResponse(
            data.decode(errors="replace"), headers={"X-Log-Offset": str(start + len(data))}
        )
    text = store.get_bytes(key).decode(errors="replace") if size else ""
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text else "")
    return PlainTextResponse(text, headers={"X-Log-Offset": str(size)})


@router.get(
    "/{job_id}/events",
    operation_id="stream_job_events",
    summary="Live status, progress and metrics (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND},
)
async def stream_events(
    job_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="Same as Last-Event-ID (an opaque cursor)")
    ] = None,
) -> StreamingResponse:
    """An SSE stream of the job's events; reconnect with Last-Event-ID to miss nothing.

    It ends after the job's final status. Ids are opaque cursors.
    """
    return await sse_response(
        request, user, jobs=[job_id], running=False, cursor=last_event_id or since, single=True
    )
