"""ASGI middleware that stands before anything reads a body: who is asking, and how much.

`AuthGateMiddleware` checks the credentials of every guarded route before a byte of the body
is read (an anonymous 200 MiB JSON body used to be parsed, 2.4 GB of memory, before its 401).
`BodyLimitMiddleware` caps bodies per route: a small cap for JSON, the upload cap only for the
routes that take files; a body that stalls is answered 408.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import close_quietly
from shared.errors import DomainError

log = logging.getLogger("digits.api.gate")

USER_KEY = "digits.user"
# the routes that take files; every other body is JSON (or nothing) and gets the small cap
UPLOAD_ROUTES = re.compile(
    r"^/api/v1/(datasets|pretrained-models|jobs/[^/]+/(classify|evaluate|explain|predict))/?$"
)
# routes anyone may call: health, signing in/out; the UI shell and docs are outside /api/
PUBLIC_ROUTES = re.compile(r"^/api/v1/(health|session)/?$")


def is_upload(scope: Scope) -> bool:
    """Whether this request may carry an upload (multipart files)."""
    return scope.get("method") == "POST" and bool(UPLOAD_ROUTES.match(scope.get("path", "")))


class AuthGateMiddleware:
    """401 (or 403, or 503) before the body of a guarded route is read; the user it found
    rides in the request's state, so the route's dependency does not look it up again."""

    def __init__(
        self,
        app: ASGIApp,
        authenticate: Callable[[Request], Any],
        cached: Callable[[Request], Any] | None = None,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.cached = cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            await _reject(
                send, 400, "invalid_value", "the URL holds a NUL character", title="Invalid input"
            )
            return
        if not path.startswith("/api/") or PUBLIC_ROUTES.match(path):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            # a token seen in the last seconds costs no thread hop (a get-job's largest cost)
            user = self.cached(request) if self.cached is not None else None
            if user is None:
                user = await anyio.to_thread.run_sync(self.authenticate, request)
        except DomainError as exc:
            await _reject(send, exc.status, exc.code, exc.detail, title=exc.title)
            return
        except (OperationalError, PoolTimeout, DBAPIError) as exc:
            log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
            await _reject(
                send,
                503,
                "database_unavailable",
                "the database is not answering; retry shortly",
                title="Service unavailable",
                headers=[(b"retry-after", b"5")],
            )
            return
        scope.setdefault("state", {})[USER_KEY] = user
        await self.app(scope, receive, send)


def gate_authenticator(app: Any) -> Callable[[Request], Any]:
    """What the gate calls (in a thread): the API's own authentication on its own session."""
    from api import browser
    from shared.services import users

    def authenticate(request: Request) -> Any:
        session = app.state.session_factory()
        try:
            user = users.authenticate(session, browser.authorization(request))
            if session.dirty:
                session.commit()  # last_used_at, at most once a minute
            return user
        finally:
            close_quietly(session)

    return authenticate


def cached_principal(request: Request) -> Any:
    """What the gate asks first, on the event loop: the user of a recently checked token."""
    from api import browser
    from shared.services import users

    return users.cached_user(browser.authorization(request))


class BodyLimitMiddleware:
    """Answers 413 when a body is larger than its route's limit, declared or streamed, and
    408 when a body stalls for `read_timeout` seconds."""

    def __init__(
        self, app: ASGIApp, limit: int, json_limit: int | None = None, read_timeout: float = 60
    ) -> None:
        self.app = app
        self.upload_limit = limit
        self.json_limit = json_limit if json_limit is not None else limit
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        if declared is None and not chunked:  # no body to cap or to wait for (every GET)
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if is_upload(scope) else self.json_limit
        stall = _Stall(receive, send, self.read_timeout)
        receive, send = stall.receive, stall.send
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _reject(send, 400, "bad_request", "Content-Length is not a number")
                return
            if length > limit:
                await _too_large(send, limit)
                return
            await self.app(scope, _counting(receive, limit), send)
            return
        # No declared length: buffer (to disk past 1 MiB) up to the limit, then replay.
        spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115
        try:
            total = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    await _too_large(send, limit)
                    return
                spool.write(chunk)
                if not message.get("more_body", False):
                    break
            spool.seek(0)
            done = False

            async def replay() -> Message:
                nonlocal done
                if done:
                    return await receive()
                data = spool.read(1024 * 1024)
                more = bool(data) and spool.tell() < total
                if not more:
                    done = True
                return {"type": "http.request", "body": data, "more_body": more}

            await self.app(scope, replay, send)
        finally:
            spool.close()


class _Stall:
    """One request's body deadline: the first stalled read answers 408 itself (frameworks turn
    an exception while reading a body into a 400), then the app only sees a disconnect."""

    def __init__(self, receive: Receive, send: Send, seconds: float) -> None:
        self._receive, self._send, self.seconds = receive, send, seconds
        self.answered = False
        self.started = False
        self.body_done = False

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        if (
            self.body_done
        ):  # only a disconnect can come now; streams wait for it as long as they run
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self.seconds)
        except TimeoutError:
            if not self.started:
                await _reject(
                    self._send,
                    408,
                    "request_timeout",
                    f"the request body stalled for {self.seconds:g} s; send it without pauses",
                    title="Request timeout",
                )
            self.answered = True
            return {"type": "http.disconnect"}
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # our 408 went out: the app's answer to a body it never got does not
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _counting(receive: Receive, limit: int) -> Receive:
    """A receive that stops a body which grows past its declared, accepted length."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return wrapped


async def _too_large(send: Send, limit: int) -> None:
    await _reject(
        send,
        413,
        "payload_too_large",
        f"the request body is larger than the limit of {limit} bytes",
    )


async def _reject(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A problem+json answer sent before the body was read; the connection then closes, since
    the unread body would otherwise be taken for the next request."""
    body: dict[str, Any] = {
        "type": f"https://digits.dev/problems/{code}",
        "title": title or ("Payload too large" if status == 413 else "Bad request"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
