"""Schemas shared by every resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Problem(BaseModel):
    """An RFC 9457 problem: every error answer has this shape."""

    type: str = Field(default="about:blank", examples=["https://digits.dev/problems/not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["dataset 5f0c... does not exist"])
    code: str = Field(examples=["not_found"], description="Stable machine-readable error code")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field validation errors (422 only)"
    )


class StatusEntry(BaseModel):
    """One entry of a status history: a move of the job or import, when, why, by whom."""

    status: str
    at: datetime
    reason: str | None = None
    worker: str | None = Field(default=None, description="The worker that claimed it")
    attempt: int | None = Field(default=None, description="The attempt a claim started")


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int = Field(description="Number of items matching the filter, over all pages")
    page: int
    per_page: int


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Bad input"},
    404: {"model": Problem, "description": "No such resource"},
    409: {"model": Problem, "description": "Conflicts with the resource's state"},
    422: {"model": Problem, "description": "Validation error"},
}
