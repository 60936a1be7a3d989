"""The worker's side of a tuning study: report each validation of a trial to Optuna and stop
the trial when the pruner says so; tell the study when a trial's job has ended.

The training engine only calls a plain callable after each validation (`TrainSpec.
on_validation`); everything Optuna-, SQL- and study-shaped is here. A pruned trial stops like
an aborted one (its last checkpoint saved) but ends `done`, with a `trial.pruned` metric point
(the objective's value where it stopped) and the reason in its status history.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import tuning
from shared.db import reading
from shared.models import Job, Study
from shared.services import studies as studies_service
from shared.settings import Settings
from worker import context

log = logging.getLogger("digits.worker.trials")

OnValidation = Callable[[int, float, dict[str, float]], str | None]


def hook(
    sessions: sessionmaker[Session], settings: Settings, job_id: uuid.UUID, reporter: Any
) -> OnValidation | None:
    """The callable a trial's training calls after each validation (None: not a trial)."""
    with reading(sessions) as session:
        job = session.get(Job, job_id)
        study = session.get(Study, job.study_id) if job and job.study_id else None
        if job is None or study is None or job.trial_number is None:
            return None
        config, name, number = study.config, study.optuna_name, job.trial_number
        hyper = dict(job.request.get("hyperparameters", {}))
    metric = config["objective"]["metric"]
    kind = config["pruner"]["type"]
    try:
        ostudy = tuning.open_study(settings, name, config, number=number)
    except Exception as exc:  # the study's storage is down: train on, unpruned
        log.warning("job=%s cannot open its study %s: %s", job_id, name, exc)
        return None

    def on_validation(step: int, epoch: float, values: dict[str, float]) -> str | None:
        value = values.get(metric)
        if value is None:
            return None
        at = tuning.step_of(epoch, hyper)
        try:
            pruned = tuning.report(ostudy, number, at, float(value))
        except Exception as exc:  # a lost report costs a decision, never the trial
            log.warning("job=%s trial %d: report failed: %s", job_id, number, exc)
            return None
        if not pruned:
            return None
        reporter.metrics(step, epoch, {studies_service.PRUNED: 1.0})
        reason = f"pruned by {kind} at epoch {epoch:.2f}: {metric} {value:.4f}"
        if kind in ("asha", "hyperband"):
            eta = config["pruner"]["reduction_factor"]
            reason += f" is not in the top 1/{eta} of the trials at this rung"
        elif kind == "median":
            reason += " is worse than the median of the trials at this step"
        log.info("job=%s trial %d %s", job_id, number, reason)
        return reason

    return on_validation


def diverged(reporter: Any, step: int, epoch: float, message: str) -> str:
    """A trial whose loss diverged is a bad trial, not a broken job: it ends pruned."""
    reporter.metrics(step, epoch, {studies_service.PRUNED: 1.0})
    return f"pruned at epoch {epoch:.2f}: the loss diverged ({message})"


def after(job_id: uuid.UUID) -> None:
    """A trial's job ended on this worker: tell its study, ask for the next trial."""
    ctx = context.get()
    try:
        studies_service.after_trial(ctx.sessions, ctx.settings, job_id)
    except Exception as exc:  # the reaper's pass tells it later
        log.warning("job=%s telling its study failed: %s", job_id, str(exc).splitlines()[0])


def sweep() -> None:
    """The reaper's pass over unfinished studies."""
    ctx = context.get()
    studies_service.sweep(ctx.sessions, ctx.settings)
