"""Migrations go up, down and up again on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from shared import migrate
from shared.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database


def _tables(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _cycle(settings: Settings) -> None:
    url = settings.sqlalchemy_url
    migrate.upgrade(settings)
    assert {"dataset", "job", "alembic_version"} <= _tables(url)
    migrate.downgrade(settings, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(settings)
    assert {"dataset", "job"} <= _tables(url)


def test_migrations_cycle_on_sqlite(tmp_path: Path) -> None:
    _cycle(Settings(data_dir=tmp_path))


def test_migrations_cycle_on_postgresql() -> None:
    url = create_pg_database()
    try:
        _cycle(Settings(database_url=url))
    finally:
        drop_pg_database(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_models_match_the_migrations(backend: str, tmp_path: Path) -> None:
    """Autogenerate finds nothing to do: the models and the migration history agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import shared.models  # noqa: F401
    from shared.db import Base

    url = create_pg_database() if backend == "postgresql" else ""
    try:
        settings = Settings(database_url=url, data_dir=tmp_path)
        migrate.upgrade(settings)
        engine = create_engine(settings.sqlalchemy_url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        engine.dispose()
        assert diff == []
    finally:
        if url:
            drop_pg_database(url)
