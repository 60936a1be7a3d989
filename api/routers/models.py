"""Using trained models: classify, evaluate, download/export, pretrained models."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CeleryDep, CurrentUser, SessionDep, SettingsDep, get_current_user
from shared import archives, queue, storage
from shared.errors import DomainError, InvalidInput, NotFound, ServiceUnavailable
from shared.models import JobKind, Status
from shared.schemas.common import PROBLEM_RESPONSES, Problem
from shared.schemas.jobs import JobRead
from shared.schemas.models import (
    ArchiveFormat,
    ClassifyResult,
    EvaluationResults,
    InferenceResults,
    PretrainedModelRead,
    ToPretrained,
)
from shared.services import datasets as dataset_service
from shared.services import dispatch
from shared.services import jobs as job_service
from shared.services import models as service
from shared.settings import Settings

log = logging.getLogger("digits.api.models")

router = APIRouter(tags=["models"], dependencies=[Depends(get_current_user)])

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npz")


async def _model_server(request: Request, method: str, path: str, **kwargs: Any) -> Any:
    """Call the model service; its failures become problems a client understands."""
    client: httpx.AsyncClient = request.app.state.model_client
    try:
        resp = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        log.error("model service unreachable: %s", exc)
        raise ServiceUnavailable(
            "the model service is not answering; retry shortly", code="model_service_unavailable"
        ) from exc
    if resp.status_code >= 500:
        raise ServiceUnavailable(
            "the model service failed; retry shortly", code="model_service_error"
        )
    body = resp.json()
    if resp.status_code >= 400:
        raise DomainError(
            body.get("detail", "model service refused the request"),
            status=resp.status_code,
            code=body.get("code", "model_error"),
            title="Model error",
        )
    return body


class ClassifyForm(BaseModel):
    """Images to classify, and how (multipart/form-data)."""

    model_config = ConfigDict(extra="forbid")

    images: list[UploadFile] = Field(default_factory=list, description="One or more images")
    archive: UploadFile | None = Field(
        default=None, description="An archive of images: always answered as an inference job"
    )
    checkpoint: str = Field(default="best", description="best, last, or an epoch number")
    top_k: int = Field(default=5, ge=1, le=1000)


def _save(upload: UploadFile, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    upload.file.seek(0)
    with open(target, "xb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
    return target


def _multipart(schema: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
            },
        }
    }


@router.post(
    "/jobs/{job_id}/classify",
    operation_id="classify_images",
    summary="Classify images with a trained model",
    response_model=ClassifyResult,
    responses={
        **PROBLEM_RESPONSES,
        202: {"model": JobRead, "description": "An inference job"},
        503: {"model": Problem},
    },
    openapi_extra=_multipart("ClassifyForm"),
)
async def classify(
    job_id: uuid.UUID,
    form: Annotated[ClassifyForm, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    user: CurrentUser,
) -> Any:
    """A few images are answered directly; many images or an archive make an inference job."""
    job = job_service.get_job(session, job_id, user)
    ckpt = service.resolve_checkpoint(session, job, form.checkpoint)
    resize_mode = service.resize_mode_of(session, job)
    images = [f for f in form.images if f.filename or f.size]
    if not images and form.archive is None:
        raise InvalidInput("send one or more `images`, or an `archive`", code="no_images")
    if form.archive is not None or len(images) > settings.classify_max_images:
        infer = service.create_model_job(
            session,
            JobKind.INFERENCE,
            job,
            user,
            {
                "checkpoint": ckpt.name,
                "checkpoint_path": ckpt.path,
                "top_k": form.top_k,
                "resize_mode": resize_mode,
            },
            name=f"classify with {job.name}",
        )
        folder = storage.job_dir(settings, infer.id) / "inputs"
        try:
            if form.archive is not None:
                path = _save(form.archive, folder.parent / "input.archive")
                try:
                    archives.inspect_archive(path)
                except archives.UnsafeArchive as exc:
                    raise InvalidInput(f"archive: {exc}", code=exc.code) from exc
            for i, image in enumerate(images):
                _save(image, folder / f"{i:07d}-{Path(image.filename or 'image').name}")
        except BaseException:
            session.rollback()
            storage.remove_tree(folder.parent)
            raise
        session.commit()
        dispatch.try_deliver(celery, session, dispatch.Send("job", infer.id, queue.INFER, None))
        session.commit()
        return JSONResponse(job_service.to_read(infer).model_dump(mode="json"), status_code=202)
    files = [
        (
            "images",
            (
                f.filename or f"image-{i}",
                await f.read(),
                f.content_type or "application/octet-stream",
            ),
        )
        for i, f in enumerate(images)
    ]
    body = await _model_server(
        request,
        "POST",
        "/classify",
        data={"model": ckpt.path, "resize_mode": resize_mode, "top_k": str(form.top_k)},
        files=files,
    )
    return ClassifyResult(
        job_id=job.id,
        checkpoint=ckpt.name,
        predictions=body["predictions"],
        milliseconds=body["milliseconds"],
    )


def _results_path(settings: Settings, job_id: uuid.UUID, name: str) -> Path:
    return storage.job_dir(settings, job_id) / name


@router.get(
    "/jobs/{job_id}/results",
    operation_id="get_job_results",
    summary="Results of an inference or evaluation job",
    response_model=InferenceResults | EvaluationResults,
    responses={
        200: {"content": {"text/csv": {}}},
        404: {"model": Problem},
        409: {"model": Problem},
        422: {"model": Problem},
    },
)
def get_results(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[
        str, Query(pattern="^(json|csv)$", description="inference jobs: json (paged) or csv (all)")
    ] = "json",
) -> Any:
    """Inference: paginated predictions (or all as CSV). Evaluation: accuracy and matrices."""
    job = job_service.get_job(session, job_id, user)
    if job.kind == JobKind.TRAIN.value:
        raise NotFound("training jobs have metrics and checkpoints, not results", code="no_results")
    if job.status != Status.DONE.value:
        from shared.errors import Conflict

        raise Conflict(
            f"job {job_id} is {job.status}; results come when it is done", code="results_not_ready"
        )
    if job.kind == JobKind.EVALUATE.value:
        data = json.loads(_results_path(settings, job.id, "evaluation.json").read_text())
        return EvaluationResults.model_validate(data)
    rows = [
        json.loads(line)
        for line in _results_path(settings, job.id, "results.jsonl").read_text().splitlines()
        if line
    ]
    if format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        k = max((len(r["top"]) for r in rows), default=0)
        writer.writerow(
            ["filename", *[f"{c}{i + 1}" for i in range(k) for c in ("label", "probability")]]
        )
        for r in rows:
            writer.writerow(
                [
                    r["filename"],
                    *[v for p in r["top"] for v in (p["label"], f"{p['probability']:.6f}")],
                ]
            )
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job.id}.csv"'},
        )
    start = (page - 1) * per_page
    return InferenceResults(
        items=rows[start : start + per_page], total=len(rows), page=page, per_page=per_page
    )


class EvaluateForm(BaseModel):
    """What to evaluate on (multipart/form-data or urlencoded)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(default="best", description="best, last, or an epoch number")
    dataset_id: uuid.UUID | None = Field(
        default=None, description="A dataset with the same classes; default: the job's own"
    )
    split: str = Field(default="val", pattern="^(train|val|test)$")
    top_n: int = Field(
        default=9, ge=0, le=100, description="Most confident images per class to keep"
    )
    archive: UploadFile | None = Field(
        default=None, description="A labelled archive (class folders) instead of a dataset"
    )


