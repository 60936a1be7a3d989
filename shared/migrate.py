"""Apply the Alembic migrations shipped with the package (`digits db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for the packaged migrations and the given database URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate the configured database up to `revision`."""
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.sqlalchemy_url), revision)
    if revision == "head" and not settings.sqlalchemy_url.startswith("sqlite"):
        from shared import tuning

        tuning.prepare(settings)  # Optuna's tables, in their own schema, once


def downgrade(settings: Settings, revision: str) -> None:
    """Migrate the configured database down to `revision`."""
    command.downgrade(alembic_config(settings.sqlalchemy_url), revision)
