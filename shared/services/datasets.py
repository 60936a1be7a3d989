"""Dataset rules: creation, reading, listing, deletion."""

from __future__ import annotations

import uuid
from typing import Any, Literal, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidInput, LimitExceeded, NotFound
from shared.models import Dataset, Job, Status, StatusChange, User
from shared.schemas.common import StatusEntry
from shared.schemas.datasets import DatasetOptions, DatasetRead, SkippedFile, SplitSummary
from shared.services import dispatch, lifecycle
from shared.settings import Settings

COUNT_UNITS: dict[str, Literal["images", "boxes", "pixels"]] = {
    "classification": "images",
    "detection": "boxes",
    "segmentation": "pixels",
}


def create_dataset(
    session: Session,
    dataset_id: uuid.UUID,
    options: DatasetOptions,
    source: dict[str, Any],
    owner: User,
) -> Dataset:
    """Queue the import of a new dataset (its message leaves after the commit)."""
    dataset = Dataset(
        id=dataset_id,
        owner_id=owner.id,
        name=options.name,
        group_name=options.group,
        task=options.task,
        options=options.model_dump(mode="json"),
        source=source,
        image_width=options.image_width,
        image_height=options.image_height,
        image_channels=options.channels,
    )
    lifecycle.create(session, [dataset])
    dispatch.enqueue(session, [dataset])
    return dataset


def disk_usage(session: Session, user: User) -> int:
    """Bytes the user's datasets use (jobs' checkpoints are counted by their worker)."""
    from shared.models import Checkpoint

    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner_id == user.id)
    )
    checkpoints = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.owner_id == user.id)
    )
    return int(datasets or 0) + int(checkpoints or 0)


def check_quota(session: Session, user: User, settings: Settings) -> None:
    """Refuse new work when the user's datasets and checkpoints use their quota (422)."""
    if not settings.user_quota_bytes:
        return
    used = disk_usage(session, user)
    if used >= settings.user_quota_bytes:
        raise LimitExceeded(
            f"your datasets and checkpoints use {used:,} bytes of your quota of "
            f"{settings.user_quota_bytes:,} (DIGITS_USER_QUOTA_BYTES); delete some first",
            code="disk_quota_exceeded",
            extra={"limit": settings.user_quota_bytes, "used": used},
        )


def visible(user: User, owner_id: uuid.UUID | None) -> bool:
    """Admins see everything; others see what they own."""
    return user.is_admin or owner_id == user.id


def get_dataset(session: Session, dataset_id: uuid.UUID, user: User) -> Dataset:
    """The dataset, or NotFound (also for another user's dataset)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.delete_requested or not visible(user, dataset.owner_id):
        raise NotFound(f"dataset {dataset_id} does not exist", code="dataset_not_found")
    return dataset


def get_ready_dataset(session: Session, dataset_id: uuid.UUID, user: User) -> Dataset:
    """The dataset if its import is done, else a 409 that says where it stands."""
    dataset = get_dataset(session, dataset_id, user)
    if dataset.status != Status.DONE:
        raise Conflict(
            f"dataset {dataset_id} is {dataset.status}, not done", code="dataset_not_ready"
        )
    return dataset


def get_classification_dataset(
    session: Session, dataset_id: uuid.UUID, user: User, action: str
) -> Dataset:
    """A ready dataset for what only classification has yet (`action`: tuning studies,
    evaluation); the others get a 400."""
    dataset = get_ready_dataset(session, dataset_id, user)
    if dataset.task != "classification":
        raise InvalidInput(
            f"dataset {dataset_id} is a {dataset.task} dataset; {action} is available for "
            f"classification only so far ({dataset.task} models are trained with a job and "
            "tried with POST /jobs/{id}/predict)",
            code="unsupported_task",
        )
    return dataset


def list_datasets(
    session: Session, user: User, *, status: Status | None, page: int, per_page: int
) -> tuple[list[Dataset], int]:
    """A page of the user's datasets (all for admins), newest first, and the total count."""
    query = select(Dataset).where(Dataset.delete_requested.is_(False))
    count = select(func.count()).select_from(Dataset).where(Dataset.delete_requested.is_(False))
    if not user.is_admin:
        query = query.where(Dataset.owner_id == user.id)
        count = count.where(Dataset.owner_id == user.id)
    if status is not None:
        query = query.where(Dataset.status == status)
        count = count.where(Dataset.status == status)
    query = query.order_by(Dataset.created_at.desc(), Dataset.id).offset((page - 1) * per_page)
    items = list(session.scalars(query.limit(per_page)))
    return items, int(session.scalar(count) or 0)


