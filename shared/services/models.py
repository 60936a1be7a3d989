"""Rules for using trained models: which checkpoint, pretrained models, inference jobs."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Checkpoint, Dataset, Job, JobKind, PretrainedModel, Status, User
from shared.networks import exports_of
from shared.schemas.models import INFO_MAX_BYTES, InvalidModelInfo, ModelInfo, parse_model_info
from shared.services import datasets as datasets_service
from shared.services import dispatch, lifecycle


def checkpoint_name(raw: str | int | None) -> str:
    """best, last, or an epoch number as stored (epoch-3, epoch-1.5)."""
    if raw is None or raw == "":
        return "best"
    text = str(raw).strip()
    if text in ("best", "last"):
        return text
    number = text.removeprefix("epoch-")
    try:
        value = float(number) if len(number) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value > 1_000_000:
        raise InvalidInput(
            f"checkpoint {text[:40]!r}: use best, last or an epoch number (e.g. 3 or 1.5)",
            code="invalid_checkpoint",
        )
    return f"epoch-{int(value)}" if value == int(value) else f"epoch-{value:g}"


def resolve_checkpoint(session: Session, job: Job, raw: str | int | None) -> Checkpoint:
    """The checkpoint row of a training job; `best` falls back to `last`."""
    if job.kind != JobKind.TRAIN:
        raise Conflict(
            f"job {job.id} is a {job.kind} job, not a training job", code="not_a_training_job"
        )
    name = checkpoint_name(raw)
    rows = {
        c.name: c for c in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))
    }
    row = rows.get(name) or (rows.get("last") if name == "best" else None)
    # a row with a key names an object uploaded before the row was written; a path, a file
    if row is None or (os.path.isabs(row.path) and not Path(row.path).exists()):
        have = ", ".join(sorted(rows)) or "none yet"
        raise Conflict(
            f"job {job.id} has no checkpoint {name!r} (it has: {have})", code="checkpoint_not_found"
        )
    return row


def job_task(session: Session, job: Job) -> str:
    """What a training job's model does: classification, detection or segmentation."""
    task = (job.request or {}).get("task")
    if task:
        return str(task)
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    return str(dataset.task) if dataset is not None and dataset.task else "classification"


def require_classification(session: Session, job: Job, action: str) -> None:
    """A 400 for what only classification models do yet (classify, explain, evaluate, ...)."""
    task = job_task(session, job)
    if task != "classification":
        raise InvalidInput(
            f"job {job.id} trained a {task} model; {action} is for classification models so "
            f"far: use POST /jobs/{job.id}/predict",
            code="unsupported_task",
        )


def standard_network(session: Session, job: Job) -> str | None:
    """The catalog network a training job's weights are (through chains of previous jobs)."""
    seen: set[uuid.UUID] = set()
    current: Job | None = job
    while current is not None and current.id not in seen:
        seen.add(current.id)
        network = (current.request or {}).get("network") or {}
        if network.get("kind") == "standard":
            return str(network.get("name"))
        if network.get("kind") != "previous" or not network.get("job_id"):
            return None
        try:
            current = session.get(Job, uuid.UUID(str(network["job_id"])))
        except ValueError:
            return None
    return None


def require_exports(session: Session, job: Job, exports: list[str]) -> None:
    """A 400 for an export the job's kind of model does not have."""
    task = job_task(session, job)
    if task == "classification" or not exports:
        return
    network = standard_network(session, job)
    if network is None:  # a chain of previous jobs that was cut: the checkpoint itself says
        return
    allowed = exports_of(network)
    refused = [e for e in exports if e not in allowed]
    if refused:
        has = (
            f"it exports {', '.join(allowed)} (post-processing included)"
            if allowed
            else f"{network} has no export that reproduces its predictions, only its weights "
            "(fcos_resnet18_fpn, fcos_resnet50_fpn and retinanet_resnet50_fpn_v2 export onnx)"
        )
        raise InvalidInput(
            f"job {job.id} trained a {task} model: {has}, not {refused[0][:40]}",
            code="unsupported_task",
        )


def resize_mode_of(session: Session, job: Job) -> str:
    """The resize mode of the job's dataset (what classify must apply)."""
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    return str((dataset.options if dataset else {}).get("resize_mode", "squash"))


def create_model_job(
    session: Session, kind: JobKind, source: Job, user: User, request: dict[str, Any], name: str
) -> Job:
    """An inference or evaluation job about a training job; it is sent after the commit.

    The request names the checkpoint; its worker finds the file (no server path is stored).
    """
    job = Job(
        kind=kind,
        owner_id=user.id,
        name=name,
        group_name=source.group_name,
        dataset_id=None,
        request={"source_job_id": str(source.id), **request},
    )
    lifecycle.create(session, [job])
    dispatch.enqueue(session, [job])
    return job


