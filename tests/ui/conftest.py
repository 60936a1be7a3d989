"""Browser tests: Debian's Chromium driven by Playwright against a stack of our own (API,
model service, a dataset worker and a training worker on PostgreSQL + Redis).

Every page a test opens goes through `Guard`: a request to any host but the server is aborted
and recorded, and so is any console error; the test fails on either.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.support import Stack, free_port

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Optional endpoints the UI probes (and falls back from when a server lacks them): their 404
# is an answer, not an error of the page.
PROBES = re.compile(r"/api/v1/(events\?|metrics\?|jobs/[^/]+/results/cell)")


def chromium_path() -> str:
    """Debian's chromium; a missing browser fails the tests (CI installs it), never skips."""
    found = os.environ.get("DIGITS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail(
            "chromium is not installed: `apt-get install -y chromium` "
            "(scripts/ensure-services.sh does it for `make test`)"
        )
    return found


@pytest.fixture(scope="session")
def ui_stack(pg_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of our own: the tests restart its API mid-training."""
    from shared import migrate
    from shared.settings import Settings

    url = create_pg_database()
    migrate.upgrade(Settings(database_url=url))
    env = {
        **pg_env,
        "DIGITS_DATABASE_URL": url,
        "DIGITS_BROKER_PREFIX": f"digits-ui-{uuid.uuid4().hex[:8]}:",
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("ui-data")),
        "DIGITS_MODEL_SERVER_URL": f"http://127.0.0.1:{free_port()}",
        "DIGITS_HEARTBEAT_INTERVAL": "1",
    }
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("ui-logs"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("ui-cpu", "--queues", "cpu")
        stack.start_worker("ui-train", "--cpu")
        stack.start_model_server()
        yield stack
    finally:
        stack.stop()
        drop_pg_database(url)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (each test gets fresh contexts)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Guard:
    """Records requests to other hosts and console errors of every page of a context."""

    host: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tolerated: list[re.Pattern[str]] = field(default_factory=list)
    pages: int = 0
    requests: int = 0

    def route(self, route: Any) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.host:
            self.foreign.append(route.request.url)
            route.abort()
            return
        self.requests += 1
        route.continue_()

    def console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        text = f"{msg.text} at {where}"
        if "404" in msg.text and PROBES.search(where or ""):
            return
        if any(p.search(text) for p in self.tolerated):
            return
        self.errors.append(text)

    def page_error(self, exc: Any) -> None:
        self.errors.append(f"uncaught: {exc}")

    def check(self) -> None:
        print(
            f"UI guard: {self.pages} pages, {self.requests} requests to the server, "
            f"{len(self.foreign)} to other hosts, {len(self.errors)} console errors"
        )
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"
        assert self.errors == [], f"console errors: {self.errors}"


class UI:
    """A browser context on the stack, signed in (or not), with its guard."""

    def __init__(self, browser: Any, stack: Stack, *, token: str | None, theme: str) -> None:
        self.stack = stack
        self.guard = Guard(host=f"127.0.0.1:{stack.port}")
        self.context = browser.new_context(
            viewport={"width": 1440, "height": 960}, device_scale_factor=1, base_url=stack.url
        )
        self.context.set_default_timeout(30_000)
        self.context.route("**/*", self.guard.route)
        self.context.add_init_script(f"localStorage.setItem('digits.theme', '{theme}')")
        if token:
            resp = self.context.request.post(
                stack.url + "/api/v1/session", data={"token": token}, headers={"Origin": stack.url}
            )
            assert resp.status == 200, resp.text()

    def page(self, path: str | None = None) -> Any:
        page = self.context.new_page()
        page.on("console", self.guard.console)
        page.on("pageerror", self.guard.page_error)
        self.guard.pages += 1
        if path is not None:
            page.goto(path)
        return page

    def close(self) -> None:
        self.context.close()
        self.guard.check()


@pytest.fixture
def ui(browser: Any, ui_stack: Stack) -> Iterator[UI]:
    """A signed-in context in the light theme; fails the test on foreign requests or errors."""
    session = UI(browser, ui_stack, token=ui_stack.token, theme="light")
    yield session
    session.close()


def wait_until(check: Any, timeout: float = 60, every: float = 0.25, what: str = "") -> Any:
    """Poll `check()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")
