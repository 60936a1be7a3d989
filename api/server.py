"""Serving the API with uvicorn, with a deadline on request headers.

uvicorn times out idle keep-alive connections but not a connection that sends half a request
and stops: one such connection was held for 60 s (and a few hundred would hold every file
descriptor). This protocol closes a connection whose request headers are not complete within
`header_timeout` seconds of its first byte (or of its opening).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.main import create_app
from shared.settings import Settings


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """httptools' protocol with a deadline from a request's first byte to its last header."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    # narrowed as uvicorn's own method is (asyncio declares a BaseTransport), ignored there too
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # bytes on a connection with no request in flight start a new request's deadline
        if self.cycle is None or self.cycle.response_complete:
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


# young collections every 50,000 allocations (not 700), full ones after 100 young ones
GC_THRESHOLDS = (50_000, 20, 100)


def create_served_app() -> FastAPI:
    """The app as the server runs it, with the collector tuned for a long-lived process.

    Full collections found nothing to free in the API yet stopped it for 0.4 s each, a few
    times a minute under load: the p99 of get-job at concurrency 32. The objects alive after
    start-up (routes, schemas, models) leave the collector's scans (`gc.freeze`), and
    collections run less often.
    """
    app = create_app()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API (uvicorn, httptools, header deadline)."""
    import uvicorn

    protocol = type(
        "DigitsHttpProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout": settings.header_read_timeout},
    )
    uvicorn.run(
        "api.server:create_served_app",
        factory=True,
        host=host,
        port=port,
        http=protocol,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
