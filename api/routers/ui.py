"""The web UI: static assets, index.html for the client routes, and self-hosted API docs."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import get_route_path
from starlette.types import Receive, Scope, Send

from api.conditional import matches

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


# gzip once per file version, at a better level than the middleware's per-response one
COMPRESSIBLE = (".js", ".css", ".html", ".svg", ".json", ".map", ".txt")
GZIP_LEVEL = 9


@dataclass(frozen=True)
class _Asset:
    stamp: tuple[int, int]  # mtime_ns, size: an edited file is read again
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str


class UIAssets:
    """The UI's files from memory, revalidated by browsers (ETag, `no-cache`, then 304).

    A page load revalidates every module it uses; each was a thread hop for the file's stat
    and a streamed FileResponse, 20-odd requests that the first data of the page queued
    behind. Here a 304 is a dictionary lookup and a stat on the event loop, and a 200 is
    gzipped once per file version (level 9) instead of per response.
    """

    def __init__(self, directory: Path) -> None:
        self.root = directory.resolve()
        self.assets: dict[str, _Asset] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(405, headers={"Allow": "GET, HEAD"})
        asset = await self._asset(get_route_path(scope))
        if asset is None:
            raise HTTPException(404)
        headers = Headers(scope=scope)
        common = {
            "ETag": asset.etag,
            "Cache-Control": "no-cache",
            "Vary": "Accept-Encoding",
            **security_headers(),
        }
        if matches(headers.get("if-none-match"), asset.etag):
            response: Response = Response(status_code=304, headers=common)
        elif asset.gzipped is not None and "gzip" in headers.get("accept-encoding", ""):
            common["Content-Encoding"] = "gzip"
            response = Response(asset.gzipped, media_type=asset.media_type, headers=common)
        else:
            response = Response(asset.body, media_type=asset.media_type, headers=common)
        await response(scope, receive, send)

    async def _asset(self, route_path: str) -> _Asset | None:
        relative = route_path.lstrip("/")
        if not relative or "\x00" in relative or relative.startswith("."):
            return None
        full = os.path.realpath(self.root / relative)
        if not full.startswith(str(self.root) + os.sep):  # `..` or a link out of the folder
            return None
        try:
            st = os.stat(full)  # microseconds: no thread hop
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        found = self.assets.get(full)
        if found is not None and found.stamp == (st.st_mtime_ns, st.st_size):
            return found
        asset = await anyio.to_thread.run_sync(_read_asset, full, (st.st_mtime_ns, st.st_size))
        self.assets[full] = asset
        return asset


def _read_asset(full: str, stamp: tuple[int, int]) -> _Asset:
    body = Path(full).read_bytes()
    gzipped = None
    if full.endswith(COMPRESSIBLE) and len(body) >= 1024:
        gzipped = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    media_type = mimetypes.guess_type(full)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type.endswith(("javascript", "json", "+xml")):
        media_type += "; charset=utf-8"
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _Asset(stamp, body, gzipped, etag, media_type)


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
    app.mount("/ui", UIAssets(UI_DIR), name="ui")
    app.include_router(router)
