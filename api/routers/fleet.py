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
def list_workers(session: SessionDep, settings: SettingsDep, user: CurrentUser) -> list[WorkerRead]:
    """Every registered worker with its heartbeat, GPUs, live stats and current job.

    Host names, process ids, and the jobs (and their stats) of other users are for admins.
    """
    mine = fleet.own_job_ids(session, user)
    rows = []
    for w in fleet.list_workers(session):
        shown = user.is_admin or w.current_job_id in mine
        rows.append(
            WorkerRead(
                name=w.name,
                hostname=w.hostname if user.is_admin else None,
                pid=w.pid if user.is_admin else None,
                kind=w.kind,
                device=w.device,
                queues=w.queues or [],
                gpus=w.gpus or [],
                alive=fleet.is_alive(w, settings.worker_stale_after),
                job_id=w.current_job_id if shown else None,
                busy=w.current_job_id is not None,
                stats=(w.stats or {}) if shown else {},
                started_at=w.started_at,
                heartbeat_at=w.heartbeat_at,
                stopped_at=w.stopped_at,
            )
        )
    return rows


@router.get(
    "/gpus",
    operation_id="list_gpus",
    summary="GPUs of the fleet, with live stats",
    response_model=list[GpuRead],
)
def list_gpus(session: SessionDep, settings: SettingsDep, user: CurrentUser) -> list[GpuRead]:
    """Every GPU a worker reported, its utilisation, memory, temperature and job (host names
    and other users' jobs for admins)."""
    rows = fleet.gpu_rows(fleet.list_workers(session), settings.worker_stale_after)
    if not user.is_admin:
        mine = fleet.own_job_ids(session, user)
        for row in rows:
            row["hostname"] = None
            if row["job_id"] not in mine:
                row["job_id"] = None
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
        for e in fleet.queue(session, settings.worker_stale_after, show_jobs=user.is_admin)
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
