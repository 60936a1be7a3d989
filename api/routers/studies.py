"""Tuning studies: create (queues the first trials), list, show, abort, delete."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.deps import CurrentUser, SessionDep, SettingsDep, get_current_user
from shared import artifacts
from shared.schemas.common import PROBLEM_RESPONSES, Page, Problem
from shared.schemas.studies import StudyCreate, StudyRead, StudySummary
from shared.services import studies as studies_service

log = logging.getLogger("digits.api.studies")

router = APIRouter(prefix="/studies", tags=["studies"], dependencies=[Depends(get_current_user)])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 422: {"model": Problem}}


def _top_up(request: Request, settings: SettingsDep, study_id: uuid.UUID) -> None:
    """Ask for trials now; when Optuna's storage does not answer, the reaper asks later."""
    try:
        studies_service.top_up(request.app.state.session_factory, settings, study_id)
    except Exception as exc:
        log.warning("study=%s first top-up failed: %s", study_id, str(exc).splitlines()[0])


@router.post(
    "",
    status_code=202,
    operation_id="create_study",
    summary="Start a tuning study",
    response_model=StudyRead,
    responses={**PROBLEM_RESPONSES, 503: {"model": Problem}},
)
def create_study(
    body: StudyCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> StudyRead:
    """Search hyperparameters with Optuna; each trial is a training job in the study's group."""
    study = studies_service.create_study(session, body, user, settings)
    session.commit()
    log.info("study=%s created: %d trials, %s", study.id, study.config["max_trials"], body.name)
    _top_up(request, settings, study.id)
    session.refresh(study)
    return studies_service.read_study(session, settings, study)


@router.get(
    "",
    operation_id="list_studies",
    summary="List studies",
    response_model=Page[StudySummary],
    responses={422: {"model": Problem}},
)
def list_studies(
    session: SessionDep,
    user: CurrentUser,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> Page[StudySummary]:
    """A page of studies, newest first, with their trial counts and best values."""
    items, total = studies_service.list_studies(session, user, page=page, per_page=per_page)
    return Page[StudySummary](
        items=studies_service.summaries(session, items), total=total, page=page, per_page=per_page
    )


@router.get(
    "/{study_id}",
    operation_id="get_study",
    summary="Show a study",
    response_model=StudyRead,
    responses=NOT_FOUND,
)
def get_study(
    study_id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> StudyRead:
    """Its state, best trial, trials table, best-so-far history and parameter importances."""
    study = studies_service.get_study(session, study_id, user)
    return studies_service.read_study(session, settings, study)


@router.post(
    "/{study_id}/abort",
    operation_id="abort_study",
    summary="Abort a study",
    response_model=StudyRead,
    responses={**NOT_FOUND, 409: {"model": Problem}},
)
def abort_study(
    study_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
) -> StudyRead:
    """Ask for no more trials; waiting trials end now, running ones at their next step."""
    study = studies_service.abort_study(session, study_id, user)
    session.commit()
    _top_up(request, settings, study.id)  # tells Optuna about the trials that ended now
    session.refresh(study)
    return studies_service.read_study(session, settings, study)


@router.delete(
    "/{study_id}",
    status_code=204,
    operation_id="delete_study",
    summary="Delete a study and its trials",
    responses=NOT_FOUND,
)
def delete_study(
    study_id: uuid.UUID, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> Response:
    """Delete the study, its trials' jobs (running ones stop first) and Optuna's record."""
    name = studies_service.get_study(session, study_id, user).optuna_name
    gone = studies_service.delete_study(session, study_id, user)
    session.commit()
    for job_id in gone:
        artifacts.remove_job(settings, job_id)
    studies_service.forget_optuna(settings, name)
    return Response(status_code=204)