def evaluation_dataset(
    session: Session,
    job: Job,
    dataset_id: uuid.UUID | None,
    split: str,
    user: User,
    task: str = "classification",
) -> Dataset:
    """The dataset to evaluate a job on: ready, of the model's task, with the split, the job's
    image shape and no class the model does not know (refused now, not after queueing)."""
    target = dataset_id or job.dataset_id
    if target is None:
        raise InvalidInput("this job has no dataset; give dataset_id", code="no_dataset")
    dataset = datasets_service.get_ready_dataset(session, target, user)
    if (dataset.task or "classification") != task:
        raise InvalidInput(
            f"dataset {dataset.id} is a {dataset.task} dataset; the model does {task}",
            code="dataset_task_mismatch",
        )
    own = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    if not sum((dataset.counts or {}).get(split, [])):
        raise InvalidInput(f"dataset {dataset.id} has no {split} images", code="empty_split")
    if own is not None and dataset.id != own.id:
        shape = (dataset.image_width, dataset.image_height, dataset.image_channels)
        wanted = (own.image_width, own.image_height, own.image_channels)
        if shape != wanted:
            raise InvalidInput(
                f"dataset {dataset.id} holds {shape[0]}x{shape[1]}x{shape[2]} images; the model "
                f"takes {wanted[0]}x{wanted[1]}x{wanted[2]} (import it at that size)",
                code="dataset_shape_mismatch",
            )
        unknown = [c for c in dataset.classes or [] if c not in (own.classes or [])]
        if task != "classification" and list(dataset.classes or []) != list(own.classes or []):
            raise InvalidInput(
                f"dataset {dataset.id}'s classes are not the model's, in its order "
                f"({', '.join((own.classes or [])[:5])})",
                code="dataset_classes_mismatch",
            )
        if unknown:
            raise InvalidInput(
                f"dataset {dataset.id} has classes the model does not know: {unknown[:5]}",
                code="dataset_classes_mismatch",
            )
    return dataset


def export_key(job_id: uuid.UUID, checkpoint: Checkpoint, exports: list[str], fmt: str) -> str:
    """The storage key of this checkpoint's download with these exports.

    It names the checkpoint's version (its step and when its row was last written), so a
    rewritten `best` or `last` gets a new download, and an existing one is never stale: no
    timestamps to compare, which a bucket keeps only to the second.
    """
    written = checkpoint.created_at.timestamp() if checkpoint.created_at else 0.0
    version = f"{checkpoint.step}-{round(written * 1_000_000):x}"
    kind = "+".join(exports) or "model"
    return f"jobs/{job_id}/downloads/{checkpoint.name}/{kind}.{fmt}/{version}"


# a TorchScript export inside a downloaded archive is not loaded: it may come back
PICKLE_SUFFIXES = (".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npz")


def check_upload_folder(folder: Path, max_weights_bytes: int) -> ModelInfo:
    """What a model upload must be before the model service looks at it: no pickles (they
    can run code), a bounded and valid info.json, and bounded safetensors weights (by their
    header). The model service then checks the weights against the network."""
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidInput(
                f"{path.name[:100]}: pickle-based files are refused (they can run code); "
                "send weights as safetensors",
                code="pickle_refused",
            )
    if (folder / "weights.safetensors").is_file():  # a pickle posing as weights says so first
        _check_safetensors_magic(folder / "weights.safetensors")
    path = folder / "info.json"
    if not path.is_file():
        raise InvalidInput("info.json is missing", code="invalid_model")
    with open(path, "rb") as fh:
        data = fh.read(INFO_MAX_BYTES + 1)
    try:
        info = parse_model_info(data)
    except InvalidModelInfo as exc:
        raise InvalidInput(str(exc), code="invalid_model") from exc
    weights = folder / Path(info.files.weights or "weights.safetensors").name
    if not weights.is_file():
        raise InvalidInput(f"the weights file {weights.name!r} is missing", code="invalid_model")
    size = weights.stat().st_size
    if size > max_weights_bytes:
        raise InvalidInput(
            f"the weights are {size:,} bytes, over the limit of {max_weights_bytes:,} "
            "(DIGITS_PRETRAINED_MAX_WEIGHTS_BYTES)",
            code="weights_too_large",
        )
    _check_safetensors_magic(weights)
    return info


def _check_safetensors_magic(weights: Path) -> None:
    with open(weights, "rb") as fh:
        head = fh.read(16)
    if len(head) < 9 or head[8:9] != b"{":
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise InvalidInput(
                "the weights are a pickle/torch file, refused; send safetensors",
                code="pickle_refused",
            )
        raise InvalidInput("the weights are not a safetensors file", code="invalid_weights")


def get_pretrained(session: Session, model_id: uuid.UUID, user: User) -> PretrainedModel:
    """The pretrained model, or NotFound (also for another user's)."""
    row = session.get(PretrainedModel, model_id)
    if row is None or not datasets_service.visible(user, row.owner_id):
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
        select(Job).where(Job.status.in_([Status.INITIALIZED, Status.WAITING]))
    ).all()
    users = [
        j
        for j in waiting
        if str(model_id)
        in (
            (j.request.get("network") or {}).get("model_id"),
            (j.request.get("network") or {}).get("backbone_model_id"),  # a detector's backbone
        )
    ]
    if users:
        raise Conflict(
            f"{len(users)} waiting job(s) start from this model; abort them first",
            code="pretrained_model_in_use",
        )
    return row
