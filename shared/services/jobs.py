"""Training job rules: submission (with sweeps), reading, editing, abort, clone, delete.

Status changes go through `shared.services.lifecycle`; what to send to the broker is recorded
with `dispatch.enqueue` and leaves after the commit.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared import networks
from shared.db import utcnow
from shared.errors import Conflict, InvalidInput, LimitExceeded, NotFound
from shared.models import (
    Checkpoint,
    Dataset,
    Job,
    JobKind,
    MetricPoint,
    Status,
    StatusChange,
    User,
)
from shared.schemas.jobs import (
    CustomNetwork,
    Hyperparameters,
    JobClone,
    JobCreate,
    JobRead,
    JobUpdate,
    PretrainedNetwork,
    PreviousNetwork,
    StandardNetwork,
    SweepHyperparameters,
)
from shared.services import datasets as datasets_service
from shared.services import dispatch, lifecycle
from shared.settings import Settings


def network_task(session: Session, network: Any, user: User) -> str | None:
    """The task a job's network does: a standard network's own, a previous job's (None when
    that job is not one the user may use: the network check answers 404 for it); custom and
    uploaded networks classify."""
    if isinstance(network, StandardNetwork):
        return networks.network_task(network.name)
    if isinstance(network, PreviousNetwork):
        source = session.get(Job, network.job_id)
        if (
            source is None
            or source.kind != JobKind.TRAIN.value
            or not datasets_service.visible(user, source.owner_id)
        ):
            return None
        if source.request.get("task"):  # recorded since detection (chains of previous too)
            return str(source.request["task"])
        base = source.request.get("network", {})
        if base.get("kind") == "standard":
            return networks.network_task(str(base.get("name")))
    return "classification"


# what only classification's augmentation does (its crop, rotations, HSV)
_CLASSIFICATION_ONLY = {
    "crop_size": None,
    "aug_quad_rot": "none",
    "aug_rot": 0.0,
    "aug_hsv_use": False,
}


def fit_task(
    session: Session, network: Any, dataset: Dataset, raw: dict[str, Any], user: User
) -> str:
    """Refuse a network of another task than the dataset's, options the task does not have,
    and metrics it does not report; a detection or segmentation job left at classification's
    best_metric or early-stopping metric follows its own task's (val.map, val.miou).
    Changes `raw` (the request's hyperparameters) in place; returns the task."""
    task = str(dataset.task or "classification")
    net_task = network_task(session, network, user)
    if net_task is not None and net_task != task:
        names = [n.name for n in networks.CATALOG.values() if n.task == task]
        hint = f" ({task} networks: {', '.join(names)})" if task != "classification" else ""
        raise InvalidInput(
            f"this is a {net_task} network and dataset {dataset.id} is a {task} dataset{hint}",
            code="network_task_mismatch",
        )
    allowed = networks.TASK_METRICS[task]
    if task != "classification":
        for key, default in _CLASSIFICATION_ONLY.items():
            if raw.get(key, default) != default:
                raise InvalidInput(
                    f"{key} is classification's augmentation; {task} jobs flip (aug_flip), "
                    "scale and crop (aug_scale) and add noise (aug_noise) with their "
                    f"{'boxes' if task == 'detection' else 'masks'}: leave {key} unset",
                    code="invalid_hyperparameters",
                )
        if raw.get("best_metric") == "val.accuracy":
            raw["best_metric"] = allowed[0]
        early = raw.get("early_stopping")
        if early and early.get("metric") == "val.loss" and "val.loss" not in allowed:
            early["metric"] = allowed[0]
    for name, value in (
        ("best_metric", raw.get("best_metric")),
        ("early_stopping.metric", (raw.get("early_stopping") or {}).get("metric")),
    ):
        if value is not None and value not in allowed:
            raise InvalidInput(
                f"{name} {value} is not reported by {task} jobs; use one of {', '.join(allowed)}",
                code="invalid_hyperparameters",
            )
    return task


def backbone_checkpoint(session: Session, job_id: uuid.UUID) -> Checkpoint | None:
    """The checkpoint a backbone starts from: the job's best, else its last."""
    rows = {
        c.name: c
        for c in session.scalars(
            select(Checkpoint).where(
                Checkpoint.job_id == job_id, Checkpoint.name.in_(["best", "last"])
            )
        )
    }
    return rows.get("best") or rows.get("last")


def _check_backbone(session: Session, network: StandardNetwork, user: User) -> None:
    """A backbone from one of our classification jobs or an uploaded pretrained model must
    be the backbone's own network, and have weights to give."""
    info = networks.CATALOG[network.name]
    field = "backbone_job_id" if network.backbone_job_id is not None else "backbone_model_id"
    if info.task == "classification":
        raise InvalidInput(
            f"{network.name} is a classification network: {field} is for detection "
            "and segmentation networks (fine-tune a classifier with kind previous)",
            code="invalid_backbone",
        )
    if info.backbone is None:
        raise InvalidInput(
            f"{network.name}'s backbone cannot start from a classification model",
            code="invalid_backbone",
        )
    if network.backbone_model_id is not None:
        from shared.services.models import get_pretrained

        model = get_pretrained(session, network.backbone_model_id, user)
        base = model.network or {}
        trained = base.get("name") if base.get("kind") == "standard" else base.get("kind")
        if trained != info.backbone:
            raise InvalidInput(
                f"pretrained model {model.id} is a {trained}; {network.name}'s backbone is "
                f"{info.backbone}",
                code="invalid_backbone",
            )
        return
    source = session.get(Job, network.backbone_job_id)
    if (
        source is None
        or source.kind != JobKind.TRAIN.value
        or not datasets_service.visible(user, source.owner_id)
    ):
        raise NotFound(
            f"backbone job {network.backbone_job_id} does not exist", code="job_not_found"
        )
    base = source.request.get("network", {})
    trained = base.get("name") if base.get("kind") == "standard" else base.get("kind")
    if trained != info.backbone:
        raise InvalidInput(
            f"job {source.id} trained {trained}; {network.name}'s backbone is {info.backbone}",
            code="invalid_backbone",
        )
    if backbone_checkpoint(session, source.id) is None:
        raise Conflict(
            f"backbone job {source.id} has no best or last checkpoint yet",
            code="checkpoint_not_found",
        )


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
        if network.backbone_job_id is not None or network.backbone_model_id is not None:
            _check_backbone(session, network, user)
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
        if model is None or not datasets_service.visible(user, model.owner_id):
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
            or not datasets_service.visible(user, source.owner_id)
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


def check_limits(
    hyper: SweepHyperparameters | Hyperparameters, combos: int, settings: Settings
) -> None:
    """Refuse valid requests that would cost more than the service allows (422, limit named)."""
    if combos > settings.max_sweep_jobs:
        raise LimitExceeded(
            f"this sweep makes {combos} jobs; the limit is {settings.max_sweep_jobs} per "
            "request (DIGITS_MAX_SWEEP_JOBS)",
            code="sweep_too_large",
            extra={"limit": settings.max_sweep_jobs, "requested": combos},
        )
    if hyper.epochs > settings.max_epochs:
        raise LimitExceeded(
            f"epochs {hyper.epochs} is over the limit of {settings.max_epochs} (DIGITS_MAX_EPOCHS)",
            code="too_many_epochs",
            extra={"limit": settings.max_epochs, "requested": hyper.epochs},
        )
    for field in ("snapshot_interval", "val_interval"):
        interval = float(getattr(hyper, field))
        if interval > 0 and hyper.epochs / interval > settings.max_evaluations:
            count = math.ceil(hyper.epochs / interval)
            raise LimitExceeded(
                f"{field} {interval:g} over {hyper.epochs} epochs makes {count} of them; the "
                f"limit is {settings.max_evaluations} per job (DIGITS_MAX_EVALUATIONS): use an "
                f"interval of at least {hyper.epochs / settings.max_evaluations:g} epochs",
                code=f"{field}_too_small",
                extra={"limit": settings.max_evaluations, "requested": count},
            )


def create_training_jobs(
    session: Session, data: JobCreate, user: User, settings: Settings
) -> list[Job]:
    """Validate a submission and queue one job per sweep combination (sent after the commit)."""
    dataset = datasets_service.get_ready_dataset(session, data.dataset_id, user)
    requested = data.hyperparameters
    if data.recipe == "recommended" and isinstance(data.network, StandardNetwork):
        given = requested.model_dump(mode="json", exclude_unset=True)
        requested = SweepHyperparameters.model_validate(
            {**networks.recommended(data.network.name), **given}
        )
    raw = requested.model_dump(mode="json")
    task = fit_task(session, data.network, dataset, raw, user)
    lrs = raw["learning_rate"] if isinstance(raw["learning_rate"], list) else [raw["learning_rate"]]
    bss = raw["batch_size"] if isinstance(raw["batch_size"], list) else [raw["batch_size"]]
    seed = raw["seed"] if raw["seed"] is not None else random.randrange(2**31)
    combos = list(itertools.product(lrs, bss))
    check_limits(data.hyperparameters, len(combos), settings)
    datasets_service.check_quota(session, user, settings)
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
        if not jobs:  # the network check depends on the dataset and the crop, the same for all
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
            "task": task,
            "hyperparameters": hyper.model_dump(mode="json"),
            "gpu": data.gpu,
            "gpus": data.gpus,
        }
        jobs.append(
            Job(
                kind=JobKind.TRAIN,
                owner_id=user.id,
                name=name,
                group_name=group,
                notes=data.notes,
                dataset_id=dataset.id,
                request=request,
                requested_worker=data.gpu,
            )
        )
    lifecycle.create(session, jobs)
    dispatch.enqueue(session, jobs)
    return jobs


