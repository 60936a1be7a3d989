"""The browser session: trade an API token for an HttpOnly cookie, and sign out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api import browser
from api.deps import SessionDep
from shared.errors import DomainError
from shared.schemas.common import Problem
from shared.schemas.users import UserRead
from shared.services import users

router = APIRouter(prefix="/session", tags=["session"])

MAX_AGE = 30 * 24 * 3600  # the token itself does not expire; a month keeps a laptop signed in


class SessionCreate(BaseModel):
    """The API token to sign in with."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200, description="An API token, `dgt_...`")


class SessionRead(BaseModel):
    """Who this browser is signed in as; `user` is null when it is not (or no longer)."""

    user: UserRead | None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Unknown, malformed or revoked token"},
    403: {"model": Problem, "description": "The request came from another site"},
    422: {"model": Problem},
}


@router.post(
    "",
    operation_id="create_session",
    summary="Sign a browser in with an API token",
    response_model=UserRead,
    responses=ERRORS,
)
def create_session(
    body: SessionCreate, request: Request, response: Response, session: SessionDep
) -> UserRead:
    """Check the token and set it as an `HttpOnly; SameSite=Strict` session cookie."""
    browser.check_same_origin(request, required=False)
    token = body.token.strip()
    user = users.authenticate(session, f"Bearer {token}")
    if session.dirty:
        session.commit()
    response.set_cookie(
        browser.COOKIE,
        token,
        max_age=MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return UserRead.model_validate(user, from_attributes=True)


@router.get(
    "",
    operation_id="get_session",
    summary="Who the browser is signed in as",
    response_model=SessionRead,
    responses={503: {"model": Problem, "description": "The database is unavailable; retry later"}},
)
def get_session(request: Request, session: SessionDep) -> SessionRead:
    """The session cookie's user, or null: a page asks this instead of meeting a 401."""
    token = request.cookies.get(browser.COOKIE)
    if not token:
        return SessionRead(user=None)
    try:
        user = users.authenticate(session, f"Bearer {token}")
    except DomainError:  # revoked, unknown or disabled: signed out
        return SessionRead(user=None)
    return SessionRead(user=UserRead.model_validate(user, from_attributes=True))


@router.delete(
    "",
    status_code=204,
    operation_id="delete_session",
    summary="Sign the browser out",
    responses={403: ERRORS[403]},
)
def delete_session(request: Request) -> Response:
    """Clear the session cookie (the token itself stays valid; revoke it in Settings)."""
    browser.check_same_origin(request, required=False)
    response = Response(status_code=204)
    response.delete_cookie(
        browser.COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
