"""Training job rules: submission (with sweeps), reading, editing, abort, clone, delete.

Every status change of a job goes through `set_status`, `claim_job` or `finish_job`, which
also record the event that the SSE stream replays.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import networks
from shared.db import utcnow
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import (
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobKind,
    MetricPoint,
    Status,
    User,
)
from shared.schemas.jobs import (
    CustomNetwork,
    Hyperparameters,
    JobClone,
    JobCreate,
    JobRead,
    JobUpdate,
    MetricValue,
    PretrainedNetwork,
    PreviousNetwork,
    StandardNetwork,
)
from shared.services import datasets as dataset_service
from shared.services.states import claim, finish, transition


def record_event(session: Session, job_id: uuid.UUID, kind: str, data: dict[str, Any]) -> None:
    """Append an event to the job's ordered stream."""
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def set_status(session: Session, job: Job, new: Status, *, reason: str | None = None) -> None:
    """Transition a job (state machine rules) and record the event."""
    transition(job, new, reason=reason)
    data: dict[str, Any] = {"status": new.value, "at": utcnow().isoformat()}
    if reason:
        data["reason"] = reason
    record_event(session, job.id, "status", data)
    session.flush()


def claim_job(session: Session, job_id: uuid.UUID, worker: str) -> Job | None:
    """Compare-and-set waiting -> running; None for a duplicate delivery."""
    job = claim(session, Job, job_id, worker)
    if isinstance(job, Job):
        job.heartbeat_at = utcnow()
        record_event(
            session,
            job.id,
            "status",
            {"status": "running", "at": utcnow().isoformat(), "worker": worker},
        )
        session.flush()
    return job  # type: ignore[return-value]