@router.post(
    "/jobs/{job_id}/evaluate",
    status_code=202,
    operation_id="evaluate_job",
    summary="Evaluate a trained model on a dataset split or a labelled archive",
    response_model=JobRead,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
    openapi_extra=_multipart("EvaluateForm"),
)
def evaluate(
    job_id: uuid.UUID,
    form: Annotated[EvaluateForm, Form(media_type="multipart/form-data")],
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    user: CurrentUser,
) -> JobRead:
    """Top-1/top-5, confusion matrix, per-class precision and recall, top-N images (a job)."""
    job = job_service.get_job(session, job_id, user)
    ckpt = service.resolve_checkpoint(session, job, form.checkpoint)
    request: dict[str, Any] = {
        "checkpoint": ckpt.name,
        "checkpoint_path": ckpt.path,
        "split": form.split,
        "top_n": form.top_n,
        "resize_mode": service.resize_mode_of(session, job),
    }
    if form.archive is None:
        target = form.dataset_id or job.dataset_id
        assert target is not None  # training jobs always have a dataset
        dataset = dataset_service.get_ready_dataset(session, target, user)
        if form.split not in (dataset.counts or {}) or not sum((dataset.counts or {})[form.split]):
            raise InvalidInput(
                f"dataset {dataset.id} has no {form.split} images", code="empty_split"
            )
        request["dataset_id"] = str(dataset.id)
    evaluation = service.create_model_job(
        session, JobKind.EVALUATE, job, user, request, name=f"evaluate {job.name}"
    )
    if form.archive is not None:
        path = _save(form.archive, storage.job_dir(settings, evaluation.id) / "input.archive")
        try:
            archives.inspect_archive(path)
        except archives.UnsafeArchive as exc:
            session.rollback()
            storage.remove_tree(path.parent)
            raise InvalidInput(f"archive: {exc}", code=exc.code) from exc
    session.commit()
    dispatch.try_deliver(celery, session, dispatch.Send("job", evaluation.id, queue.EVALUATE, None))
    session.commit()
    return job_service.to_read(evaluation)


