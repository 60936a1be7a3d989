"""Dataset rules: creation, reading, listing, deletion."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import Conflict, NotFound
from shared.models import Dataset, Job, Status, User
from shared.schemas.datasets import DatasetOptions, DatasetRead, SplitSummary
from shared.services.states import transition


def create_dataset(
    session: Session,
    dataset_id: uuid.UUID,
    options: DatasetOptions,
    source: dict[str, Any],
    owner: User,
) -> Dataset:
    """Insert a dataset in `waiting`; the caller commits, then enqueues its import."""
    dataset = Dataset(
        id=dataset_id,
        owner_id=owner.id,
        name=options.name,
        group_name=options.group,
        status=Status.INITIALIZED.value,
        status_history=[],
        options=options.model_dump(mode="json"),
        source=source,
        image_width=options.image_width,
        image_height=options.image_height,
        image_channels=options.channels,
    )
    dataset.status_history = [{"status": Status.INITIALIZED.value, "at": utcnow().isoformat()}]
    transition(dataset, Status.WAITING)
    session.add(dataset)
    session.flush()
    return dataset


def visible(user: User, owner_id: uuid.UUID | None) -> bool:
    """Admins see everything; others see what they own."""
    return user.is_admin or owner_id == user.id


def get_dataset(session: Session, dataset_id: uuid.UUID, user: User) -> Dataset:
    """The dataset, or NotFound (also for another user's dataset)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or not visible(user, dataset.owner_id):
        raise NotFound(f"dataset {dataset_id} does not exist", code="dataset_not_found")
    return dataset


def get_ready_dataset(session: Session, dataset_id: uuid.UUID, user: User) -> Dataset:
    """The dataset if its import is done, else a 409 that says where it stands."""
    dataset = get_dataset(session, dataset_id, user)
    if dataset.status != Status.DONE.value:
        raise Conflict(
            f"dataset {dataset_id} is {dataset.status}, not done", code="dataset_not_ready"
        )
    return dataset


def list_datasets(
    session: Session, user: User, *, status: Status | None, page: int, per_page: int
) -> tuple[list[Dataset], int]:
    """A page of the user's datasets (all for admins), newest first, and the total count."""
    query = select(Dataset)
    count = select(func.count()).select_from(Dataset)
    if not user.is_admin:
        query = query.where(Dataset.owner_id == user.id)
        count = count.where(Dataset.owner_id == user.id)
    if status is not None:
        query = query.where(Dataset.status == status.value)
        count = count.where(Dataset.status == status.value)
    query = query.order_by(Dataset.created_at.desc(), Dataset.id).offset((page - 1) * per_page)
    items = list(session.scalars(query.limit(per_page)))
    return items, int(session.scalar(count) or 0)


def prepare_delete(session: Session, dataset_id: uuid.UUID, user: User) -> Dataset:
    """Refuse while jobs use the dataset (as DIGITS did); abort an import in flight."""
    dataset = get_dataset(session, dataset_id, user)
    users = session.scalar(
        select(func.count()).select_from(Job).where(Job.dataset_id == dataset_id)
    )
    if users:
        raise Conflict(
            f"cannot delete dataset {dataset_id}: {users} job(s) use it; delete them first",
            code="dataset_in_use",
        )
    if Status(dataset.status).is_running:
        transition(dataset, Status.ABORTED, reason="deleted")
    session.flush()
    return dataset


def to_read(dataset: Dataset) -> DatasetRead:
    """The API view of a dataset row."""
    splits: dict[str, SplitSummary] | None = None
    if dataset.counts and dataset.classes:
        splits = {
            split: SplitSummary(
                images=int(sum(counts)),
                per_class=dict(zip(dataset.classes, (int(c) for c in counts), strict=False)),
            )
            for split, counts in dataset.counts.items()
        }
    return DatasetRead(
        id=dataset.id,
        name=dataset.name,
        group=dataset.group_name,
        status=dataset.status,
        status_history=dataset.status_history or [],  # type: ignore[arg-type]
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
        skipped_samples=dataset.skipped_samples or [],  # type: ignore[arg-type]
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
