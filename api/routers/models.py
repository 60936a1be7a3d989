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
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user
from shared import archives, artifacts, storage
from shared.errors import Conflict, DomainError, InvalidInput, NotFound, ServiceUnavailable
from shared.models import Job, JobKind, Status, User
from shared.schemas.common import PROBLEM_RESPONSES, Problem
from shared.schemas.jobs import JobRead
from shared.schemas.models import (
    ArchiveFormat,
    CellImage,
    CellImages,
    ClassifyResult,
    DenseEvaluationResults,
    EvaluationResults,
    InferenceResults,
    PredictionResults,
    PredictResult,
    PretrainedModelRead,
    ToPretrained,
)
from shared.services import jobs as jobs_service
from shared.services import models as models_service
from shared.settings import Settings

log = logging.getLogger("digits.api.models")

router = APIRouter(tags=["models"], dependencies=[Depends(get_current_user)])

EXPORTS = ("torchscript", "onnx", "onnx-int8", "onnx-fp16")


def _model_server(request: Request, method: str, path: str, **kwargs: Any) -> Any:
    """Call the model service (from the thread pool); its answers become problems a client
    understands. Its 4xx pass through with their code; a 5xx is the service's own failure."""
    client: httpx.Client = request.app.state.model_http
    try:
        resp = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        log.error("model service unreachable: %s", exc)
        raise ServiceUnavailable(
            "the model service is not answering; retry shortly", code="model_service_unavailable"
        ) from exc
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 500:
        log.error("model service failed on %s: %s", path, body.get("detail", resp.status_code))
        raise DomainError(
            "the model service could not handle this request",
            status=502,
            code=body.get("code") or "model_service_error",
            title="Model service error",
        )
    if resp.status_code >= 400:
        raise DomainError(
            str(body.get("detail") or "the model service refused the request")[:2000],
            status=400 if resp.status_code not in (404, 409, 413, 422) else resp.status_code,
            code=str(body.get("code") or "model_error"),
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
    visualize: bool = Field(
        default=False,
        description="Also every layer's statistics and pictures (DIGITS's layer views); "
        "for exactly one image",
    )


class PredictForm(BaseModel):
    """Images to detect objects in or segment (multipart/form-data)."""

    model_config = ConfigDict(extra="forbid")

    images: list[UploadFile] = Field(default_factory=list, description="One or more images")
    checkpoint: str = Field(default="best", description="best, last, or an epoch number")
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="Detection: the lowest score of a box returned"
    )
    archive: UploadFile | None = Field(
        default=None, description="A zip or tar of images: a prediction job, like many images"
    )