@router.get(
    "/jobs/{job_id}/download",
    operation_id="download_model",
    summary="Download a trained model (DIGITS-style archive, optional exports)",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The archive (tar.gz or zip)",
        },
        **PROBLEM_RESPONSES,
        503: {"model": Problem},
    },
)
async def download(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    checkpoint: str = "best",
    format: ArchiveFormat = "tar.gz",
    export: Annotated[
        str | None,
        Query(
            description="Comma-separated: torchscript, onnx (models taking raw uint8 NHWC images)"
        ),
    ] = None,
) -> FileResponse:
    """info.json, labels.txt, weights.safetensors, mean.npy, and TorchScript / ONNX on request."""
    job = job_service.get_job(session, job_id, user)
    ckpt = service.resolve_checkpoint(session, job, checkpoint)
    exports = sorted({e.strip() for e in (export or "").split(",") if e.strip()})
    unknown = [e for e in exports if e not in ("torchscript", "onnx")]
    if unknown:
        raise InvalidInput(
            f"unknown export {unknown[0]!r}: use torchscript or onnx", code="invalid_export"
        )
    tag = "-".join([ckpt.name, *exports])
    out = storage.job_dir(settings, job.id) / "downloads" / f"{tag}.{format}"
    if not out.exists() or out.stat().st_mtime < Path(ckpt.path).stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        await _model_server(
            request,
            "POST",
            "/export",
            json={
                "model": ckpt.path,
                "out": str(out),
                "format": format,
                "exports": exports,
                "name": job.name,
                "resize_mode": service.resize_mode_of(session, job),
                "checkpoint": {
                    "name": ckpt.name,
                    "epoch": ckpt.epoch,
                    "step": ckpt.step,
                    "job_id": str(job.id),
                    "metrics": ckpt.metrics,
                },
            },
            timeout=600,
        )
    filename = f"{job.id}_{ckpt.name}.{format}"
    return FileResponse(out, media_type="application/octet-stream", filename=filename)


