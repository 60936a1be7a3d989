"""Datasets: import labelled images (DIGITS folder and textfile methods), read, explore, delete."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import Field

from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user
from shared import archives, artifacts, dataset_store, overlays, storage
from shared.errors import Forbidden, InvalidInput, NotFound
from shared.models import Status, User
from shared.schemas.common import PROBLEM_RESPONSES, Page, Problem
from shared.schemas.datasets import (
    DatasetOptions,
    DatasetRead,
    SampleBox,
    SamplePage,
    SampleRead,
    Split,
)
from shared.schemas.work import (
    ArchiveInput,
    FolderSource,
    ImageInput,
    ListInput,
    PathInput,
    TextfileSource,
)
from shared.services import datasets as datasets_service
from shared.settings import Settings

log = logging.getLogger("digits.api.datasets")

router = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=[Depends(get_current_user)])

PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG image"}
}


class _Upload:
    """Uploaded files of one request, saved under the new dataset's folder."""

    def __init__(self, settings: Settings, dataset_id: uuid.UUID) -> None:
        self.settings = settings
        self.dataset_id = dataset_id
        self.dir = storage.dataset_uploads_dir(settings, dataset_id)
        self.root = storage.dataset_dir(settings, dataset_id)

    def save(self, upload: UploadFile, name: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / name
        upload.file.seek(0)
        with open(target, "xb") as out:
            shutil.copyfileobj(upload.file, out, 1024 * 1024)
        return target

    def publish(self) -> None:
        """With a bucket, the checked uploads go there for the importing worker (any host)."""
        store = artifacts.get_store(self.settings)
        if not store.local and self.dir.is_dir():
            store.put_tree(f"{artifacts.dataset_prefix(self.dataset_id)}/uploads", self.dir)
            storage.remove_tree(self.root)

    def discard(self) -> None:
        artifacts.remove_dataset(self.settings, self.dataset_id)


def _server_folder(settings: Settings, raw: str, field: str) -> Path:
    """A server path the caller may import from: under an allowed root, an existing folder."""
    if "\x00" in raw:
        raise InvalidInput(f"{field}: the path holds a NUL byte", code="invalid_path")
    if len(raw) > 4096:
        raise InvalidInput(f"{field}: the path is longer than 4096 characters", code="invalid_path")
    if not settings.import_roots:
        raise Forbidden(
            f"{field}: importing from server folders is disabled; "
            "set DIGITS_IMPORT_ROOTS or upload an archive",
            code="import_path_not_allowed",
        )
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise InvalidInput(f"{field}: {raw!r} must be an absolute path", code="invalid_path")
    if not storage.is_under(path, settings.import_roots):
        raise Forbidden(
            f"{field}: {raw!r} is outside the allowed import roots",
            code="import_path_not_allowed",
        )
    try:
        is_dir = path.is_dir()
    except OSError:  # a name too long for the filesystem, a loop of links
        is_dir = False
    if not is_dir:
        raise InvalidInput(f"{field}: {raw!r} is not a folder", code="invalid_path")
    if storage.is_under(settings.resolved_data_dir, [path]):
        raise Forbidden(
            f"{field}: {raw!r} contains the service's data directory; choose a folder inside it",
            code="import_path_not_allowed",
        )
    return path


def _save_archive(
    upload: _Upload, settings: Settings, file: UploadFile, split: str
) -> ArchiveInput:
    path = upload.save(file, f"{split}.archive")
    try:
        info = archives.inspect_archive(path, archives.ArchiveLimits.from_settings(settings))
    except archives.UnsafeArchive as exc:
        raise InvalidInput(f"{split} archive: {exc}", code=exc.code) from exc
    return ArchiveInput(
        file=str(path.relative_to(upload.root)),
        filename=_client_name(file),
        archive=info.kind,
        members=info.members,
    )


def _client_name(file: UploadFile) -> str | None:
    """The name the client gave a file, bounded (it is only shown back)."""
    return Path(file.filename).name[:255] if file.filename else None


def _save_list(upload: _Upload, file: UploadFile, name: str) -> str:
    path = upload.save(file, name)
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name}: not a UTF-8 text file", code="invalid_list_file") from exc
    return str(path.relative_to(upload.root))


