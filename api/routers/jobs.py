"""Training jobs: submit (and sweep), list, read, edit, abort, clone, delete, metrics, events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CeleryDep, CurrentUser, SessionDep, SettingsDep, get_current_user
from shared import storage
from shared.db import reading
from shared.errors import Conflict
from shared.models import Job, Status
from shared.schemas.common import PROBLEM_RESPONSES, Page, Problem
from shared.schemas.jobs import (
    CheckpointRead,
    JobClone,
    JobCreate,
    JobRead,
    JobsCreated,
    JobUpdate,
    MetricPoint,
    MetricsRead,
)
from shared.services import dispatch, fleet
from shared.services import jobs as service

log = logging.getLogger("digits.api.jobs")

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(get_current_user)])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 422: {"model": Problem}}


def _enqueue(celery: CeleryDep, session: SessionDep, jobs: list[Job]) -> None:
    """Send each committed job to the broker. When the broker is down the job still waits in
    the database and the reaper sends it once the broker is back; a job asking for a GPU
    that no worker has waits until that worker registers and adopts it."""
    workers = fleet.list_workers(session)
    for job in jobs:
        item = dispatch.job_send(job, workers)
        if item is not None:
            dispatch.try_deliver(celery, session, item)
    session.commit()


@router.post(
    "",
    status_code=202,
    operation_id="create_job",
    summary="Queue a training job (or a sweep)",
    response_model=JobsCreated,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
def create_job(
    body: JobCreate, session: SessionDep, celery: CeleryDep, user: CurrentUser
) -> JobsCreated:
    """Queue training; lists of learning rates / batch sizes make one job per combination."""
    jobs = service.create_training_jobs(session, body, user)
    session.commit()
    _enqueue(celery, session, jobs)
    log.info("jobs queued: %s", ", ".join(str(j.id) for j in jobs))
    return JobsCreated(jobs=[service.to_read(j) for j in jobs], group=jobs[0].group_name)


@router.get(
    "",
    operation_id="list_jobs",
    summary="List jobs",
    response_model=Page[JobRead],
    responses={422: {"model": Problem}},
)
def list_jobs(
    session: SessionDep,
    user: CurrentUser,
    status: Status | None = None,
    group: str | None = None,
    dataset_id: uuid.UUID | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> Page[JobRead]:
    """A page of jobs, newest first, filtered by status, group or dataset."""
    items, total = service.list_jobs(
        session,
        user,
        status=status,
        group=group,
        dataset_id=dataset_id,
        page=page,
        per_page=per_page,
    )
    return Page[JobRead](
        items=[service.to_read(j) for j in items], total=total, page=page, per_page=per_page
    )


@router.get(
    "/{job_id}",
    operation_id="get_job",
    summary="Show a job",
    response_model=JobRead,
    responses=NOT_FOUND,
)
def get_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> JobRead:
    """A job: its request, status history, progress, ETA, worker, best and last metrics."""
    job = service.get_job(session, job_id, user)
    read = service.to_read(job)
    if job.status == Status.WAITING.value:
        entry = fleet.queue_entry(session, job.id, settings.worker_stale_after)
        if entry is not None:
            read.queue_position, read.waiting_reason = entry.position, entry.reason
    return read


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
    job = service.update_job(session, job_id, body, user)
    session.commit()
    return service.to_read(job)


@router.post(
    "/{job_id}/abort",
    operation_id="abort_job",
    summary="Abort a job",
    response_model=JobRead,
    responses={**NOT_FOUND, 409: {"model": Problem}},
)
def abort_job(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> JobRead:
    """Stop a job at its next step; what it saved is kept and its worker takes the next job."""
    job = service.request_abort(session, job_id, user)
    session.commit()
    return service.to_read(job)


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
    celery: CeleryDep,
    user: CurrentUser,
    body: JobClone | None = None,
) -> JobsCreated:
    """A new job from the stored request; given fields (and hyperparameters) override it."""
    jobs = service.clone_job(session, job_id, body or JobClone(), user)
    session.commit()
    _enqueue(celery, session, jobs)
    return JobsCreated(jobs=[service.to_read(j) for j in jobs], group=jobs[0].group_name)


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
    """Abort the job if it runs, then remove it with its metrics, checkpoints and files."""
    job = service.get_job(session, job_id, user)
    if Status(job.status).is_running:
        service.request_abort(session, job_id, user)
        session.commit()
        deadline = time.monotonic() + 15
        while Status(job.status).is_running and time.monotonic() < deadline:
            time.sleep(0.2)
            session.refresh(job)
        if Status(job.status).is_running:
            raise Conflict(
                f"job {job_id} is still stopping; delete it again shortly", code="job_stopping"
            )
    session.delete(job)
    session.commit()
    storage.remove_tree(storage.job_dir(settings, job_id))
    return Response(status_code=204)


@router.get(
    "/{job_id}/metrics",
    operation_id="get_job_metrics",
    summary="Points of a job's metric series",
    response_model=MetricsRead,
    responses=NOT_FOUND,
)
def get_metrics(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    names: Annotated[str | None, Query(description="Comma-separated series names")] = None,
    since: Annotated[int, Query(ge=0, description="Only points after this cursor")] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsRead:
    """Named series (train.loss, val.accuracy, ...), oldest first; resume with `since`."""
    service.get_job(session, job_id, user)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    points = service.metrics(session, job_id, names=wanted, since=since, limit=limit)
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
    service.get_job(session, job_id, user)
    return [
        CheckpointRead(
            name=c.name,
            epoch=c.epoch,
            step=c.step,
            size_bytes=c.size_bytes,
            metrics=c.metrics or {},
            created_at=c.created_at,
        )
        for c in service.checkpoints(session, job_id)
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
) -> PlainTextResponse:
    """The training log as text."""
    service.get_job(session, job_id, user)
    path: Path = storage.job_dir(settings, job_id) / "job.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text else "")
    return PlainTextResponse(text)


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
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    since: Annotated[int | None, Query(ge=0, description="Same as Last-Event-ID")] = None,
) -> StreamingResponse:
    """An SSE stream of the job's events; reconnect with Last-Event-ID to miss nothing."""
    factory = request.app.state.session_factory

    def _load(after: int) -> tuple[list[tuple[int, str, str]], bool]:
        with reading(factory) as session:
            job = service.get_job(session, job_id, user)
            events = service.latest_events(session, job_id, after)
            final = Status(job.status).is_final
            return [(e.id, e.kind, json.dumps(e.data)) for e in events], final

    try:
        start = int(last_event_id) if last_event_id else (since or 0)
    except ValueError:
        start = since or 0
    first, _ = await run_in_threadpool(_load, start)  # 404 before the stream starts

    async def body() -> AsyncIterator[bytes]:
        after = start
        batch, final = first, False
        idle = 0.0
        while True:
            for event_id, kind, data in batch:
                after = event_id
                yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n".encode()
            if batch:
                idle = 0.0
            if final and not batch:
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            idle += 0.25
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"
            batch, final = await run_in_threadpool(_load, after)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
