"""Runs one training job in a fresh child process, so the worker process never touches CUDA
and every job gets its device memory back when it ends."""

from __future__ import annotations

import logging
import multiprocessing
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shared import storage
from shared.db import make_engine, make_session_factory, session_scope
from shared.logging import configure_logging
from shared.models import Checkpoint, Job, Status
from shared.services import jobs as job_service
from shared.settings import Settings
from worker import context

log = logging.getLogger("digits.worker.runner")


_PRELOAD = ["torch", "torchvision", "worker.runner", "worker.training.engine", "worker.reporter"]
_context_cache: list[Any] = []


def _mp_context() -> Any:
    """A forkserver that has imported torch (but never touched CUDA) forks each job's child.

    A fresh process per job still returns all device memory when the job ends, without paying
    the interpreter start and the torch import (seconds) on every job.
    """
    if not _context_cache:
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload(_PRELOAD)
        _context_cache.append(mp)
    return _context_cache[0]


def prepare() -> None:
    """Start the forkserver now, so the first job does not wait for it."""
    from multiprocessing import forkserver

    _mp_context()
    forkserver.ensure_running()


def run_job(job_id: uuid.UUID) -> None:
    """Claim a training job, train it in a child process, and make sure it ends in a final state."""
    ctx = context.get()
    with session_scope(ctx.sessions) as session:
        job = job_service.claim_job(session, job_id, ctx.name)
        if job is None:
            log.info("job=%s nothing to claim (duplicate delivery, aborted or gone)", job_id)
            return
        try:
            plan = _plan(session, ctx.settings, job)
        except ValueError as exc:
            job_service.finish_job(session, job_id, Status.ERROR, reason=str(exc))
            return
    log.info("job=%s training starts on %s (device %s)", job_id, ctx.name, ctx.device)
    ctx.current_job = job_id
    if ctx.heartbeat is not None:
        ctx.heartbeat.beat_now()
    mp = _mp_context()
    child = mp.Process(
        target=child_main,
        args=(ctx.settings.model_dump(mode="json"), str(job_id), plan, ctx.device, ctx.name),
        name=f"train-{job_id}",
        daemon=False,
    )
    child.start()
    try:
        child.join()
    finally:
        ctx.current_job = None
        if ctx.heartbeat is not None:
            ctx.heartbeat.beat_now()
    if child.exitcode != 0:
        with session_scope(ctx.sessions) as session:
            if job_service.finish_job(
                session,
                job_id,
                Status.ERROR,
                reason=f"the training process exited unexpectedly (exit code {child.exitcode})",
            ):
                log.error("job=%s child died with exit code %s", job_id, child.exitcode)
    log.info("job=%s finished on %s", job_id, ctx.name)


def _plan(session: Any, settings: Settings, job: Job) -> dict[str, Any]:
    """Everything the child needs, resolved while we hold the database session."""
    request = job.request
    network = dict(request["network"])
    init_checkpoint = None
    if network["kind"] == "pretrained":
        from shared.models import PretrainedModel

        model = session.get(PretrainedModel, uuid.UUID(network["model_id"]))
        init = storage.pretrained_dir(settings, model.id) / "init.pt" if model else None
        if model is None or init is None or not init.exists():
            raise ValueError("the pretrained model is gone")
        init_checkpoint = str(init)
        network = dict(model.network)
        if network.get("kind") == "custom" and network.get("layers"):
            last = dict(network["layers"][-1])
            if last.get("type") == "linear":
                last["out_features"] = None
                network["layers"] = [*network["layers"][:-1], last]
    elif network["kind"] == "previous":
        source = session.get(Job, uuid.UUID(network["job_id"]))
        ckpt = network["checkpoint"]
        name = f"epoch-{ckpt}" if isinstance(ckpt, int) else ckpt
        row = (
            session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == network["job_id"], Checkpoint.name == name
                )
            )
            if source
            else None
        )
        if source is None or row is None or not Path(row.path).exists():
            raise ValueError(f"the previous job's checkpoint {name!r} is gone")
        init_checkpoint = row.path
        network = dict(source.request["network"])
        if network.get("kind") == "custom" and network.get("layers"):
            last = dict(network["layers"][-1])
            if last.get("type") == "linear":
                last["out_features"] = None
                network["layers"] = [*network["layers"][:-1], last]
    return {
        "dataset_dir": str(storage.dataset_dir(settings, job.dataset_id)),  # type: ignore[arg-type]
        "network": network,
        "hyper": request["hyperparameters"],
        "out_dir": str(storage.job_dir(settings, job.id)),
        "init_checkpoint": init_checkpoint,
    }


class _AbortedBeforeStart(Exception):
    """The job was aborted before training began."""


def child_main(
    settings_json: dict[str, Any],
    job_id_str: str,
    plan: dict[str, Any],
    device: str | None,
    worker_name: str | None = None,
) -> None:
    """Entry point of the training child: train, report, and record the outcome."""
    settings = Settings.model_validate(settings_json)
    job_id = uuid.UUID(job_id_str)
    out_dir = Path(plan["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level)
    handler = logging.FileHandler(out_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)

    engine = make_engine(settings)
    sessions = make_session_factory(engine)

    from shared.schemas.jobs import Hyperparameters
    from worker.reporter import DbReporter
    from worker.training.engine import TrainingError, TrainSpec, train

    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        best, last = (dict(job.best or {}), dict(job.last or {})) if job else ({}, {})
    reporter = DbReporter(sessions, job_id, best=best, last=last, worker=worker_name)
    reporter.flush()  # reads the abort flag: a job aborted while its child started stops here
    reporter.start()
    from worker.telemetry import Sampler

    sampler = Sampler(reporter.telemetry, interval=settings.telemetry_interval).start()
    spec = TrainSpec(
        dataset_dir=Path(plan["dataset_dir"]),
        network=plan["network"],
        hyper=Hyperparameters.model_validate(plan["hyper"]),
        out_dir=out_dir,
        device=device,
        init_checkpoint=Path(plan["init_checkpoint"]) if plan["init_checkpoint"] else None,
    )
    status, reason = Status.DONE, None
    try:
        if reporter.should_stop():
            raise _AbortedBeforeStart
        result = train(spec, reporter)
        if result.outcome == "stopped":
            status, reason = Status.ABORTED, "aborted by user"
        elif result.outcome == "early_stopped":
            reporter.log(f"early stopping at epoch {result.epoch:.2f}")
        log.info(
            "job=%s %s after %d steps, %.1f images/s",
            job_id,
            result.outcome,
            result.steps,
            result.images_per_second,
        )
    except _AbortedBeforeStart:
        status, reason = Status.ABORTED, "aborted by user"
    except TrainingError as exc:
        status, reason = Status.ERROR, str(exc)
        log.error("job=%s training failed: %s", job_id, exc)
    except Exception as exc:
        status, reason = Status.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        log.exception("job=%s training crashed", job_id)
    finally:
        sampler.stop()
        reporter.close()
    with session_scope(sessions) as session:
        job_service.finish_job(session, job_id, status, reason=reason)
    engine.dispose()
    logging.getLogger().removeHandler(handler)
    handler.close()