class DatasetCreateForm(DatasetOptions):
    """Import options plus the uploaded files (multipart/form-data)."""

    archive: UploadFile | None = Field(
        default=None, description="Archive (.zip, .tar, .tar.gz) of class folders"
    )
    val_archive: UploadFile | None = Field(default=None, description="Separate val set archive")
    test_archive: UploadFile | None = Field(default=None, description="Separate test set archive")
    train_list: UploadFile | None = Field(
        default=None, description="Text file of `path label` lines (DIGITS textfile method)"
    )
    val_list: UploadFile | None = Field(default=None, description="Val list (textfile method)")
    test_list: UploadFile | None = Field(default=None, description="Test list (textfile method)")
    labels: UploadFile | None = Field(
        default=None, description="Class names, line i = class i (textfile method)"
    )


_FILE_FIELDS = (
    "archive",
    "val_archive",
    "test_archive",
    "train_list",
    "val_list",
    "test_list",
    "labels",
)


@router.post(
    "",
    status_code=202,
    operation_id="create_dataset",
    summary="Import a labelled image dataset",
    response_model=DatasetRead,
    responses={
        **PROBLEM_RESPONSES,
        403: {"model": Problem},
        413: {"model": Problem},
        503: {"model": Problem},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/DatasetCreateForm"}
                }
            },
        }
    },
)
def create_dataset(
    form: Annotated[DatasetCreateForm, Form(media_type="multipart/form-data")],
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> DatasetRead:
    """Queue the import of a dataset from an archive, a server folder or list files (202)."""
    opts = DatasetOptions.model_validate(form.model_dump(exclude=set(_FILE_FIELDS)))
    datasets_service.check_quota(session, user, settings)
    dataset_id = uuid.uuid4()
    upload = _Upload(settings, dataset_id)
    try:
        source = _collect_sources(upload, settings, opts, form)
        upload.publish()
        dataset = datasets_service.create_dataset(
            session, dataset_id, opts, source.model_dump(mode="json"), user
        )
        read = datasets_service.read(session, dataset)
        session.commit()  # the import's message leaves now
    except BaseException:
        upload.discard()
        raise
    log.info("dataset=%s queued name=%r method=%s", dataset.id, dataset.name, source.method)
    return read


def _collect_sources(
    upload: _Upload, settings: Settings, opts: DatasetOptions, form: DatasetCreateForm
) -> FolderSource | TextfileSource:
    """Validate which sources were given, save uploads, and describe them for the worker."""
    if form.train_list is None:
        return _folder_source(upload, settings, opts, form)
    if opts.task != "classification":
        raise InvalidInput(
            f"a {opts.task} dataset comes as an archive or a server folder of images with "
            "their annotations, not as list files",
            code="invalid_source",
        )
    return _textfile_source(upload, settings, opts, form)


def _folder_source(
    upload: _Upload, settings: Settings, opts: DatasetOptions, form: DatasetCreateForm
) -> FolderSource:
    if form.labels is not None or form.val_list is not None or form.test_list is not None:
        raise InvalidInput(
            "labels, val_list and test_list belong to the textfile method: send train_list too",
            code="invalid_source",
        )
    if opts.image_root:
        raise InvalidInput("image_root is only used with train_list", code="invalid_source")
    found: dict[str, ImageInput] = {}
    for split, file, path in (
        ("train", form.archive, opts.train_path),
        ("val", form.val_archive, opts.val_path),
        ("test", form.test_archive, opts.test_path),
    ):
        if file is not None and path:
            raise InvalidInput(
                f"{split}: give an archive or a server path, not both", code="invalid_source"
            )
        if file is not None:
            found[split] = _save_archive(upload, settings, file, split)
        elif path:
            found[split] = PathInput(path=str(_server_folder(settings, path, f"{split}_path")))
    if "train" not in found:
        raise InvalidInput(
            "no images: upload an `archive`, give `train_path`, or send `train_list` with `labels`",
            code="missing_source",
        )
    return FolderSource(train=found["train"], val=found.get("val"), test=found.get("test"))


def _textfile_source(
    upload: _Upload, settings: Settings, opts: DatasetOptions, form: DatasetCreateForm
) -> TextfileSource:
    """List files name the images; they live in the archive or under image_root."""
    if form.labels is None:
        raise InvalidInput("the textfile method needs a `labels` file", code="missing_labels")
    if opts.train_path or opts.val_path or opts.test_path or form.val_archive or form.test_archive:
        raise InvalidInput(
            "with train_list, give images as one `archive` or `image_root`, "
            "and val/test as val_list/test_list",
            code="invalid_source",
        )
    if form.archive is not None and opts.image_root:
        raise InvalidInput("give an archive or image_root, not both", code="invalid_source")
    images: ImageInput
    if form.archive is not None:
        images = _save_archive(upload, settings, form.archive, "images")
    elif opts.image_root:
        images = PathInput(path=str(_server_folder(settings, opts.image_root, "image_root")))
    else:
        raise InvalidInput(
            "the textfile method needs the images: an `archive` or `image_root`",
            code="missing_source",
        )
    lists: dict[str, ListInput] = {}
    for split, file in (
        ("train", form.train_list),
        ("val", form.val_list),
        ("test", form.test_list),
    ):
        if file is not None:
            lists[split] = ListInput(
                file=_save_list(upload, file, f"{split}.txt"), filename=_client_name(file)
            )
    return TextfileSource(
        images=images,
        labels=_save_list(upload, form.labels, "labels.txt"),
        train=lists["train"],
        val=lists.get("val"),
        test=lists.get("test"),
    )


@router.get(
    "",
    operation_id="list_datasets",
    summary="List datasets",
    response_model=Page[DatasetRead],
    responses={422: {"model": Problem}},
)
def list_datasets(
    session: SessionDep,
    user: CurrentUser,
    status: Annotated[Status | None, Query(description="Only datasets in this state")] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> Page[DatasetRead]:
    """A page of datasets, newest first, optionally filtered by status."""
    items, total = datasets_service.list_datasets(
        session, user, status=status, page=page, per_page=per_page
    )
    return Page[DatasetRead](
        items=datasets_service.read_many(session, items), total=total, page=page, per_page=per_page
    )


@router.get(
    "/{dataset_id}",
    operation_id="get_dataset",
    summary="Show a dataset",
    response_model=DatasetRead,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> DatasetRead:
    """A dataset: classes, counts per split and class, image shape, size, import speed."""
    return datasets_service.read(session, datasets_service.get_dataset(session, dataset_id, user))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    operation_id="delete_dataset",
    summary="Delete a dataset",
    responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
)
def delete_dataset(
    dataset_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> Response:
    """Delete a dataset and its files; refused while jobs use it. An import stops first."""
    gone = datasets_service.request_delete(session, dataset_id, user)
    session.commit()
    if gone:
        artifacts.remove_dataset(settings, dataset_id)
    log.info("dataset=%s deleted", dataset_id)
    return Response(status_code=204)


def _done_dir(session: SessionDep, settings: Settings, dataset_id: uuid.UUID, user: User) -> Path:
    dataset = datasets_service.get_ready_dataset(session, dataset_id, user)
    return _local_folder(settings, dataset.id)


def _local_folder(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """The dataset's folder here (with a bucket, this host's cached copy)."""
    try:
        return artifacts.local_dataset(settings, dataset_id)
    except FileNotFoundError as exc:
        raise NotFound(
            f"dataset {dataset_id}'s files are gone from storage", code="dataset_files_missing"
        ) from exc


@router.get(
    "/{dataset_id}/mean.png",
    operation_id="get_dataset_mean_image",
    summary="The mean image of the training split",
    response_class=Response,
    responses={**PNG, 404: {"model": Problem}, 409: {"model": Problem}},
)
def get_mean_image(
    dataset_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> Response:
    """The mean training image as PNG (what mean subtraction removes)."""
    store = artifacts.get_store(settings)
    if not store.local:  # one small object, not the whole dataset into this host's cache
        dataset = datasets_service.get_ready_dataset(session, dataset_id, user)
        try:
            key = f"{artifacts.dataset_prefix(dataset.id)}/{dataset_store.MEAN_PNG}"
            return Response(store.get_bytes(key), media_type="image/png")
        except FileNotFoundError:
            pass
    folder = _done_dir(session, settings, dataset_id, user)
    return Response(dataset_store.mean_png_bytes(folder), media_type="image/png")


@router.get(
    "/{dataset_id}/samples",
    operation_id="list_dataset_samples",
    summary="Page through the images of a split",
    response_model=SamplePage,
    responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
)
def list_samples(
    request: Request,
    dataset_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    split: Split = "train",
    label: Annotated[int | None, Query(ge=0, description="Only this class index")] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> SamplePage:
    """DIGITS's explore view: the samples of a split, optionally of one class, with image URLs."""
    dataset = datasets_service.get_ready_dataset(session, dataset_id, user)
    classes = dataset.classes or []
    if label is not None and label >= len(classes):
        raise InvalidInput(
            f"label {label} does not exist (0..{len(classes) - 1})", code="invalid_label"
        )
    folder = _local_folder(settings, dataset.id)
    reader = _reader(folder, split)
    labels = reader.labels
    indices: Sequence[int] | np.ndarray
    if label is None:
        indices = range(len(labels))
    elif reader.has_boxes:  # the images with a box of that class
        indices = reader.images_with_box_class(label)
    elif reader.has_masks:
        indices = reader.images_with_mask_class(label)
    else:
        indices = (labels == label).nonzero()[0]
    total = len(indices)
    start = (page - 1) * per_page
    chosen = [int(i) for i in indices[start : start + per_page]]
    base = str(
        request.url_for(
            "get_dataset_sample_image", dataset_id=str(dataset.id), split=split, index="0"
        )
    )[:-1]
    items = [_sample(reader, i, classes, f"{base}{i}") for i in chosen]
    return SamplePage(
        split=split, label=label, items=items, total=total, page=page, per_page=per_page
    )


def _sample(reader: dataset_store.SplitReader, i: int, classes: list[str], url: str) -> SampleRead:
    if reader.has_boxes:
        boxes, box_labels = reader.boxes(i)
        found = [
            SampleBox(
                label=int(k),
                class_name=classes[int(k)],
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for b, k in zip(boxes, box_labels, strict=True)
        ]
        return SampleRead(
            index=i,
            label=-1,
            class_name="",
            image_url=url,
            annotated_url=f"{url}/annotated",
            boxes=found,
        )
    if reader.has_masks:
        return SampleRead(
            index=i, label=-1, class_name="", image_url=url, annotated_url=f"{url}/annotated"
        )
    label = int(reader.labels[i])
    return SampleRead(index=i, label=label, class_name=classes[label], image_url=url)


def _sample_reader(folder: Path, split: str, index: int) -> dataset_store.SplitReader:
    reader = _reader(folder, split)
    if not 0 <= index < len(reader):
        raise NotFound(
            f"{split} has {len(reader)} images; {index} is out of range", code="sample_not_found"
        )
    return reader


def _reader(folder: Path, split: str) -> dataset_store.SplitReader:
    if split not in dataset_store.splits_present(folder):
        raise NotFound(f"this dataset has no {split} split", code="split_not_found")
    return dataset_store.open_split(folder, split)


@router.get(
    "/{dataset_id}/samples/{split}/{index}",
    operation_id="get_dataset_sample_image",
    name="get_dataset_sample_image",
    summary="One stored image as PNG",
    response_class=Response,
    responses={**PNG, 404: {"model": Problem}, 409: {"model": Problem}},
)
def get_sample_image(
    dataset_id: uuid.UUID,
    split: Split,
    index: int,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> Response:
    """The stored (resized) image, exactly as training sees it, as PNG."""
    folder = _done_dir(session, settings, dataset_id, user)
    reader = _sample_reader(folder, split, index)
    return Response(dataset_store.to_png_bytes(reader.image(index)), media_type="image/png")


@router.get(
    "/{dataset_id}/samples/{split}/{index}/annotated",
    operation_id="get_dataset_sample_annotated",
    summary="One stored image with its boxes or mask drawn, as PNG",
    response_class=Response,
    responses={**PNG, 400: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}},
)
def get_sample_annotated(
    dataset_id: uuid.UUID,
    split: Split,
    index: int,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    scale: Annotated[
        int, Query(ge=1, le=overlays.MAX_SCALE, description="Enlarge small images (nearest)")
    ] = 1,
) -> Response:
    """Explore a detection or segmentation dataset: boxes outlined and named, or the mask
    blended over the image (class 0 clear, 255 ignored), at the stored size times scale."""
    dataset = datasets_service.get_ready_dataset(session, dataset_id, user)
    if dataset.task == "classification":
        raise InvalidInput(
            "a classification dataset has no boxes or masks to draw", code="unsupported_task"
        )
    folder = _done_dir(session, settings, dataset_id, user)
    reader = _sample_reader(folder, split, index)
    height, width = reader.shape[:2]
    if max(height, width) * scale > overlays.MAX_SIDE:
        raise InvalidInput(
            f"scale {scale} would draw a {width * scale}x{height * scale} image; at most "
            f"{overlays.MAX_SIDE} pixels a side",
            code="scale_too_large",
        )
    image = reader.image(index)
    if reader.has_boxes:
        boxes, labels = reader.boxes(index)
        png = overlays.boxes_png(image, boxes, labels, dataset.classes or [], scale)
    else:
        colors = dataset_store.read_meta(folder).get("colors")
        png = overlays.mask_png(image, reader.mask(index), colors, scale)
    return Response(png, media_type="image/png")
