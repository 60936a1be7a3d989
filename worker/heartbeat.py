"""The worker's registration and heartbeat in the database, and adoption of jobs asking for it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import or_, select

from shared import artifacts
from shared.db import session_scope, utcnow
from shared.gpus import detect_gpus
from shared.models import Job, Status, Worker
from shared.services import dispatch
from worker import context, trials

log = logging.getLogger("digits.worker.heartbeat")


class Heartbeat:
    """Registers the worker, renews its heartbeat every `interval` seconds, marks it stopped."""

    def __init__(self, kind: str, queues: list[str], interval: float) -> None:
        self.kind = kind
        self.queues = queues
        self.interval = interval
        self.gpus: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        ctx = context.get()
        if ctx.device == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            wanted = [v.strip() for v in visible.split(",") if v.strip()]
            self.gpus = [
                g.__dict__ for g in detect_gpus() if str(g.index) in wanted or g.uuid in wanted
            ]
        self.beat()
        self._thread.start()
        return self

    def beat_now(self) -> None:
        """Renew at once (job started or finished), from any thread."""
        self._wake.set()

    def beat(self) -> None:
        ctx = context.get()
        now = utcnow()
        with session_scope(ctx.sessions) as session:
            row = session.get(Worker, ctx.name)
            if row is None:
                row = Worker(name=ctx.name, started_at=now)
                session.add(row)
            row.hostname = socket.gethostname()
            row.pid = os.getpid()
            row.kind = self.kind
            row.device = ctx.device
            row.queues = self.queues
            row.gpus = self.gpus
            if ctx.current_job is not None:
                row.idle_since = None
            elif row.current_job_id is not None or row.idle_since is None:
                row.idle_since = now
            row.current_job_id = ctx.current_job
            row.heartbeat_at = now
            row.stopped_at = None

    def adopt(self) -> int:
        """Send again the waiting jobs that ask for this worker (by name or GPU UUID)."""
        ctx = context.get()
        names = [ctx.name, *(g["uuid"] for g in self.gpus)]
        with session_scope(ctx.sessions) as session:
            jobs = list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.status == Status.WAITING,
                        or_(*(Job.requested_worker == n for n in names)),
                    )
                    .order_by(Job.created_at)
                )
            )
            count = dispatch.enqueue(session, jobs)
        if count:
            log.info("worker %s adopted %d waiting job(s) that asked for it", ctx.name, count)
        return count

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        ctx = context.get()
        try:
            with session_scope(ctx.sessions) as session:
                row = session.get(Worker, ctx.name)
                if row is not None:
                    row.stopped_at = utcnow()
                    row.current_job_id = None
        except Exception as exc:
            log.warning("could not mark worker stopped: %s", exc)

    def reap(self) -> dispatch.Sweep:
        """Requeue lost work, (re)send what the broker never got, remove deleted work."""
        ctx = context.get()
        with session_scope(ctx.sessions) as session:
            sweep = dispatch.reap(session, ctx.settings)
        trials.sweep()  # tuning studies: tell Optuna how ended trials went, ask for more
        for subject, row_id in sweep.purged:
            if subject == "job":
                artifacts.remove_job(ctx.settings, row_id)
            else:
                artifacts.remove_dataset(ctx.settings, row_id)
        if sweep.sent or sweep.requeued or sweep.gave_up or sweep.purged:
            log.info(
                "reaper on %s: requeued %d, gave up %d, sent %d, purged %d",
                ctx.name,
                len(sweep.requeued),
                len(sweep.gave_up),
                len(sweep.sent),
                len(sweep.purged),
            )
        return sweep

    def _run(self) -> None:
        ctx = context.get()
        next_reap = time.monotonic() + ctx.settings.reaper_interval
        while not self._stop.is_set():
            self._wake.wait(min(self.interval, ctx.settings.reaper_interval))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except Exception as exc:
                log.warning("heartbeat failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + ctx.settings.reaper_interval
                try:
                    self.reap()
                except Exception as exc:
                    log.warning("reaper failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
