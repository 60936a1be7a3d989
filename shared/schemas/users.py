"""Users and API tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UserRead(BaseModel):
    """A user."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    is_admin: bool
    created_at: datetime


class UserCreate(BaseModel):
    """A new user (admins only)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, examples=["alice"])
    is_admin: bool = False


class TokenCreate(BaseModel):
    """A new API token for yourself."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", min_length=1, max_length=100)


class TokenRead(BaseModel):
    """A token, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The first characters, to tell tokens apart")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    """A new token: `token` is shown this once and never stored."""

    token: str


class UserCreated(BaseModel):
    """A new user and their first token."""

    user: UserRead
    token: TokenCreated