def get_job(session: Session, job_id: uuid.UUID, user: User) -> Job:
    """The job, or NotFound (also for another user's job)."""
    job = session.get(Job, job_id)
    if job is None or job.delete_requested or not datasets_service.visible(user, job.owner_id):
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
    conditions: list[ColumnElement[bool]] = [Job.delete_requested.is_(False)]
    if not user.is_admin:
        conditions.append(Job.owner_id == user.id)
    if status is not None:
        conditions.append(Job.status == status)
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
    outcome = lifecycle.request_abort(session, Job, job.id)
    if outcome.status.is_final and not outcome.stopped_now:
        raise Conflict(f"job {job_id} is already {outcome.status.value}", code="job_finished")
    if outcome.stopped_now:
        dispatch.retract(session, [job])
    session.refresh(job)
    return job


def request_delete(session: Session, job_id: uuid.UUID, user: User) -> bool:
    """Delete a job; True when it is gone now, False when its worker removes it once stopped."""
    return dispatch.delete_work(session, Job, get_job(session, job_id, user))


def clone_job(
    session: Session, job_id: uuid.UUID, data: JobClone, user: User, settings: Settings
) -> list[Job]:
    """A new job from the stored request, with overrides."""
    job = get_job(session, job_id, user)
    request = dict(job.request)
    request.pop("task", None)  # the dataset's, found again
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
    return create_training_jobs(session, create, user, settings)


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
    if job.status != Status.RUNNING or not job.started_at or job.progress <= 0:
        return None
    now = now or utcnow()
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=now.tzinfo)
    elapsed = (now - started).total_seconds()
    left = elapsed * (1 - job.progress) / job.progress
    return round(left, 1) if math.isfinite(left) else None


