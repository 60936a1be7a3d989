"""How the API runs the reads that pollers hammer: Core statements, off the ORM.

On PostgreSQL they run on psycopg's async connections, on the event loop: a thread-pool hop
per request and SQLAlchemy's per-statement work cost more than the query (get-job went from
870 to 1,390 requests/s at concurrency 32 on 2 cores). Each statement is compiled once to
SQL and prepared once per connection; connections are autocommit (no BEGIN/ROLLBACK) and
not pinged on checkout. Elsewhere (SQLite, the embedded default) the same statements run on
the app's engine in a thread.

A read whose pooled connection was lost (a database restart) drops the pool's idle ones and
runs once more on a new connection; an unreachable database is a psycopg OperationalError,
which `api.errors` answers with 503 and Retry-After at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, Select
from sqlalchemy.dialects import postgresql
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("digits.api.reads")

# PostgreSQL on two cores gains nothing past a few queries at once; the others queue here
POOL_SIZE = 10
# a request waits this long for a connection, then answers 503 (as the ORM engine's pool does)
POOL_TIMEOUT = 5.0


class PoolTimeout(psycopg.OperationalError):
    """Every connection stayed busy for POOL_TIMEOUT seconds."""


class ThreadedReads:
    """Statements on a SQLAlchemy engine, in the thread pool (any database)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def __call__(self, statement: Select[Any], params: dict[str, Any]) -> Sequence[Any]:
        return await run_in_threadpool(partial(self._all, statement, params))

    def _all(self, statement: Select[Any], params: dict[str, Any]) -> Sequence[Any]:
        conn: Connection
        with self.engine.connect() as conn:
            return conn.execute(statement, params).all()

    async def close(self) -> None:
        """Nothing of its own: the engine is disposed with the app's."""


class PostgresReads:
    """Statements on a small pool of psycopg async connections; rows with attribute access.

    Connections open on demand (a refused one fails the request at once, and the first after
    a restart succeeds: no background reconnection with backoff to wait for)."""

    dialect = "postgresql"

    def __init__(self, conninfo: str, size: int = POOL_SIZE, timeout: float = POOL_TIMEOUT):
        self.conninfo, self.timeout = conninfo, timeout
        self.slots = asyncio.Semaphore(size)
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self._sql: dict[int, str] = {}
        self._dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]

    def sql(self, statement: Select[Any]) -> str:
        """The statement as psycopg's SQL (pyformat), compiled once per statement object."""
        key = id(statement)  # the statements are module-level: they live as long as we do
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = str(statement.compile(dialect=self._dialect))
        return found

    async def __call__(self, statement: Select[Any], params: dict[str, Any]) -> Sequence[Any]:
        sql = self.sql(statement)
        try:
            return await self._fetch(sql, params, fresh=False)
        except PoolTimeout:
            raise
        except psycopg.OperationalError as exc:
            # the idle connections are likely as dead as this one was: a new one, once
            log.info("read failed (%s); retrying once on a new connection", _first_line(exc))
            await self._drop_idle()
            return await self._fetch(sql, params, fresh=True)

    async def _fetch(self, sql: str, params: dict[str, Any], *, fresh: bool) -> Sequence[Any]:
        async with self._connection(fresh=fresh) as conn:
            cur = conn.cursor(row_factory=namedtuple_row)
            await cur.execute(sql, params, prepare=True)
            return await cur.fetchall()

    @asynccontextmanager
    async def _connection(self, *, fresh: bool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout)
        except TimeoutError:
            raise PoolTimeout(f"no database connection free within {self.timeout:g} s") from None
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            if self.idle and not fresh:
                conn = self.idle.pop()
            else:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5
                )
            yield conn
        finally:
            if conn is not None:
                # reused only when idle and healthy (a cancelled query leaves it ACTIVE)
                if not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE:
                    self.idle.append(conn)
                else:
                    await conn.close()
            self.slots.release()

    async def _drop_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            await conn.close()

    async def close(self) -> None:
        await self._drop_idle()


Reads = ThreadedReads | PostgresReads


def make_reads(engine: Engine) -> Reads:
    """The async pool on PostgreSQL, the app's engine in a thread elsewhere."""
    if engine.dialect.name == "postgresql":
        url = engine.url.set(drivername="postgresql")
        return PostgresReads(url.render_as_string(hide_password=False))
    return ThreadedReads(engine)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
