"""Per-process worker state: settings, database sessions and the worker's name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.settings import Settings


@dataclass
class WorkerContext:
    """What a task needs besides its job id."""

    settings: Settings
    sessions: sessionmaker[Session]
    name: str
    device: str | None = None  # "cpu", "cuda", or None (cuda when the child finds one)
    current_job: uuid.UUID | None = None
    devices: int = 1  # GPUs (or CPU processes) one multi-device job may use
    heartbeat: Any = None


_context: WorkerContext | None = None


def init(settings: Settings, name: str, device: str | None = None) -> WorkerContext:
    """Build the context once, when the worker starts."""
    global _context
    if settings.sqlalchemy_url.startswith("sqlite"):
        engine = make_engine(settings)
    else:
        engine = make_engine(settings, pool_size=2, max_overflow=2)
    _context = WorkerContext(
        settings=settings, sessions=make_session_factory(engine), name=name, device=device
    )
    return _context


def get() -> WorkerContext:
    """The context of this worker process."""
    if _context is None:
        raise RuntimeError("worker context not initialised; start workers with `digits worker`")
    return _context