def view(job: Job, history: list[StatusChange]) -> dict[str, Any]:
    """The API view of a job row and its history as plain data, in JobRead's field order:
    what JobRead validates, and what the hot reads serialise without validating again."""
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "group": job.group_name,
        "notes": job.notes,
        "status": job.status,
        "status_history": [_entry(c) for c in history],
        "error": job.error,
        "dataset_id": job.dataset_id,
        "request": job.request,
        "worker": job.worker,
        "attempts": job.attempts,
        "progress": job.progress,
        "epoch": job.epoch,
        "step": job.step,
        "total_steps": job.total_steps,
        "eta_seconds": eta_seconds(job),
        "abort_requested": job.abort_requested,
        "queue_position": None,
        "waiting_reason": None,
        "best": {k: _metric_value(v) for k, v in (job.best or {}).items()},
        "last": {k: _metric_value(v) for k, v in (job.last or {}).items()},
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _entry(change: StatusChange) -> dict[str, Any]:
    # every StatusEntry field, in its order (as_entry leaves out the empty ones)
    return {
        "status": str(change.to_status),
        "at": change.at,
        "reason": change.reason,
        "worker": change.worker,
        "attempt": change.attempt,
    }


def _metric_value(stored: dict[str, Any]) -> dict[str, Any]:
    # MetricValue's fields with its types (a stored 1 is the float 1.0 it validates to)
    return {
        "value": float(stored["value"]),
        "step": int(stored["step"]),
        "epoch": float(stored["epoch"]),
    }


def to_read(job: Job, history: list[StatusChange]) -> JobRead:
    """The API view of a job row and its status history."""
    return JobRead.model_validate(view(job, history))


def read(session: Session, job: Job) -> JobRead:
    """The API view of one job."""
    return to_read(job, lifecycle.history(session, job.id))


def read_many(session: Session, jobs: list[Job]) -> list[JobRead]:
    """The API view of many jobs, their histories in one query."""
    found = lifecycle.histories(session, [j.id for j in jobs])
    return [to_read(j, found[j.id]) for j in jobs]
