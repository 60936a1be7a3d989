"""The fleet: workers, GPUs, and the queue with the reason each job waits."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user
from shared.schemas.fleet import GpuRead, QueueItem, QueueRead, WorkerRead
from shared.services import fleet

router = APIRouter(tags=["fleet"], dependencies=[Depends(get_current_user)])


@router.get(
    "/workers",
    operation_id="list_workers",
    summary="Workers, alive or stale",
    response_model=list[WorkerRead],
)
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerRead]:
    """Every registered worker with its heartbeat, GPUs, live stats and current job."""
    return [
        WorkerRead(
            name=w.name,
            hostname=w.hostname,
            pid=w.pid,
            kind=w.kind,
            device=w.device,
            queues=w.queues or [],
            gpus=w.gpus or [],
            alive=fleet.is_alive(w, settings.worker_stale_after),
            job_id=w.current_job_id,
            stats=w.stats or {},
            started_at=w.started_at,
            heartbeat_at=w.heartbeat_at,
            stopped_at=w.stopped_at,
        )
        for w in fleet.list_workers(session)
    ]


@router.get(
    "/gpus",
    operation_id="list_gpus",
    summary="GPUs of the fleet, with live stats",
    response_model=list[GpuRead],
)
def list_gpus(session: SessionDep, settings: SettingsDep) -> list[GpuRead]:
    """Every GPU a worker reported, its utilisation, memory, temperature and job."""
    rows = fleet.gpu_rows(fleet.list_workers(session), settings.worker_stale_after)
    return [GpuRead.model_validate(r) for r in rows]


@router.get(
    "/queue",
    operation_id="get_queue",
    summary="Waiting jobs and why they wait",
    response_model=QueueRead,
)
def get_queue(session: SessionDep, settings: SettingsDep, user: CurrentUser) -> QueueRead:
    """Waiting jobs in the order they will run, each with its position and reason.

    Positions count every user's jobs; you see your own entries (an admin sees all).
    """
    entries = [
        e
        for e in fleet.queue(session, settings.worker_stale_after)
        if user.is_admin or e.job.owner_id == user.id
    ]
    items = [
        QueueItem(
            position=e.position,
            job_id=e.job.id,
            name=e.job.name,
            requested_worker=e.target,
            reason=e.reason,
            candidates=e.candidates,
            waiting_since=e.job.created_at,
        )
        for e in entries
    ]
    return QueueRead(items=items, total=len(items))
