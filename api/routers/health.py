"""Health of the service and what it depends on.

`status` is `degraded` when any component is not ok; the HTTP status is 503 only when the API
itself cannot serve (its database or its broker is down). A model service or a worker that is
down or restarting gives 200 with `status: degraded`: the API still answers, submissions
still queue, and a load balancer should keep sending traffic to it.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["health"])

CACHE_SECONDS = 1.0  # a poller cannot make /health cost more than one round of checks a second
# Past CACHE_SECONDS the last round is still answered, while a new one runs in the background:
# requests waiting for a round was the whole p99 of /health (650 ms at concurrency 32). Only
# a round older than this is waited for (the first one, or after a quiet spell).
STALE_SECONDS = 10.0
MODEL_SERVICE_TIMEOUT = 1.0
STATE_FRESH_SECONDS = 5.0  # `digits up` rewrites its state file every second


class ComponentHealth(BaseModel):
    """One dependency."""

    ok: bool
    detail: str
    latency_ms: float


class ProcessHealth(BaseModel):
    """One process that `digits up` runs and restarts."""

    ok: bool = Field(description="The process is running")
    kind: str = Field(description="api, model-server, dataset-worker, train-worker, train-gpu")
    state: Literal["running", "restarting", "stopped"]
    pid: int | None = Field(description="While running")
    restarts: int = Field(description="Starts after the first")
    last_exit: int | None = Field(
        description="Exit code of the last run; negative: the signal that ended it"
    )
    since: datetime = Field(description="When it entered its state")
    memory_limit_mb: int | None = Field(
        default=None, description="Its RLIMIT_DATA in MiB; null: none"
    )


class Health(BaseModel):
    """The service and its dependencies."""

    status: Literal["ok", "degraded"] = Field(
        description="degraded: some component is not ok (HTTP 503 only for database or broker)"
    )
    version: str
    database: ComponentHealth
    broker: ComponentHealth
    model_service: ComponentHealth
    processes: dict[str, ProcessHealth] = Field(
        default_factory=dict,
        description="The children of `digits up` by name; empty when the API runs on its own",
    )


class _Checks:
    """The dependency checks of the last second, shared by every request in it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.at = -CACHE_SECONDS
        self.value: tuple[ComponentHealth, ComponentHealth, ComponentHealth] | None = None
        self.refreshing: asyncio.Task[None] | None = None

    async def refresh(self, request: Request) -> None:
        """One round of checks (one at a time: the others wait for it and reuse it)."""
        async with self.lock:
            if self.value is not None and time.monotonic() - self.at < CACHE_SECONDS:
                return
            database, broker, model_service = await asyncio.gather(
                run_in_threadpool(_check_database, request),
                run_in_threadpool(_check_broker, request),
                _check_model_service(request),
            )
            self.value, self.at = (database, broker, model_service), time.monotonic()


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


async def _check_model_service(request: Request) -> ComponentHealth:
    start = time.perf_counter()
    client = request.app.state.model_client
    try:
        resp = await client.get("/health", timeout=MODEL_SERVICE_TIMEOUT)
        if resp.status_code != 200:
            return ComponentHealth(
                ok=False,
                detail=f"{client.base_url}: HTTP {resp.status_code}",
                latency_ms=_ms(start),
            )
        device = resp.json().get("device", "")
        return ComponentHealth(ok=True, detail=str(device), latency_ms=_ms(start))
    except Exception as exc:
        return ComponentHealth(
            ok=False, detail=f"{client.base_url}: {_first_line(exc)}", latency_ms=_ms(start)
        )


def read_processes(path: Path, now: float | None = None) -> dict[str, ProcessHealth]:
    """The children in a fresh `digits up` state file; {} when missing, stale or unreadable."""
    return _read_state(path, time.time() if now is None else now)[0]


def _read_state(path: Path, now: float) -> tuple[dict[str, ProcessHealth], float]:
    """The children in the state file, and until when (wall clock) that answer holds."""
    try:
        doc = json.loads(path.read_bytes())
        fresh_until = float(doc["written_at"]) + STATE_FRESH_SECONDS
        if now > fresh_until:
            return {}, math.inf  # its supervisor is gone (or this API runs without one)
        children = {
            name: ProcessHealth(ok=child["state"] == "running", **child)
            for name, child in doc["children"].items()
        }
        return children, fresh_until
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return {}, math.inf


class _Answer:
    """The last answer's bytes, kept while what it was made of stands: the same round of
    checks and the same state file (mtime and size), not yet stale. Making it (read the file,
    validate, dump) was a third of the CPU time of a /health."""

    def __init__(self) -> None:
        self.components: object = None  # held, so that `is` cannot match a newer round
        self.file: tuple[int, int] | None = None
        self.until = 0.0
        self.body, self.status = b"", 200


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


async def _dependencies(
    request: Request,
) -> tuple[ComponentHealth, ComponentHealth, ComponentHealth]:
    checks: _Checks | None = getattr(request.app.state, "health_checks", None)
    if checks is None:
        checks = request.app.state.health_checks = _Checks()
    age = time.monotonic() - checks.at
    if checks.value is None or age >= STALE_SECONDS:
        await checks.refresh(request)
    elif age >= CACHE_SECONDS and (checks.refreshing is None or checks.refreshing.done()):
        checks.refreshing = asyncio.create_task(checks.refresh(request))
    assert checks.value is not None  # refresh() always leaves a round
    return checks.value


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _first_line(exc: Exception) -> str:
    text_ = str(exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


@router.get(
    "/health",
    operation_id="get_health",
    summary="Health of the API, its database, broker, model service and processes",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or the broker is down"}},
)
async def get_health(request: Request) -> Response:
    """Report every component; `degraded` when one is not ok, 503 when the API cannot serve."""
    components = await _dependencies(request)
    state = request.app.state
    answer: _Answer | None = getattr(state, "health_answer", None)
    if answer is None:
        answer = state.health_answer = _Answer()
    # the state file is looked at on every request (a stat): a restart shows at once
    path = state.settings.supervisor_state_file
    file, now = _file_key(path), time.time()
    if answer.components is not components or file != answer.file or now > answer.until:
        answer.body, answer.status, answer.until = _answer(request, components, path, now)
        answer.components, answer.file = components, file
    return Response(answer.body, status_code=answer.status, media_type="application/json")


def _answer(
    request: Request,
    components: tuple[ComponentHealth, ComponentHealth, ComponentHealth],
    path: Path,
    now: float,
) -> tuple[bytes, int, float]:
    database, broker, model_service = components
    processes, until = _read_state(path, now)
    health = Health(
        status="ok",
        version=request.app.version,
        database=database,
        broker=broker,
        model_service=model_service,
        processes=processes,
    )
    serving = database.ok and broker.ok
    if not (serving and model_service.ok and all(p.ok for p in processes.values())):
        health.status = "degraded"
    return health.model_dump_json().encode(), 200 if serving else 503, until
