"""Seeing inside a model: per-image explanations (heat maps) of its predictions.

Layer views ride on classify (`visualize=true`) and int8/fp16 exports on download; both live
in `api.routers.models`. The maths runs in the model service (interactive) or on a cpu worker
(an explain job); the API never imports torch.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user

# the models router's helpers for the model service and uploaded inputs: one way to call it
from api.routers.models import (
    _model_server,
    _multipart,
    _result,
    _safe_name,
    model_job_with_inputs,
)
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Dataset, Job, JobKind, Status
from shared.schemas.common import PROBLEM_RESPONSES, Problem
from shared.schemas.jobs import JobRead
from shared.schemas.models import ExplainMethod, ExplainResult, ExplanationPage
from shared.services import jobs as jobs_service
from shared.services import models as models_service
from shared.settings import Settings

router = APIRouter(tags=["models"], dependencies=[Depends(get_current_user)])

# one forward+backward per image for the CAMs; Integrated Gradients costs `steps` of them and
# Occlusion a forward per window position, so fewer of those are answered directly
EXPENSIVE_METHODS = ("integrated_gradients", "occlusion")
EXPENSIVE_SHARE = 8


class ExplainForm(BaseModel):
    """Images to explain, and how (multipart/form-data)."""

    model_config = ConfigDict(extra="forbid")

    images: list[UploadFile] = Field(default_factory=list, description="One or more images")
    archive: UploadFile | None = Field(
        default=None, description="An archive of images: always answered as an explain job"
    )
    checkpoint: str = Field(default="best", description="best, last, or an epoch number")
    method: ExplainMethod = Field(
        default="gradcam",
        description="gradcam, gradcampp, layercam (torchcam: class-activation maps at a "
        "convolutional layer); integrated_gradients, occlusion (Captum: per-pixel)",
    )
    target: str | None = Field(
        default=None,
        max_length=255,
        description="The class to explain, as a label or an index; default: the top prediction",
    )
    top_k: int = Field(default=5, ge=1, le=1000)
    raw: bool = Field(default=False, description="Also the map as numbers (`map`)")
    steps: int | None = Field(
        default=None, ge=2, le=512, description="integrated_gradients: path steps (default 50)"
    )
    window: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="occlusion: side of the square covered, in pixels (default: 1/7 of the image)",
    )


def interactive_limit(settings: Settings, method: str) -> int:
    """How many images of this method the model service answers directly."""
    if method in EXPENSIVE_METHODS:
        return max(1, settings.classify_max_images // EXPENSIVE_SHARE)
    return settings.classify_max_images


def _check_target(session: SessionDep, dataset_id: uuid.UUID | None, target: str | None) -> None:
    """A target that is neither a class of the job's dataset nor an index is refused now."""
    dataset = session.get(Dataset, dataset_id) if dataset_id and target else None
    classes = list(dataset.classes or []) if dataset is not None else []
    if not classes or target is None or target in classes:
        return
    if target.isdigit() and int(target) < len(classes):
        return
    raise InvalidInput(
        f"target {target[:40]!r} is neither a class label nor an index 0..{len(classes) - 1}",
        code="invalid_target",
    )


@router.post(
    "/jobs/{job_id}/explain",
    operation_id="explain_images",
    summary="Explain a trained model's predictions on images (heat maps)",
    response_model=ExplainResult,
    responses={
        **PROBLEM_RESPONSES,
        202: {"model": JobRead, "description": "An explain job"},
        503: {"model": Problem},
    },
    openapi_extra=_multipart("ExplainForm"),
)
def explain(
    job_id: uuid.UUID,
    form: Annotated[ExplainForm, Form(media_type="multipart/form-data")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> Any:
    """A few images are answered directly; more (or an archive) make an explain job."""
    job = jobs_service.get_job(session, job_id, user)
    ckpt = models_service.resolve_checkpoint(session, job, form.checkpoint)
    models_service.require_classification(session, job, "explain")
    resize_mode = models_service.resize_mode_of(session, job)
    _check_target(session, job.dataset_id, form.target)
    images = [f for f in form.images if f.filename or f.size]
    if not images and form.archive is None:
        raise InvalidInput("send one or more `images`, or an `archive`", code="no_images")
    if form.archive is not None or len(images) > interactive_limit(settings, form.method):
        return _explain_job(form, images, job, ckpt.name, resize_mode, session, settings, user)
    files = []
    for i, f in enumerate(images):
        f.file.seek(0)
        name = _safe_name(f.filename, f"image-{i}")
        files.append(("images", (name, f.file.read(), "application/octet-stream")))
    data = {
        "model": ckpt.path,
        "resize_mode": resize_mode,
        "top_k": str(form.top_k),
        "method": form.method,
        "raw": "true" if form.raw else "false",
    }
    for key in ("target", "steps", "window"):
        if getattr(form, key) is not None:
            data[key] = str(getattr(form, key))
    body = _model_server(request, "POST", "/explain", data=data, files=files, timeout=600)
    return ExplainResult(
        job_id=job.id,
        checkpoint=ckpt.name,
        method=form.method,
        explanations=body["explanations"],
        milliseconds=body["milliseconds"],
    )


def _explain_job(
    form: ExplainForm,
    images: list[UploadFile],
    source: Job,
    checkpoint: str,
    resize_mode: str,
    session: SessionDep,
    settings: Settings,
    user: CurrentUser,
) -> JSONResponse:
    """Queue the images as an explain job (inputs stored first, then the commit sends it)."""
    read = model_job_with_inputs(
        session,
        settings,
        JobKind.EXPLAIN,
        source,
        user,
        {
            "checkpoint": checkpoint,
            "resize_mode": resize_mode,
            "top_k": form.top_k,
            "method": form.method,
            "target": form.target,
            "raw": form.raw,
            "steps": form.steps,
            "window": form.window,
        },
        f"explain {source.name}",
        images,
        form.archive,
    )
    return JSONResponse(read.model_dump(mode="json"), status_code=202)


@router.get(
    "/jobs/{job_id}/explanations",
    operation_id="get_job_explanations",
    summary="The explanations of an explain job",
    response_model=ExplanationPage,
    responses={404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}},
)
def get_explanations(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ExplanationPage:
    """One heat map (base64 PNG) and its prediction per image, in upload order, paged."""
    job = jobs_service.get_job(session, job_id, user)
    if job.kind != JobKind.EXPLAIN:
        raise NotFound("only explain jobs have explanations", code="no_explanations")
    if job.status != Status.DONE:
        raise Conflict(
            f"job {job_id} is {job.status}; explanations come when it is done",
            code="results_not_ready",
        )
    lines = [line for line in _result(settings, job.id, "explanations.jsonl").splitlines() if line]
    start = (page - 1) * per_page
    return ExplanationPage.model_validate(
        {
            "items": [json.loads(line) for line in lines[start : start + per_page]],
            "total": len(lines),
            "page": page,
            "per_page": per_page,
        }
    )
