"""Rules for using trained models: which checkpoint, pretrained models, inference jobs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Checkpoint, Dataset, Job, JobKind, PretrainedModel, Status, User
from shared.services import datasets as dataset_service
from shared.services import jobs as job_service


def checkpoint_name(raw: str | int | None) -> str:
    """best, last, or an epoch number as stored (epoch-3, epoch-1.5)."""
    if raw is None or raw == "":
        return "best"
    text = str(raw).strip()
    if text in ("best", "last") or text.startswith("epoch-"):
        return text
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidInput(
            f"checkpoint {raw!r}: use best, last or an epoch number", code="invalid_checkpoint"
        ) from exc
    return f"epoch-{int(value)}" if value == int(value) else f"epoch-{value:g}"


def resolve_checkpoint(session: Session, job: Job, raw: str | int | None) -> Checkpoint:
    """The checkpoint row of a training job; `best` falls back to `last`."""
    if job.kind != JobKind.TRAIN.value:
        raise Conflict(
            f"job {job.id} is a {job.kind} job, not a training job", code="not_a_training_job"
        )
    name = checkpoint_name(raw)
    rows = {
        c.name: c for c in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))
    }
    row = rows.get(name) or (rows.get("last") if name == "best" else None)
    if row is None or not Path(row.path).exists():
        have = ", ".join(sorted(rows)) or "none yet"
        raise Conflict(
            f"job {job.id} has no checkpoint {name!r} (it has: {have})", code="checkpoint_not_found"
        )
    return row


def resize_mode_of(session: Session, job: Job) -> str:
    """The resize mode of the job's dataset (what classify must apply)."""
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    return str((dataset.options if dataset else {}).get("resize_mode", "squash"))


def create_model_job(
    session: Session, kind: JobKind, source: Job, user: User, request: dict[str, Any], name: str
) -> Job:
    """An inference or evaluation job about a training job, in `waiting`."""
    job = Job(
        kind=kind.value,
        owner_id=user.id,
        name=name,
        group_name=source.group_name,
        status=Status.INITIALIZED.value,
        status_history=[{"status": "initialized", "at": _now()}],
        dataset_id=None,
        request={"source_job_id": str(source.id), **request},
    )
    session.add(job)
    session.flush()
    job_service.record_event(session, job.id, "status", {"status": "initialized", "at": _now()})
    job_service.set_status(session, job, Status.WAITING)
    return job


def _now() -> str:
    from shared.db import utcnow

    return utcnow().isoformat()


def get_pretrained(session: Session, model_id: uuid.UUID, user: User) -> PretrainedModel:
    """The pretrained model, or NotFound (also for another user's)."""
    row = session.get(PretrainedModel, model_id)
    if row is None or not dataset_service.visible(user, row.owner_id):
        raise NotFound(
            f"pretrained model {model_id} does not exist", code="pretrained_model_not_found"
        )
    return row


def list_pretrained(session: Session, user: User) -> list[PretrainedModel]:
    """The user's pretrained models (all for admins), newest first."""
    query = select(PretrainedModel).order_by(PretrainedModel.created_at.desc())
    if not user.is_admin:
        query = query.where(PretrainedModel.owner_id == user.id)
    return list(session.scalars(query))


def add_pretrained(
    session: Session,
    model_id: uuid.UUID,
    user: User,
    name: str,
    info: dict[str, Any],
    source_job: uuid.UUID | None,
) -> PretrainedModel:
    """Record a validated model folder."""
    inp = info["input"]
    row = PretrainedModel(
        id=model_id,
        owner_id=user.id,
        name=name,
        network=info["network"],
        classes=list(info["classes"]),
        image_width=int(inp["width"]),
        image_height=int(inp["height"]),
        image_channels=int(inp["channels"]),
        resize_mode=str(inp.get("resize_mode") or "squash"),
        info=info,
        source_job_id=source_job,
    )
    session.add(row)
    session.flush()
    return row


def prepare_delete_pretrained(session: Session, model_id: uuid.UUID, user: User) -> PretrainedModel:
    """Refuse while waiting jobs will start from it."""
    row = get_pretrained(session, model_id, user)
    waiting = session.scalars(
        select(Job).where(Job.status.in_([Status.INITIALIZED.value, Status.WAITING.value]))
    ).all()
    users = [
        j for j in waiting if (j.request.get("network") or {}).get("model_id") == str(model_id)
    ]
    if users:
        raise Conflict(
            f"{len(users)} waiting job(s) start from this model; abort them first",
            code="pretrained_model_in_use",
        )
    return row
