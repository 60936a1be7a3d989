"""Users and API tokens."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.deps import CurrentUser, SessionDep, get_current_user
from shared.errors import Forbidden
from shared.schemas.common import Problem
from shared.schemas.users import (
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserCreate,
    UserCreated,
    UserRead,
)
from shared.services import users as users_service

router = APIRouter(tags=["users"], dependencies=[Depends(get_current_user)])


@router.get(
    "/users/me",
    operation_id="get_current_user",
    summary="Who the token belongs to",
    response_model=UserRead,
)
def me(user: CurrentUser) -> UserRead:
    """The user of this token."""
    return UserRead.model_validate(user)


@router.post(
    "/users",
    status_code=201,
    operation_id="create_user",
    summary="Create a user",
    response_model=UserCreated,
    responses={403: {"model": Problem}, 409: {"model": Problem}, 400: {"model": Problem}},
)
def create_user(body: UserCreate, session: SessionDep, user: CurrentUser) -> UserCreated:
    """Create a user and their first token (admins only)."""
    if not user.is_admin:
        raise Forbidden("only admins create users", code="admin_only")
    created = users_service.create_user(session, body.name, is_admin=body.is_admin)
    row, token = users_service.create_token(session, created, "first token")
    session.commit()
    return UserCreated(
        user=UserRead.model_validate(created),
        token=TokenCreated(**TokenRead.model_validate(row).model_dump(), token=token),
    )


@router.get(
    "/users",
    operation_id="list_users",
    summary="List users",
    response_model=list[UserRead],
    responses={403: {"model": Problem}},
)
def list_users(session: SessionDep, user: CurrentUser) -> list[UserRead]:
    """Every user (admins only)."""
    if not user.is_admin:
        raise Forbidden("only admins list users", code="admin_only")
    from sqlalchemy import select

    from shared.models import User

    return [UserRead.model_validate(u) for u in session.scalars(select(User).order_by(User.name))]


@router.post(
    "/tokens",
    status_code=201,
    operation_id="create_token",
    summary="Create an API token for yourself",
    response_model=TokenCreated,
)
def create_token(
    session: SessionDep, user: CurrentUser, body: TokenCreate | None = None
) -> TokenCreated:
    """A new token; its secret is in this answer only."""
    row, token = users_service.create_token(session, user, (body or TokenCreate()).name)
    session.commit()
    return TokenCreated(**TokenRead.model_validate(row).model_dump(), token=token)


@router.get(
    "/tokens", operation_id="list_tokens", summary="Your API tokens", response_model=list[TokenRead]
)
def list_tokens(session: SessionDep, user: CurrentUser) -> list[TokenRead]:
    """Your tokens, without their secrets."""
    return [TokenRead.model_validate(t) for t in users_service.list_tokens(session, user)]


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    operation_id="revoke_token",
    summary="Revoke an API token",
    responses={404: {"model": Problem}},
)
def revoke_token(token_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> Response:
    """Revoke a token: it stops working at once."""
    users_service.revoke_token(session, user, token_id)
    session.commit()
    return Response(status_code=204)
