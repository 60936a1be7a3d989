"""Server-Sent Events of jobs: one job's stream, or one stream for many (the web UI's)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from shared.db import reading
from shared.models import Job, Status, User
from shared.services import events as events_service
from shared.services import jobs as jobs_service

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0


def _visible_running(session: Session, user: User) -> list[uuid.UUID]:
    query = select(Job.id).where(Job.status == Status.RUNNING, Job.delete_requested.is_(False))
    if not user.is_admin:
        query = query.where(Job.owner_id == user.id)
    return list(session.scalars(query))


async def sse_response(
    request: Request,
    user: User,
    *,
    jobs: list[uuid.UUID],
    running: bool,
    cursor: str | None,
    single: bool,
) -> StreamingResponse:
    """Stream the events of `jobs` (and, with `running`, of the user's running jobs).

    A single-job stream ends after the job's final status; a multiplexed one stays open.
    Unknown or foreign ids answer 404 before the stream starts.
    """
    factory = request.app.state.session_factory
    watched: set[uuid.UUID] = set(jobs)

    def _check() -> None:
        with reading(factory) as session:
            for job_id in jobs:
                jobs_service.get_job(session, job_id, user)

    def _load(
        after: events_service.Cursor,
    ) -> tuple[list[events_service.StreamEvent], bool]:
        with reading(factory) as session:
            final = False
            if single:  # read before the events: a final row has all its events committed
                job = session.get(Job, jobs[0])
                final = job is None or job.delete_requested or job.status.is_final
            if running:
                watched.update(_visible_running(session, user))
            return events_service.read(session, sorted(watched), after), final

    await run_in_threadpool(_check)
    start = events_service.Cursor.parse(cursor)

    async def body() -> AsyncIterator[bytes]:
        after = start
        idle = 0.0
        yield b"retry: 2000\n\n"
        while True:
            batch, final = await run_in_threadpool(_load, after)
            for event in batch:
                after = event.cursor
                data = json.dumps(event.data, separators=(",", ":"))
                yield f"id: {event.cursor}\nevent: {event.kind}\ndata: {data}\n\n".encode()
            if batch:
                idle = 0.0
            elif final:
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