def finish_job(
    session: Session,
    job_id: uuid.UUID,
    new: Status,
    *,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set running -> done/error/aborted, recording the event."""
    if not finish(session, Job, job_id, new, reason=reason, values=values):
        return False
    data: dict[str, Any] = {"status": new.value, "at": utcnow().isoformat()}
    if reason:
        data["reason"] = reason
    record_event(session, job_id, "status", data)
    session.flush()
    return True


def _check_network(
    session: Session, network: Any, dataset: Dataset, hyper: Hyperparameters, user: User
) -> None:
    """Refuse a network that cannot run on this dataset, before anything is queued."""
    height, width = dataset.image_height, dataset.image_width
    if hyper.crop_size is not None:
        if hyper.crop_size > min(height, width):
            raise InvalidInput(
                f"crop_size {hyper.crop_size} is larger than the images ({width}x{height})",
                code="invalid_crop_size",
            )
        height = width = hyper.crop_size
    classes = len(dataset.classes or [])
    if isinstance(network, StandardNetwork):
        try:
            networks.check_standard(network.name, dataset.image_channels, height, width)
        except ValueError as exc:
            raise InvalidInput(str(exc), code="invalid_network") from exc
    elif isinstance(network, CustomNetwork):
        try:
            networks.check_custom(network.layers, dataset.image_channels, height, width, classes)
        except networks.NetworkShapeError as exc:
            raise InvalidInput(
                f"custom network: {exc}",
                code="invalid_network",
                extra={"layer": exc.index, "layer_type": exc.layer_type},
            ) from exc
    elif isinstance(network, PretrainedNetwork):
        from shared.models import PretrainedModel

        model = session.get(PretrainedModel, network.model_id)
        if model is None or not dataset_service.visible(user, model.owner_id):
            raise NotFound(
                f"pretrained model {network.model_id} does not exist",
                code="pretrained_model_not_found",
            )
        if model.image_channels != dataset.image_channels:
            raise InvalidInput(
                f"pretrained model {model.id} takes {model.image_channels}-channel images; "
                f"this dataset has {dataset.image_channels}",
                code="invalid_network",
            )
        base = dict(model.network)
        if base.get("kind") == "standard":
            try:
                networks.check_standard(base["name"], dataset.image_channels, height, width)
            except ValueError as exc:
                raise InvalidInput(str(exc), code="invalid_network") from exc
    elif isinstance(network, PreviousNetwork):
        source = session.get(Job, network.job_id)
        if (
            source is None
            or source.kind != JobKind.TRAIN.value
            or not dataset_service.visible(user, source.owner_id)
        ):
            raise NotFound(f"previous job {network.job_id} does not exist", code="job_not_found")
        name = (
            f"epoch-{network.checkpoint}"
            if isinstance(network.checkpoint, int)
            else network.checkpoint
        )
        found = session.scalar(
            select(Checkpoint.id).where(Checkpoint.job_id == source.id, Checkpoint.name == name)
        )
        if found is None:
            raise Conflict(
                f"previous job {source.id} has no checkpoint {name!r}; see its /checkpoints",
                code="checkpoint_not_found",
            )
        base = source.request.get("network", {})
        if base.get("kind") == "custom" and base.get("layers"):
            inner = CustomNetwork.model_validate(base)
            # the head is rebuilt for this dataset's classes; the body must fit its images
            layers = list(inner.layers)
            if layers and layers[-1].type == "linear":
                layers[-1] = layers[-1].model_copy(update={"out_features": None})
            try:
                networks.check_custom(layers, dataset.image_channels, height, width, classes)
            except networks.NetworkShapeError as exc:
                raise InvalidInput(f"previous network: {exc}", code="invalid_network") from exc


def create_training_jobs(session: Session, data: JobCreate, user: User) -> list[Job]:
    """Validate a submission and insert one waiting job per sweep combination."""
    dataset = dataset_service.get_ready_dataset(session, data.dataset_id, user)
    raw = data.hyperparameters.model_dump(mode="json")
    lrs = raw["learning_rate"] if isinstance(raw["learning_rate"], list) else [raw["learning_rate"]]
    bss = raw["batch_size"] if isinstance(raw["batch_size"], list) else [raw["batch_size"]]
    seed = raw["seed"] if raw["seed"] is not None else random.randrange(2**31)
    combos = list(itertools.product(lrs, bss))
    sweep = len(combos) > 1
    group = data.group or (data.name if sweep else None)
    jobs: list[Job] = []
    for lr, bs in combos:
        try:
            hyper = Hyperparameters.model_validate(
                {**raw, "learning_rate": lr, "batch_size": bs, "seed": seed}
            )
        except ValidationError as exc:  # pragma: no cover - the sweep model checked the values
            raise InvalidInput(str(exc), code="invalid_hyperparameters") from exc
        _check_network(session, data.network, dataset, hyper, user)
        name = data.name
        if sweep:
            name = (
                f"{data.name} learning_rate:{lr} batch_size:{bs if bs is not None else 'default'}"
            )
        request = {
            "dataset_id": str(data.dataset_id),
            "name": name,
            "group": group,
            "notes": data.notes,
            "network": data.network.model_dump(mode="json"),
            "hyperparameters": hyper.model_dump(mode="json"),
            "gpu": data.gpu,
            "gpus": data.gpus,
        }
        job = Job(
            kind=JobKind.TRAIN.value,
            owner_id=user.id,
            name=name,
            group_name=group,
            notes=data.notes,
            status=Status.INITIALIZED.value,
            status_history=[{"status": "initialized", "at": utcnow().isoformat()}],
            dataset_id=dataset.id,
            request=request,
            requested_worker=data.gpu,
        )
        session.add(job)
        session.flush()
        record_event(
            session, job.id, "status", {"status": "initialized", "at": utcnow().isoformat()}
        )
        set_status(session, job, Status.WAITING)
        jobs.append(job)
    return jobs


def get_job(session: Session, job_id: uuid.UUID, user: User) -> Job:
    """The job, or NotFound (also for another user's job)."""
    job = session.get(Job, job_id)
    if job is None or not dataset_service.visible(user, job.owner_id):
        raise NotFound(f"job {job_id} does not exist", code="job_not_found")
    return job


def list_jobs(
    session: Session,
    user: User,
    *,
    status: Status | None = None,
    group: str | None = None,
    dataset_id: uuid.UUID | None = None,
    page: int = 1,
    per_page: int = 25,
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, with the total count of the filter."""
    conditions = [] if user.is_admin else [Job.owner_id == user.id]
    if status is not None:
        conditions.append(Job.status == status.value)
    if group is not None:
        conditions.append(Job.group_name == group)
    if dataset_id is not None:
        conditions.append(Job.dataset_id == dataset_id)
    query = select(Job).where(*conditions).order_by(Job.created_at.desc(), Job.id)
    total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    items = list(session.scalars(query.offset((page - 1) * per_page).limit(per_page)))
    return items, int(total)


def update_job(session: Session, job_id: uuid.UUID, data: JobUpdate, user: User) -> Job:
    """Rename, annotate or regroup a job; the stored request follows, so clones keep it."""
    job = get_job(session, job_id, user)
    changes = data.model_dump(exclude_unset=True)
    request = dict(job.request)
    if "name" in changes and changes["name"] is not None:
        job.name = request["name"] = changes["name"]
    if "notes" in changes:
        job.notes = request["notes"] = changes["notes"]
    if "group" in changes:
        job.group_name = request["group"] = changes["group"]
    job.request = request
    session.flush()
    return job


def request_abort(session: Session, job_id: uuid.UUID, user: User) -> Job:
    """Abort: a waiting job ends at once; a running one stops at its next step."""
    job = get_job(session, job_id, user)
    status = Status(job.status)
    if status.is_final:
        raise Conflict(f"job {job_id} is already {status.value}", code="job_finished")
    if status in (Status.INITIALIZED, Status.WAITING):
        set_status(session, job, Status.ABORTED, reason="aborted by user")
    else:
        session.execute(update(Job).where(Job.id == job_id).values(abort_requested=True))
        session.refresh(job)
    session.flush()
    return job


def clone_job(session: Session, job_id: uuid.UUID, data: JobClone, user: User) -> list[Job]:
    """A new job from the stored request, with overrides."""
    job = get_job(session, job_id, user)
    request = dict(job.request)
    overrides = data.model_dump(exclude_unset=True, mode="json")
    hyper = dict(request.get("hyperparameters", {}))
    hyper.update(overrides.pop("hyperparameters", None) or {})
    request.update(overrides)
    request["hyperparameters"] = hyper
    if "name" not in overrides:
        request["name"] = f"{job.name} (clone)"
    try:
        create = JobCreate.model_validate(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"clone: {where}: {first['msg']}", code="invalid_clone") from exc
    return create_training_jobs(session, create, user)


def latest_events(
    session: Session, job_id: uuid.UUID, after: int, limit: int = 500
) -> list[JobEvent]:
    """Events of a job after an id, oldest first."""
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def metrics(
    session: Session, job_id: uuid.UUID, *, names: list[str] | None, since: int, limit: int
) -> list[MetricPoint]:
    """Points of the job's series after the cursor `since`, oldest first."""
    query = select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.id > since)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    return list(session.scalars(query.order_by(MetricPoint.id).limit(limit)))


def checkpoints(session: Session, job_id: uuid.UUID) -> list[Checkpoint]:
    """The job's saved snapshots, by epoch."""
    return list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.epoch, Checkpoint.name)
        )
    )


def eta_seconds(job: Job, now: datetime | None = None) -> float | None:
    """Time left, from the progress so far."""
    if job.status != Status.RUNNING.value or not job.started_at or job.progress <= 0:
        return None
    now = now or utcnow()
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=now.tzinfo)
    elapsed = (now - started).total_seconds()
    left = elapsed * (1 - job.progress) / job.progress
    return round(left, 1) if math.isfinite(left) else None


def to_read(job: Job) -> JobRead:
    """The API view of a job row."""
    return JobRead(
        id=job.id,
        kind=job.kind,
        name=job.name,
        group=job.group_name,
        notes=job.notes,
        status=job.status,
        status_history=job.status_history or [],  # type: ignore[arg-type]
        error=job.error,
        dataset_id=job.dataset_id,
        request=job.request,
        worker=job.worker,
        attempts=job.attempts,
        progress=job.progress,
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
        eta_seconds=eta_seconds(job),
        abort_requested=job.abort_requested,
        best={k: MetricValue(**v) for k, v in (job.best or {}).items()},
        last={k: MetricValue(**v) for k, v in (job.last or {}).items()},
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
