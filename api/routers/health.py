"""Health of the service and what it depends on."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

router = APIRouter(tags=["health"])


class ComponentHealth(BaseModel):
    """One dependency."""

    ok: bool
    detail: str
    latency_ms: float


class Health(BaseModel):
    """The service and its dependencies."""

    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    broker: ComponentHealth


def _check_database(request: Request) -> ComponentHealth:
    start = time.perf_counter()
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return ComponentHealth(
            ok=True, detail=request.app.state.engine.dialect.name, latency_ms=_ms(start)
        )
    except Exception as exc:
        return ComponentHealth(ok=False, detail=_first_line(exc), latency_ms=_ms(start))


def _check_broker(request: Request) -> ComponentHealth:
    start = time.perf_counter()
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            transport = conn.transport_cls
        return ComponentHealth(ok=True, detail=str(transport), latency_ms=_ms(start))
    except Exception as exc:
        return ComponentHealth(ok=False, detail=_first_line(exc), latency_ms=_ms(start))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _first_line(exc: Exception) -> str:
    text_ = str(exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


@router.get(
    "/health",
    operation_id="get_health",
    summary="Health of the API, its database and its broker",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is down"}},
)
def get_health(request: Request) -> JSONResponse:
    """Report the database and the broker; 503 when either is down."""
    health = Health(
        status="ok",
        version=request.app.version,
        database=_check_database(request),
        broker=_check_broker(request),
    )
    if not (health.database.ok and health.broker.ok):
        health.status = "degraded"
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)
