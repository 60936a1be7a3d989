"""Writes what the training engine reports into the database, from a background thread, so the
training loop never waits on SQL. Also carries the abort flag back to the loop.

It writes metrics, progress and checkpoint rows only: the job's status and lease belong to the
worker that runs it (`worker.lifecycle`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import artifacts
from shared.db import session_scope, utcnow
from shared.models import Checkpoint, Job, JobEvent, MetricPoint, Worker

log = logging.getLogger("digits.worker.reporter")

LOWER_IS_BETTER = ("loss",)
LOG_UPLOAD_INTERVAL = 2.0  # s; the live log also rides on the job's event stream


def _better(name: str, new: float, old: float) -> bool:
    if any(name.endswith(s) for s in LOWER_IS_BETTER):
        return new < old
    return new > old


class DbReporter:
    """The engine's Reporter, backed by the job's rows."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: uuid.UUID,
        *,
        interval: float = 0.5,
        best: dict[str, Any] | None = None,
        last: dict[str, Any] | None = None,
        worker: str | None = None,
        keep: int = 5,
        store: artifacts.ArtifactStore | None = None,
        log_file: Path | None = None,
    ) -> None:
        # a bucket to upload checkpoints and the log to (None: they are in the data folder)
        self.store = store if store is not None and not store.local else None
        self.log_file = log_file
        self._log_uploaded = (0, 0.0)  # size, when
        self.worker = worker
        self.keep = keep
        self._position: tuple[int, float] = (0, 0.0)
        self._live: dict[str, float] | None = None
        self.sessions = sessions
        self.job_id = job_id
        self.interval = interval
        self._lock = threading.Lock()
        self._points: list[tuple[int, float, dict[str, float]]] = []
        self._progress: tuple[float, int, int] | None = None
        self._checkpoints: list[Any] = []
        self._log_lines: list[str] = []
        self._log_offset = 0
        self._stop = threading.Event()
        self._closing = threading.Event()
        self.best: dict[str, Any] = dict(best or {})
        self.last: dict[str, Any] = dict(last or {})
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self.failures = 0

    # -- the engine's Reporter protocol -------------------------------------------------
    def metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        with self._lock:
            self._points.append((step, epoch, dict(values)))
            self._position = (step, epoch)

    def progress(self, epoch: float, step: int, total_steps: int) -> None:
        with self._lock:
            self._progress = (epoch, step, total_steps)
            self._position = (step, epoch)

    def telemetry(self, values: dict[str, float]) -> None:
        """A sample of the process and its GPU: a metric point, and the worker's live state."""
        with self._lock:
            step, epoch = self._position
            self._points.append((step, epoch, dict(values)))
            self._live = dict(values)

    def checkpoint_saved(self, info: Any) -> None:
        if self.store is not None:
            # a hard link freezes this version (the engine replaces the name on its next
            # save) without copying in the training loop; the thread uploads it
            path = Path(info.path)
            staged = path.with_name(f".upload-{path.stem}-{info.step}-{uuid.uuid4().hex[:8]}.pt")
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            info = dataclasses.replace(info, path=staged)
        with self._lock:
            self._checkpoints.append(info)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop at the next step (a graceful worker shutdown)."""
        self._stop.set()

    def log(self, message: str) -> None:
        log.info("job=%s %s", self.job_id, message)

    def log_line(self, line: str, offset: int) -> None:
        """A line just written to the job's log, and the log's size after it (for followers)."""
        with self._lock:
            self._log_lines.append(line)
            self._log_offset = offset

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> DbReporter:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and write whatever is still buffered."""
        self._closing.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._closing.wait(self.interval):
            try:
                self.flush()
                self.failures = 0
            except Exception as exc:  # keep training through a short database outage
                self.failures += 1
                log.warning(
                    "job=%s metrics flush failed (%d): %s",
                    self.job_id,
                    self.failures,
                    str(exc).splitlines()[0] if str(exc) else exc,
                )

    def flush(self) -> None:
        """Write buffered points, progress and checkpoints; read the abort flag."""
        with self._lock:
            points, self._points = self._points, []
            progress, self._progress = self._progress, None
            checkpoints, self._checkpoints = self._checkpoints, []
            live, self._live = self._live, None
            lines, self._log_lines = self._log_lines, []
            offset = self._log_offset
        try:
            if self.store is not None:  # the objects first: a row names only what is stored
                for info in checkpoints:
                    self.store.put_file(self._key(info.name), Path(info.path))
            self._write(points, progress, checkpoints, live, (lines, offset))
        except BaseException:
            with self._lock:  # put them back, in order, for the next try
                self._points[:0] = points
                self._checkpoints[:0] = checkpoints
                self._log_lines[:0] = lines
                if self._progress is None:
                    self._progress = progress
            raise
        if self.store is not None:
            for info in checkpoints:
                Path(info.path).unlink(missing_ok=True)
            self._upload_log()

    def _key(self, name: str) -> str:
        return artifacts.checkpoint_key(self.job_id, name)

    def _upload_log(self) -> None:
        """Copy the job's log to the bucket when it grew (every few seconds, and at the end)."""
        if self.store is None or self.log_file is None:
            return
        size, when = self._log_uploaded
        now = time.monotonic()
        try:
            current = self.log_file.stat().st_size
            if current == size or (now - when < LOG_UPLOAD_INTERVAL and not self._closing.is_set()):
                return
            data = self.log_file.read_bytes()
            self.store.put_bytes(f"{artifacts.job_prefix(self.job_id)}/job.log", data)
            self._log_uploaded = (len(data), now)
        except Exception as exc:  # the log is for people; training goes on
            log.warning("job=%s log upload failed: %s", self.job_id, exc)

    def _write(
        self,
        points: list[tuple[int, float, dict[str, float]]],
        progress: tuple[float, int, int] | None,
        checkpoints: list[Any],
        live: dict[str, float] | None = None,
        logs: tuple[list[str], int] = ([], 0),
    ) -> None:
        now = utcnow()
        with session_scope(self.sessions) as session:
            values: dict[str, Any] = {}
            if points:
                rows = []
                for step, epoch, series in points:
                    for name, value in series.items():
                        rows.append(
                            MetricPoint(
                                job_id=self.job_id,
                                name=name,
                                step=step,
                                epoch=epoch,
                                value=float(value),
                                created_at=now,
                            )
                        )
                        entry = {"value": float(value), "step": step, "epoch": epoch}
                        self.last[name] = entry
                        if name.startswith("val.") and (
                            name not in self.best
                            or _better(name, float(value), self.best[name]["value"])
                        ):
                            self.best[name] = entry
                session.add_all(rows)
                session.add(
                    JobEvent(
                        job_id=self.job_id,
                        kind="metrics",
                        created_at=now,
                        data={
                            "points": [{"step": s, "epoch": e, "values": v} for s, e, v in points]
                        },
                    )
                )
                values["best"] = dict(self.best)
                values["last"] = dict(self.last)
            if progress is not None:
                epoch, step, total = progress
                values.update(
                    epoch=epoch,
                    step=step,
                    total_steps=total,
                    progress=round(min(step / max(total, 1), 0.999), 5),
                )
                session.add(
                    JobEvent(
                        job_id=self.job_id,
                        kind="progress",
                        created_at=now,
                        data={
                            "epoch": epoch,
                            "step": step,
                            "total_steps": total,
                            "progress": values["progress"],
                        },
                    )
                )
            if logs[0]:
                session.add(
                    JobEvent(
                        job_id=self.job_id,
                        kind="log",
                        created_at=now,
                        data={"lines": logs[0], "offset": logs[1]},
                    )
                )
            for info in checkpoints:
                self._save_checkpoint(session, info)
            if checkpoints:
                self._retire_snapshots(session)
            if values:
                session.execute(update(Job).where(Job.id == self.job_id).values(**values))
            if live is not None and self.worker:
                session.execute(
                    update(Worker)
                    .where(Worker.name == self.worker)
                    .values(stats={**live, "job_id": str(self.job_id), "at": now.isoformat()})
                )
            abort = session.scalar(select(Job.abort_requested).where(Job.id == self.job_id))
        if abort:
            self._stop.set()

    def _retire_snapshots(self, session: Session) -> None:
        """Keep `best`, `last` and the newest `keep` epoch snapshots; remove older ones."""
        rows = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == self.job_id, Checkpoint.name.like("epoch-%"))
            .order_by(Checkpoint.step.desc())
        ).all()
        for row in rows[self.keep :]:
            if self.store is not None:
                self.store.delete(row.path)
                if self.log_file is not None:
                    (self.log_file.parent / "checkpoints" / f"{row.name}.pt").unlink(
                        missing_ok=True
                    )
            else:
                Path(row.path).unlink(missing_ok=True)
            session.delete(row)

    def _save_checkpoint(self, session: Session, info: Any) -> None:
        path = Path(info.path)
        size = path.stat().st_size if path.exists() else 0
        if self.store is not None:  # rows record the key, which every host can read
            path = Path(self.store.ref(self._key(info.name)))
        row = session.scalar(
            select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.name == info.name)
        )
        metrics = {k: float(v) for k, v in (info.metrics or {}).items()}
        if row is None:
            session.add(
                Checkpoint(
                    job_id=self.job_id,
                    name=info.name,
                    path=str(path),
                    epoch=float(info.epoch),
                    step=int(info.step),
                    size_bytes=size,
                    metrics=metrics,
                )
            )
        else:
            row.path, row.epoch, row.step = str(path), float(info.epoch), int(info.step)
            row.size_bytes, row.metrics, row.created_at = size, metrics, utcnow()
        session.add(
            JobEvent(
                job_id=self.job_id,
                kind="checkpoint",
                data={
                    "name": info.name,
                    "epoch": float(info.epoch),
                    "step": int(info.step),
                    "metrics": metrics,
                },
            )
        )


class LogForwarder(logging.Handler):
    """Sends each line the job's log file gets to the reporter, so streams can follow the log."""

    def __init__(self, reporter: DbReporter, file_handler: logging.FileHandler) -> None:
        super().__init__()
        self.reporter = reporter
        self.file_handler = file_handler
        self.setFormatter(file_handler.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.file_handler.stream
            offset = os.fstat(stream.fileno()).st_size if stream else 0
            self.reporter.log_line(self.format(record), offset)
        except Exception:  # a log line must never stop training
            self.handleError(record)
