"""Domain errors: each carries its HTTP status and a stable code (rendered as RFC 9457)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a client may see; `code` is stable and machine-readable."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.extra = extra or {}


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidInput(DomainError):
    status = 400
    code = "invalid_input"
    title = "Invalid input"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class LimitExceeded(DomainError):
    """A valid request past one of the service's limits; the detail names the limit."""

    status = 422
    code = "limit_exceeded"
    title = "Limit exceeded"


class ServiceUnavailable(DomainError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Invalid state transition"