@router.post(
    "/jobs/{job_id}/pretrained",
    status_code=201,
    operation_id="create_pretrained_from_job",
    summary="Turn a job's checkpoint into a pretrained model",
    response_model=PretrainedModelRead,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
async def job_to_pretrained(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    body: ToPretrained | None = None,
) -> PretrainedModelRead:
    """One call from a trained job to a model new jobs can fine-tune from."""
    body = body or ToPretrained()
    job = job_service.get_job(session, job_id, user)
    ckpt = service.resolve_checkpoint(session, job, body.checkpoint)
    model_id = uuid.uuid4()
    folder = storage.pretrained_dir(settings, model_id)
    name = body.name or f"{job.name} ({ckpt.name})"
    try:
        info = await _model_server(
            request,
            "POST",
            "/pretrained",
            json={
                "source": ckpt.path,
                "out_dir": str(folder),
                "name": name,
                "resize_mode": service.resize_mode_of(session, job),
                "checkpoint": {"name": ckpt.name, "epoch": ckpt.epoch, "job_id": str(job.id)},
            },
            timeout=300,
        )
        row = service.add_pretrained(session, model_id, user, name, info, job.id)
        session.commit()
    except BaseException:
        storage.remove_tree(folder)
        raise
    return PretrainedModelRead.model_validate(row)


class PretrainedUpload(BaseModel):
    """A model to upload: a DIGITS-style archive, or weights plus info.json."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    archive: UploadFile | None = Field(
        default=None, description="tar/tar.gz/zip with info.json and weights.safetensors"
    )
    weights: UploadFile | None = Field(default=None, description="weights.safetensors")
    info: UploadFile | None = Field(default=None, description="info.json")
    labels: UploadFile | None = Field(default=None, description="labels.txt (optional)")
    mean: UploadFile | None = Field(default=None, description="mean.npy (optional)")


def _refuse_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidInput(
                f"{path.name}: pickle-based files are refused (they can run code); "
                "send weights as safetensors",
                code="pickle_refused",
            )


def _check_safetensors(path: Path) -> None:
    head = path.read_bytes()[:16] if path.exists() else b""
    if len(head) < 9 or head[8:9] != b"{":
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise InvalidInput(
                f"{path.name}: this is a pickle/torch file, refused; send safetensors",
                code="pickle_refused",
            )
        raise InvalidInput(f"{path.name}: not a safetensors file", code="invalid_weights")


@router.post(
    "/pretrained-models",
    status_code=201,
    operation_id="upload_pretrained_model",
    summary="Upload a pretrained model",
    response_model=PretrainedModelRead,
    responses={**PROBLEM_RESPONSES, 413: {"model": Problem}, 503: {"model": Problem}},
    openapi_extra=_multipart("PretrainedUpload"),
)
async def upload_pretrained(
    form: Annotated[PretrainedUpload, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> PretrainedModelRead:
    """Validate a model archive (or safetensors + info.json) and make it a `pretrained` network."""
    model_id = uuid.uuid4()
    folder = storage.pretrained_dir(settings, model_id)
    staging = storage.uploads_tmp_dir(settings) / f"pretrained-{model_id}"
    unpacked = staging / "model"
    try:
        unpacked.mkdir(parents=True)
        if form.archive is not None:
            if any(getattr(form, f) is not None for f in ("weights", "info", "labels", "mean")):
                raise InvalidInput(
                    "send an archive, or weights + info, not both", code="invalid_source"
                )
            path = _save(form.archive, staging / "upload.archive")
            try:
                archives.extract_archive(path, unpacked)
            except archives.UnsafeArchive as exc:
                raise InvalidInput(f"archive: {exc}", code=exc.code) from exc
            entries = list(unpacked.iterdir())
            if len(entries) == 1 and entries[0].is_dir():  # a wrapping folder
                unpacked = entries[0]
        elif form.weights is not None and form.info is not None:
            _save(form.weights, unpacked / "weights.safetensors")
            _save(form.info, unpacked / "info.json")
            if form.labels is not None:
                _save(form.labels, unpacked / "labels.txt")
            if form.mean is not None:
                _save(form.mean, unpacked / "mean.npy")
        else:
            raise InvalidInput(
                "send an `archive`, or `weights` (safetensors) with `info` (info.json)",
                code="missing_source",
            )
        _refuse_pickles(unpacked)
        try:
            info_doc = json.loads((unpacked / "info.json").read_text())
            weights_name = Path(
                (info_doc.get("files") or {}).get("weights") or "weights.safetensors"
            ).name
        except (OSError, ValueError, AttributeError):
            weights_name = "weights.safetensors"
        _check_safetensors(unpacked / weights_name)
        info = await _model_server(
            request,
            "POST",
            "/pretrained",
            json={
                "source": str(unpacked),
                "out_dir": str(folder),
                "name": form.name or "uploaded model",
            },
            timeout=300,
        )
        row = service.add_pretrained(
            session, model_id, user, form.name or info.get("name") or "uploaded model", info, None
        )
        session.commit()
    except BaseException:
        storage.remove_tree(folder)
        raise
    finally:
        storage.remove_tree(staging)
    return PretrainedModelRead.model_validate(row)


@router.get(
    "/pretrained-models",
    operation_id="list_pretrained_models",
    summary="List pretrained models",
    response_model=list[PretrainedModelRead],
)
def list_pretrained(session: SessionDep, user: CurrentUser) -> list[PretrainedModelRead]:
    """Your pretrained models (all for admins), newest first."""
    return [PretrainedModelRead.model_validate(r) for r in service.list_pretrained(session, user)]


@router.get(
    "/pretrained-models/{model_id}",
    operation_id="get_pretrained_model",
    summary="Show a pretrained model",
    response_model=PretrainedModelRead,
    responses={404: {"model": Problem}, 422: {"model": Problem}},
)
def get_pretrained(
    model_id: uuid.UUID, session: SessionDep, user: CurrentUser
) -> PretrainedModelRead:
    """A pretrained model: network, classes, input size."""
    return PretrainedModelRead.model_validate(service.get_pretrained(session, model_id, user))


@router.delete(
    "/pretrained-models/{model_id}",
    status_code=204,
    operation_id="delete_pretrained_model",
    summary="Delete a pretrained model",
    responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
)
def delete_pretrained(
    model_id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> Response:
    """Delete it and its files; refused while waiting jobs will start from it."""
    row = service.prepare_delete_pretrained(session, model_id, user)
    session.delete(row)
    session.commit()
    storage.remove_tree(storage.pretrained_dir(settings, model_id))
    return Response(status_code=204)
