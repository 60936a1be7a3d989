"""The in-process layer: shared/services against a real PostgreSQL, each test rolled back.

One database per test run, migrated once with Alembic; every test runs inside a transaction
that is rolled back at the end (the session joins it with savepoints, so services may commit).
Tests that need two connections (races) use `committing` sessions and clean up after
themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database


@pytest.fixture(scope="session")
def services_db() -> Iterator[str]:
    from shared import migrate

    url = create_pg_database()
    migrate.upgrade(Settings(database_url=url))
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def engine(services_db: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=services_db), pool_size=4, max_overflow=4)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session in a transaction that is rolled back after the test."""
    conn = engine.connect()
    outer = conn.begin()
    factory = sessionmaker(
        bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    s = factory()
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Independent sessions that really commit (for races between two connections)."""
    return make_session_factory(engine)
