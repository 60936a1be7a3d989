"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from api.errors import install_error_handlers
from api.middleware import (
    AuthGateMiddleware,
    BodyLimitMiddleware,
    cached_principal,
    gate_authenticator,
)
from api.openapi import build_openapi
from api.reads import make_reads
from api.routers import (
    catalog,
    datasets,
    events,
    fleet,
    health,
    insight,
    jobs,
    models,
    prometheus,
    session,
    studies,
    ui,
    users,
)
from shared.db import make_engine, make_session_factory
from shared.logging import configure_logging
from shared.queue import create_celery
from shared.schemas.common import Problem
from shared.services import dispatch
from shared.settings import Settings, get_settings

API_PREFIX = "/api/v1"

DESCRIPTION = """\
A modern, open DIGITS: upload labelled image datasets, train image classifiers on your GPUs
without writing training code, and use the models, over REST.

Every error is `application/problem+json` (RFC 9457) with a stable `code`.
Long work answers `202 Accepted` with the resource to poll.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for the given settings (the environment's when omitted)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        # the hot reads (a job, a page of jobs): async on PostgreSQL, see api.reads
        app.state.reads = make_reads(engine)
        app.state.celery = create_celery(settings)
        # what a request's services enqueue leaves for the broker after its commit
        dispatch.install(
            app.state.session_factory, dispatch.CelerySender(app.state.celery, settings)
        )
        # the routes that call the model service run in the thread pool: a blocking client
        app.state.model_http = httpx.Client(
            base_url=settings.resolved_model_server_url, timeout=httpx.Timeout(60, connect=3)
        )
        app.state.model_client = httpx.AsyncClient(
            base_url=settings.resolved_model_server_url, timeout=httpx.Timeout(60, connect=3)
        )
        logging.getLogger("digits.api").info(
            "api ready database=%s broker=%s",
            engine.url.render_as_string(hide_password=True),
            "filesystem" if settings.is_embedded_broker else "redis",
        )
        try:
            yield
        finally:
            await app.state.model_client.aclose()
            app.state.model_http.close()
            await app.state.reads.close()
            engine.dispose()

    app = FastAPI(
        title="digits",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by api.routers.ui from vendored files, not a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    # FastAPI's documented hook for a custom schema is replacing this method on the instance
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_upload_bytes,
        json_limit=settings.max_json_bytes,
        read_timeout=settings.body_read_timeout,
    )
    # the UI's modules shrink 3-4x; model archives are compressed already. Level 1: a compare
    # page's 1 MB of series took 129 ms to compress at level 6 and 30 ms at level 1, 9% larger
    # (the UI's JavaScript: 115 KB instead of 104)
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1024,
        compresslevel=1,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"),
    )
    # outermost: credentials are checked before anything reads (or even caps) a body
    app.add_middleware(
        AuthGateMiddleware, authenticate=gate_authenticator(app), cached=cached_principal
    )
    app.include_router(health.router, prefix=API_PREFIX)
    guarded: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "Missing, malformed or revoked token"},
        503: {"model": Problem, "description": "The database is unavailable; retry later"},
    }
    # routes match in order, one by one: the reads that dashboards poll (a job, the jobs) come
    # first, which cut FastAPI's matching of a get-job from 14 routes tried to 3
    app.include_router(jobs.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(datasets.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(events.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(catalog.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(fleet.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(users.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(models.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(insight.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(studies.router, prefix=API_PREFIX, responses=guarded)
    app.include_router(prometheus.router, responses=guarded)
    app.include_router(session.router, prefix=API_PREFIX)
    ui.install(app)
    return app
