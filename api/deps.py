"""Dependencies injected into endpoints: settings, database session, Celery app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import browser
from api.middleware import USER_KEY
from shared.db import close_quietly
from shared.models import User
from shared.services import users
from shared.settings import Settings


# async, like get_current_user: FastAPI runs a plain `def` dependency in the thread pool, one
# hop per dependency per request
async def get_settings(request: Request) -> Settings:
    """The settings this app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; endpoints commit, anything else is rolled back."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
    except BaseException:
        with suppress(SQLAlchemyError):  # the connection may be what broke
            session.rollback()
        raise
    finally:
        close_quietly(session)


async def get_celery(request: Request) -> Celery:
    """The Celery app used to send tasks by name."""
    celery: Celery = request.app.state.celery
    return celery


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


async def get_current_user(request: Request) -> User:
    """The user of the request's bearer token or session cookie; 401 problem otherwise."""
    checked: User | None = request.scope.get("state", {}).get(USER_KEY)
    if checked is not None:  # the gate checked it before the body was read
        return checked
    return await run_in_threadpool(_authenticate, request)


def _authenticate(request: Request) -> User:
    session: Session = request.app.state.session_factory()
    try:
        user = users.authenticate(session, browser.authorization(request))
        if session.dirty:
            session.commit()  # last_used_at, at most once a minute
        return user
    finally:
        close_quietly(session)


CurrentUser = Annotated[User, Depends(get_current_user)]