def _forwarded(images: list[UploadFile]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Uploaded images as the model service's multipart files."""
    files = []
    for i, f in enumerate(images):
        f.file.seek(0)
        files.append(
            (
                "images",
                (_safe_name(f.filename, f"image-{i}"), f.file.read(), "application/octet-stream"),
            )
        )
    return files


def _save(upload: UploadFile, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    upload.file.seek(0)
    with open(target, "xb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
    return target


def _safe_name(raw: str | None, fallback: str) -> str:
    """A client's file name, reduced to something every filesystem stores (<= 100 bytes)."""
    name = Path((raw or "").replace("\\", "/")).name.replace("\x00", "")
    name = "".join(c for c in name if c.isprintable()) or fallback
    while len(name.encode()) > 100:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[:-1] + dot + suffix) if dot and len(suffix) < 10 and stem else name[:-1]
    return name


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
def classify(
    job_id: uuid.UUID,
    form: Annotated[ClassifyForm, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> Any:
    """A few images are answered directly; many images or an archive make an inference job."""
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, form.checkpoint)
    models_service.require_classification(session, job, "classify")
    resize_mode = models_service.resize_mode_of(session, job)
    images = [f for f in form.images if f.filename or f.size]
    if not images and form.archive is None:
        raise InvalidInput("send one or more `images`, or an `archive`", code="no_images")
    if form.visualize and (form.archive is not None or len(images) != 1):
        raise InvalidInput(
            "visualize=true shows the layers of one image: send exactly one image",
            code="visualize_one_image",
        )
    if form.archive is not None or len(images) > settings.classify_max_images:
        request_ = {"checkpoint": ckpt.name, "top_k": form.top_k, "resize_mode": resize_mode}
        read = model_job_with_inputs(
            session,
            settings,
            JobKind.INFERENCE,
            job,
            user,
            request_,
            f"classify with {job.name}",
            images,
            form.archive,
        )
        return JSONResponse(read.model_dump(mode="json"), status_code=202)
    files = _forwarded(images)
    body = _model_server(
        request,
        "POST",
        "/layers" if form.visualize else "/classify",  # the layer views classify too
        data={"model": ckpt.path, "resize_mode": resize_mode, "top_k": str(form.top_k)},
        files=files,
    )
    return ClassifyResult(
        job_id=job.id,
        checkpoint=ckpt.name,
        predictions=body["predictions"],
        milliseconds=body["milliseconds"],
        layers=body.get("layers"),
    )


def model_job_with_inputs(
    session: Session,
    settings: Settings,
    kind: JobKind,
    job: Job,
    user: User,
    request: dict[str, Any],
    name: str,
    images: list[UploadFile],
    archive: UploadFile | None,
) -> JobRead:
    """An inference or explain job over uploaded images and/or an archive; it is sent once
    they are stored (and the archive passed its inspection)."""
    made = models_service.create_model_job(session, kind, job, user, request, name)
    folder = storage.job_dir(settings, made.id) / "inputs"
    try:
        if archive is not None:
            path = _save(archive, folder.parent / "input.archive")
            try:
                archives.inspect_archive(path, archives.ArchiveLimits.from_settings(settings))
            except archives.UnsafeArchive as exc:
                raise InvalidInput(f"archive: {exc}", code=exc.code) from exc
        for i, image in enumerate(images):
            _save(image, folder / f"{i:07d}-{_safe_name(image.filename, 'image')}")
        _publish_inputs(settings, made.id, folder.parent)
        read = jobs_service.read(session, made)
        session.commit()  # the job's message leaves now, after its inputs are stored
    except BaseException:
        session.rollback()
        artifacts.remove_job(settings, made.id)
        raise
    return read


@router.post(
    "/jobs/{job_id}/predict",
    operation_id="predict_images",
    summary="Detect objects in or segment images with a trained model",
    response_model=PredictResult,
    responses={
        **PROBLEM_RESPONSES,
        202: {"model": JobRead, "description": "A prediction job"},
        503: {"model": Problem},
    },
    openapi_extra=_multipart("PredictForm"),
)
def predict(
    job_id: uuid.UUID,
    form: Annotated[PredictForm, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> Any:
    """Boxes ({label, score, box}) above the threshold, or a class mask with per-class areas,
    for each image, with the prediction drawn; answered by the model service. Many images or an
    archive make a prediction job (202) whose results hold the same rows, undrawn."""
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, form.checkpoint)
    task = models_service.job_task(session, job)
    if task == "classification":
        raise InvalidInput(
            f"job {job.id} trained a classifier: use POST /jobs/{job.id}/classify",
            code="unsupported_task",
        )
    images = [f for f in form.images if f.filename or f.size]
    if not images and form.archive is None:
        raise InvalidInput("send one or more `images`, or an `archive`", code="no_images")
    resize_mode = models_service.resize_mode_of(session, job)
    if form.archive is not None or len(images) > settings.classify_max_images:
        request_ = {
            "checkpoint": ckpt.name,
            "threshold": float(form.threshold) if task == "detection" else None,
            "resize_mode": resize_mode,
            "task": task,
        }
        read = model_job_with_inputs(
            session,
            settings,
            JobKind.INFERENCE,
            job,
            user,
            request_,
            f"predict with {job.name}",
            images,
            form.archive,
        )
        return JSONResponse(read.model_dump(mode="json"), status_code=202)
    files = _forwarded(images)
    body = _model_server(
        request,
        "POST",
        "/predict",
        data={
            "model": ckpt.path,
            "resize_mode": resize_mode,
            "threshold": repr(float(form.threshold)),
        },
        files=files,
    )
    return PredictResult(
        job_id=job.id,
        checkpoint=ckpt.name,
        **{k: body[k] for k in ("task", "classes", "threshold", "predictions", "milliseconds")},
    )


def _publish_inputs(settings: Settings, job_id: uuid.UUID, folder: Path) -> None:
    """With a bucket, a model job's uploaded inputs go there for its worker (any host)."""
    store = artifacts.get_store(settings)
    if not store.local:
        store.put_tree(artifacts.job_prefix(job_id), folder)
        storage.remove_tree(folder)


def _result(settings: Settings, job_id: uuid.UUID, name: str) -> bytes:
    """A file a model job wrote (from the data folder or the bucket)."""
    return artifacts.get_store(settings).get_bytes(f"{artifacts.job_prefix(job_id)}/{name}")


@router.get(
    "/jobs/{job_id}/results",
    operation_id="get_job_results",
    summary="Results of an inference or evaluation job",
    response_model=InferenceResults
    | PredictionResults
    | EvaluationResults
    | DenseEvaluationResults,
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
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[
        str, Query(pattern="^(json|csv)$", description="inference jobs: json (paged) or csv (all)")
    ] = "json",
) -> Any:
    """Inference: paginated predictions (or all as CSV). Evaluation: accuracy and matrices."""
    job = jobs_service.get_job(session, job_id, user)
    if job.kind == JobKind.TRAIN:
        raise NotFound("training jobs have metrics and checkpoints, not results", code="no_results")
    if job.status != Status.DONE:
        raise Conflict(
            f"job {job_id} is {job.status}; results come when it is done", code="results_not_ready"
        )
    if job.kind == JobKind.EVALUATE:
        data = json.loads(_result(settings, job.id, "evaluation.json"))
        if data.get("task") in ("detection", "segmentation"):
            return DenseEvaluationResults.model_validate(data)
        return EvaluationResults.model_validate(data)
    lines = [line for line in _result(settings, job.id, "results.jsonl").splitlines() if line]
    start = (page - 1) * per_page
    # a page parses its own rows only (a segmentation job's rows carry their mask PNGs)
    rows = [
        json.loads(line) for line in (lines if format == "csv" else lines[start : start + per_page])
    ]
    task = (job.request or {}).get("task", "classification")
    if task != "classification":
        return _prediction_results(job, task, rows, len(lines), page, per_page, format)
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
    return InferenceResults(items=rows, total=len(lines), page=page, per_page=per_page)


def _prediction_results(
    job: Job,
    task: str,
    rows: list[dict[str, Any]],
    total: int,
    page: int,
    per_page: int,
    format: str,
) -> Any:
    """A prediction job's page of rows; or (all rows) as CSV, one line per box or per class
    present."""
    if format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        if task == "detection":
            writer.writerow(["filename", "label", "score", "x0", "y0", "x1", "y1", "error"])
            for r in rows:
                boxes = r.get("boxes") or []
                for b in boxes:
                    writer.writerow([r["filename"], b["label"], f"{b['score']:.5f}", *b["box"], ""])
                if not boxes:
                    writer.writerow([r["filename"], "", "", "", "", "", "", r.get("error") or ""])
        else:
            writer.writerow(["filename", "label", "pixels", "fraction", "error"])
            for r in rows:
                areas = r.get("areas") or []
                for a in areas:
                    writer.writerow([r["filename"], a["label"], a["pixels"], a["fraction"], ""])
                if not areas:
                    writer.writerow([r["filename"], "", "", "", r.get("error") or ""])
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job.id}.csv"'},
        )
    return PredictionResults.model_validate(
        {
            "task": task,
            "threshold": (job.request or {}).get("threshold"),
            "items": rows,
            "total": total,
            "page": page,
            "per_page": per_page,
        }
    )


@router.get(
    "/jobs/{job_id}/results/cell",
    operation_id="get_evaluation_cell",
    summary="The images of one confusion-matrix cell of an evaluation",
    response_model=CellImages,
    responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
)
def get_cell(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    true: Annotated[int, Query(ge=0, le=100_000, description="True class index (row)")],
    pred: Annotated[int, Query(ge=0, le=100_000, description="Predicted class index (column)")],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
) -> CellImages:
    """The images of class `true` predicted as `pred`, most confident first (drill-down)."""
    job = jobs_service.get_job(session, job_id, user)
    if job.kind != JobKind.EVALUATE:
        raise NotFound("only evaluation jobs have a confusion matrix", code="no_results")
    if job.status != Status.DONE:
        raise Conflict(
            f"job {job_id} is {job.status}; results come when it is done", code="results_not_ready"
        )
    classes = json.loads(_result(settings, job.id, "evaluation.json"))["classes"]
    if true >= len(classes) or pred >= len(classes):
        raise InvalidInput(
            f"class indices go from 0 to {len(classes) - 1}", code="invalid_class_index"
        )
    cells = json.loads(_result(settings, job.id, "predictions.json"))
    chosen = [
        (p, i)
        for i, (t, q, p) in enumerate(
            zip(cells["true"], cells["pred"], cells["probability"], strict=True)
        )
        if t == true and q == pred
    ]
    chosen.sort(key=lambda item: -item[0])
    start = (page - 1) * per_page
    base = cells.get("image_base")
    return CellImages(
        items=[
            CellImage(
                index=i,
                image_url=f"{base}{i}" if base else None,
                probability=p,
                true_label=classes[true],
                predicted_label=classes[pred],
            )
            for p, i in chosen[start : start + per_page]
        ],
        total=len(chosen),
        page=page,
        per_page=per_page,
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
    user: CurrentUser,
) -> JobRead:
    """Top-1/top-5, confusion matrix, per-class precision and recall, top-N images (a job)."""
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, form.checkpoint)
    task = models_service.job_task(session, job)
    request: dict[str, Any] = {
        "checkpoint": ckpt.name,
        "split": form.split,
        "top_n": form.top_n,
        "resize_mode": models_service.resize_mode_of(session, job),
        "task": task,
    }
    if form.archive is None:
        dataset = models_service.evaluation_dataset(
            session, job, form.dataset_id, form.split, user, task
        )
        request["dataset_id"] = str(dataset.id)
    evaluation = models_service.create_model_job(
        session, JobKind.EVALUATE, job, user, request, name=f"evaluate {job.name}"
    )
    folder = storage.job_dir(settings, evaluation.id)
    try:
        if form.archive is not None:
            path = _save(form.archive, folder / "input.archive")
            try:
                archives.inspect_archive(path, archives.ArchiveLimits.from_settings(settings))
            except archives.UnsafeArchive as exc:
                raise InvalidInput(f"archive: {exc}", code=exc.code) from exc
            _publish_inputs(settings, evaluation.id, folder)
        read = jobs_service.read(session, evaluation)
        session.commit()
    except BaseException:
        session.rollback()
        artifacts.remove_job(settings, evaluation.id)
        raise
    return read


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
def download(
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
            description="Comma-separated: torchscript, onnx, onnx-int8, onnx-fp16 (models taking "
            "raw uint8 NHWC images). int8 is quantised statically (QDQ, per-channel) on training "
            "images; info.json's export_report compares it and fp16 with fp32 on the validation "
            "split (top-1, size, CPU latency). Detectors export onnx (one image in; boxes, "
            "scores and labels out, NMS included), segmenters onnx and torchscript (mask and "
            "probabilities out)"
        ),
    ] = None,
) -> Response:
    """info.json, labels.txt, weights.safetensors, mean.npy, and TorchScript / ONNX on request."""
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, checkpoint)
    exports = sorted({e.strip() for e in (export or "").split(",") if e.strip()})
    unknown = [e for e in exports if e not in EXPORTS]
    if unknown:
        raise InvalidInput(
            f"unknown export {unknown[0][:40]!r}: use {', '.join(EXPORTS)}", code="invalid_export"
        )
    models_service.require_exports(session, job, exports)
    store = artifacts.get_store(settings)
    key = models_service.export_key(job.id, ckpt, exports, format)
    if not store.exists(key):
        _model_server(
            request,
            "POST",
            "/export",
            json={
                "model": ckpt.path,
                "out": store.ref(key),
                "format": format,
                "exports": exports,
                "name": job.name,
                "resize_mode": models_service.resize_mode_of(session, job),
                "dataset_id": str(job.dataset_id) if job.dataset_id else None,
                "task": models_service.job_task(session, job),
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
        _drop_older_downloads(store, key)
    filename = f"{job.id}_{ckpt.name}.{format}"
    path = store.path(key)
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename=filename)
    return StreamingResponse(
        store.stream(key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(store.stat(key).size),
        },
    )


def _drop_older_downloads(store: artifacts.ArtifactStore, key: str) -> None:
    """Downloads of earlier versions of this checkpoint (same exports) are not asked again."""
    for info in store.list(key.rpartition("/")[0]):
        if info.key != key:
            store.delete(info.key)


@router.post(
    "/jobs/{job_id}/pretrained",
    status_code=201,
    operation_id="create_pretrained_from_job",
    summary="Turn a job's checkpoint into a pretrained model",
    response_model=PretrainedModelRead,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
def job_to_pretrained(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    body: ToPretrained | None = None,
) -> PretrainedModelRead:
    """One call from a trained job to a model new jobs can fine-tune from."""
    body = body or ToPretrained()
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, body.checkpoint)
    models_service.require_classification(session, job, "a pretrained model")
    model_id = uuid.uuid4()
    name = body.name or f"{job.name} ({ckpt.name})"
    try:
        info = _model_server(
            request,
            "POST",
            "/pretrained",
            json={
                "source": ckpt.path,
                "out_dir": artifacts.get_store(settings).ref(artifacts.pretrained_prefix(model_id)),
                "name": name,
                "resize_mode": models_service.resize_mode_of(session, job),
                "checkpoint": {"name": ckpt.name, "epoch": ckpt.epoch, "job_id": str(job.id)},
            },
            timeout=300,
        )
        row = models_service.add_pretrained(session, model_id, user, name, info, job.id)
        session.commit()
    except BaseException:
        artifacts.remove_pretrained(settings, model_id)
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


@router.post(
    "/pretrained-models",
    status_code=201,
    operation_id="upload_pretrained_model",
    summary="Upload a pretrained model",
    response_model=PretrainedModelRead,
    responses={**PROBLEM_RESPONSES, 413: {"model": Problem}, 503: {"model": Problem}},
    openapi_extra=_multipart("PretrainedUpload"),
)
def upload_pretrained(
    form: Annotated[PretrainedUpload, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> PretrainedModelRead:
    """Validate a model archive (or safetensors + info.json) and make it a `pretrained` network."""
    model_id = uuid.uuid4()
    staging = storage.uploads_tmp_dir(settings) / f"pretrained-{model_id}"
    staged = f"tmp/pretrained-{model_id}"  # the staging folder's key, in a bucket
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
                archives.extract_archive(
                    path, unpacked, archives.ArchiveLimits.from_settings(settings)
                )
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
        models_service.check_upload_folder(unpacked, settings.pretrained_max_weights_bytes)
        store = artifacts.get_store(settings)
        source = str(unpacked) if store.local else staged
        if not store.local:  # the model service may be on another host: through the bucket
            store.put_tree(staged, unpacked)
        info = _model_server(
            request,
            "POST",
            "/pretrained",
            json={
                "source": source,
                "out_dir": store.ref(artifacts.pretrained_prefix(model_id)),
                "name": form.name or "uploaded model",
            },
            timeout=300,
        )
        row = models_service.add_pretrained(
            session, model_id, user, form.name or info.get("name") or "uploaded model", info, None
        )
        session.commit()
    except BaseException:
        artifacts.remove_pretrained(settings, model_id)
        raise
    finally:
        artifacts.remove(settings, staged, staging)
    return PretrainedModelRead.model_validate(row)


@router.get(
    "/pretrained-models",
    operation_id="list_pretrained_models",
    summary="List pretrained models",
    response_model=list[PretrainedModelRead],
)
def list_pretrained(session: SessionDep, user: CurrentUser) -> list[PretrainedModelRead]:
    """Your pretrained models (all for admins), newest first."""
    return [
        PretrainedModelRead.model_validate(r) for r in models_service.list_pretrained(session, user)
    ]


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
    return PretrainedModelRead.model_validate(
        models_service.get_pretrained(session, model_id, user)
    )


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
    row = models_service.prepare_delete_pretrained(session, model_id, user)
    session.delete(row)
    session.commit()
    artifacts.remove_pretrained(settings, model_id)
    return Response(status_code=204)
