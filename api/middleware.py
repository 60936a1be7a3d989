"""ASGI middleware that caps request bodies before anything parses or spools them."""

from __future__ import annotations

import json
import tempfile
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Answers 413 when a body is larger than `limit`, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _reject(send, 400, "bad_request", "Content-Length is not a number")
                return
            if length > self.limit:
                await _too_large(send, self.limit)
                return
            await self.app(scope, _counting(receive, self.limit), send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
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
                if total > self.limit:
                    await _too_large(send, self.limit)
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


async def _reject(send: Send, status: int, code: str, detail: str) -> None:
    body: dict[str, Any] = {
        "type": f"https://digits.dev/problems/{code}",
        "title": "Payload too large" if status == 413 else "Bad request",
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
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