def request_delete(session: Session, dataset_id: uuid.UUID, user: User) -> bool:
    """Delete a dataset; True when gone now, False when its import stops and removes it.

    Refused while jobs use it (as DIGITS did). An import in flight is hidden at once and asked
    to stop; its worker deletes the row and the files when it has stopped.
    """
    dataset = get_dataset(session, dataset_id, user)
    users = session.scalar(
        select(func.count()).select_from(Job).where(Job.dataset_id == dataset_id)
    )
    if users:
        raise Conflict(
            f"cannot delete dataset {dataset_id}: {users} job(s) use it; delete them first",
            code="dataset_in_use",
        )
    return dispatch.delete_work(session, Dataset, dataset)


def read(session: Session, dataset: Dataset) -> DatasetRead:
    """The API view of one dataset."""
    return to_read(dataset, lifecycle.history(session, dataset.id))


def read_many(session: Session, datasets: list[Dataset]) -> list[DatasetRead]:
    """The API view of many datasets, their histories in one query."""
    found = lifecycle.histories(session, [d.id for d in datasets])
    return [to_read(d, found[d.id]) for d in datasets]


def to_read(dataset: Dataset, history: list[StatusChange]) -> DatasetRead:
    """The API view of a dataset row and its status history."""
    splits: dict[str, SplitSummary] | None = None
    if dataset.counts and dataset.classes:
        sizes = dataset.split_images or {}
        splits = {
            split: SplitSummary(
                images=int(sizes.get(split, sum(counts))),
                per_class=dict(zip(dataset.classes, (int(c) for c in counts), strict=False)),
            )
            for split, counts in dataset.counts.items()
        }
    return DatasetRead(
        id=dataset.id,
        name=dataset.name,
        group=dataset.group_name,
        task=cast(Literal["classification", "detection", "segmentation"], dataset.task),
        annotation_format=dataset.annotation_format,
        count_unit=COUNT_UNITS.get(dataset.task, "images"),
        status=dataset.status,
        status_history=[StatusEntry(**lifecycle.as_entry(c)) for c in history],
        attempts=dataset.attempts,
        worker=dataset.worker,
        error=dataset.error,
        progress=dataset.progress,
        options=dataset.options,
        source=_public_source(dataset.source),
        method=dataset.source.get("method", "folder"),
        image_width=dataset.image_width,
        image_height=dataset.image_height,
        image_channels=dataset.image_channels,
        resize_mode=dataset.options.get("resize_mode", "squash"),
        encoding=dataset.encoding,
        classes=dataset.classes,
        splits=splits,
        num_images=dataset.num_images,
        skipped=dataset.skipped,
        skipped_samples=[SkippedFile.model_validate(s) for s in dataset.skipped_samples or []],
        dropped_classes=dataset.dropped_classes or [],
        size_bytes=dataset.size_bytes,
        import_seconds=dataset.import_seconds,
        images_per_second=dataset.images_per_second,
        created_at=dataset.created_at,
        started_at=dataset.started_at,
        finished_at=dataset.finished_at,
    )


def _public_source(source: dict[str, Any]) -> dict[str, Any]:
    """The source description without internal storage paths."""
    public: dict[str, Any] = {"method": source.get("method", "folder")}
    for split in ("train", "val", "test"):
        item = source.get(split)
        if item:
            public[split] = {k: v for k, v in item.items() if k != "file"}
    return public
