"""The web UI: static assets, index.html for the client routes, and self-hosted API docs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# The app runs under `script-src 'self'`: no inline script, no eval, no CDN. Charts and
# Preact set styles through the CSSOM, which `style-src 'self'` allows.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI and Redoc insert <style> elements and Redoc searches in a blob: worker; their
# scripts still come only from our own files.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; font-src 'self' "
    "data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def security_headers(csp: str = CSP) -> dict[str, str]:
    """Headers every UI response carries."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


class UIFiles(StaticFiles):
    """Static files that browsers revalidate (ETag / Last-Modified, then 304)."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers.update(security_headers())
        return response


router = APIRouter(include_in_schema=False)

# Client routes: the URLs are part of the UI's contract (shared links, bookmarks).
CLIENT_ROUTES = (
    "/",
    "/login",
    "/queue",
    "/fleet",
    "/models",
    "/settings",
    "/compare",
    "/studies",
    "/studies/{rest:path}",
    "/jobs/{rest:path}",
    "/datasets/{rest:path}",
)


# Served without a token: the shell, the docs, and the sign-in itself (tests/api/test_auth.py).
PUBLIC_PATHS = frozenset({*CLIENT_ROUTES, "/docs", "/redoc", "/api/v1/session"})


def _page(request: Request, path: Path, csp: str) -> Response:
    """An HTML file with an ETag so a reload revalidates instead of downloading."""
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", **security_headers(csp)}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(body, headers=headers)


async def index(request: Request) -> Response:
    """The single-page app's shell; the client router draws the page."""
    return _page(request, UI_DIR / "index.html", CSP)


for _route in CLIENT_ROUTES:
    router.add_api_route(_route, index, methods=["GET"], response_class=HTMLResponse)


@router.get("/docs", response_class=HTMLResponse)
async def swagger(request: Request) -> Response:
    """Swagger UI from the vendored files (FastAPI's default loads it from a CDN)."""
    return _page(request, UI_DIR / "docs" / "swagger.html", DOCS_CSP)


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> Response:
    """Redoc from the vendored files."""
    return _page(request, UI_DIR / "docs" / "redoc.html", DOCS_CSP)


def install(app: FastAPI) -> None:
    """Serve the UI from this process: assets under /ui, pages at the client routes."""
    app.mount("/ui", UIFiles(directory=UI_DIR), name="ui")
    app.include_router(router)
