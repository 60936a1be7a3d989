"""Tuning studies: Optuna asks, the job queue runs, the trials' jobs tell.

A study is our row plus an Optuna study. Each trial is an ordinary training job in the study's
group (claimed, leased, resumed and finished by the one lifecycle); a study only decides what
to queue next. `top_up` is the whole scheduler, idempotent and serialised per study (a row
lock, or a host lock on SQLite): it tells Optuna how each ended trial went, then asks for new
trials while fewer than `max_concurrent` run and the budget is not spent. It runs when a study
is created, after a worker finishes a trial, and from the reaper (which covers trials that
ended without a worker: aborted while waiting, given up on, or a worker that died after its
finish). A lost worker's trial is requeued like any job and continues the same Optuna trial.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import networks, tuning
from shared.db import reading, session_scope, utcnow
from shared.errors import Conflict, DomainError, InvalidInput, NotFound
from shared.models import Job, Status, Study, StudyStatus, User
from shared.schemas.jobs import Hyperparameters, JobCreate, StandardNetwork
from shared.schemas.studies import (
    BestPoint,
    Objective,
    StudyCreate,
    StudyRead,
    StudySummary,
    TrialRead,
)
from shared.services import datasets as datasets_service
from shared.services import dispatch, fleet, lifecycle
from shared.services import jobs as jobs_service
from shared.settings import Settings

log = logging.getLogger("digits.studies")

PRUNED = "trial.pruned"  # the metric a pruned trial's job records (value, step, epoch)
MAX_FAILED_START = 3  # this many failed trials before any succeeded end the study in error


# -- creating ---------------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None) -> InvalidInput:
    extra = {"parameter": param} if param else None
    return InvalidInput(message, code="invalid_search_space", extra=extra)


def _check_space(data: StudyCreate, channels: int, height: int, width: int) -> None:
    """Every value the space can give must make a valid job (422-like 400 before queueing)."""
    base = data.hyperparameters.model_dump(mode="json")
    for name, spec in data.search_space.items():
        samples = list(spec.choices) if spec.type == "categorical" else [spec.low, spec.high]
        if name == "network":
            for choice in samples:
                if not isinstance(choice, str) or choice not in networks.CATALOG:
                    raise _invalid(
                        f"network choices are standard network names; {choice!r} is not one",
                        name,
                    )
                if networks.network_task(choice) != "classification":
                    raise _invalid(
                        f"network {choice} is a {networks.network_task(choice)} network; "
                        "studies tune classification",
                        name,
                    )
                try:
                    networks.check_standard(choice, channels, height, width)
                except ValueError as exc:
                    raise _invalid(f"network {choice}: {exc}", name) from exc
            continue
        for value in samples:
            try:
                Hyperparameters.model_validate({**base, name: value})
            except ValidationError as exc:
                first = exc.errors()[0]
                raise _invalid(
                    f"{name}={value!r} is not a valid value: {first['msg']}", name
                ) from exc


def _check_classification(data: StudyCreate) -> None:
    """A study tunes a classifier: its network and the metrics it follows are
    classification's (the job schema also takes detection's and segmentation's)."""
    base = data.network
    if isinstance(base, StandardNetwork) and networks.network_task(base.name) != "classification":
        raise InvalidInput(
            f"{base.name} is a {networks.network_task(base.name)} network; studies tune "
            "classification networks",
            code="invalid_network",
        )
    allowed = networks.TASK_METRICS["classification"]
    hyper = data.hyperparameters
    named = [("hyperparameters.best_metric", hyper.best_metric)]
    if hyper.early_stopping is not None:
        named.append(("hyperparameters.early_stopping.metric", hyper.early_stopping.metric))
    for where, value in named:
        if value not in allowed:
            raise InvalidInput(
                f"{where} {value} is not a classification metric; use one of {', '.join(allowed)}",
                code="invalid_hyperparameters",
            )


def create_study(session: Session, data: StudyCreate, user: User, settings: Settings) -> Study:
    """Validate a study and record it; `top_up` (after the commit) queues its first trials."""
    dataset = datasets_service.get_classification_dataset(
        session, data.dataset_id, user, "a tuning study"
    )
    hyper = data.hyperparameters
    jobs_service.check_limits(hyper, 1, settings)
    datasets_service.check_quota(session, user, settings)
    height = width = hyper.crop_size or 0
    height, width = (height, width) if height else (dataset.image_height, dataset.image_width)
    _check_space(data, dataset.image_channels, height, width)
    _check_classification(data)
    config = data.model_dump(mode="json")
    if data.pruner.type != "none":
        if hyper.val_interval <= 0:
            raise InvalidInput(
                "pruning needs validations during training: set val_interval above 0 or use "
                'the pruner {"type": "none"}',
                code="invalid_pruner",
            )
        if data.pruner.type in ("asha", "hyperband") and data.pruner.min_epochs > hyper.epochs:
            raise InvalidInput(
                f"pruner min_epochs {data.pruner.min_epochs:g} is past the trials' "
                f"{hyper.epochs} epochs",
                code="invalid_pruner",
            )
    max_trials = data.max_trials
    if data.sampler.type == "grid":
        try:
            size = tuning.grid_size(config["search_space"])
        except ValueError as exc:
            raise _invalid(str(exc)) from exc
        max_trials = min(max_trials, size)
    # fixed now, so every process rebuilds the same sampler, and trials differ only by params
    config["sampler"]["seed"] = (
        data.sampler.seed if data.sampler.seed is not None else random.randrange(2**31)
    )
    if hyper.seed is None:
        config["hyperparameters"]["seed"] = random.randrange(2**31)
    config["max_trials"] = max_trials
    config["max_concurrent"] = data.max_concurrent or _live_trainers(session, settings)
    study_id = uuid.uuid4()
    study = Study(
        id=study_id,
        owner_id=user.id,
        dataset_id=dataset.id,
        name=data.name,
        group_name=data.group or data.name,
        config=config,
        status=StudyStatus.RUNNING,
        optuna_name=f"digits-{study_id}",
        trials_asked=0,
    )
    session.add(study)
    session.flush()
    return study


def _live_trainers(session: Session, settings: Settings) -> int:
    """Training workers heard from lately (at least 1): the default trials at once."""
    live = [
        w
        for w in fleet.list_workers(session)
        if w.kind in fleet.TRAIN_KINDS and fleet.is_alive(w, settings.worker_stale_after)
    ]
    return max(1, len(live))


# -- the scheduler ----------------------------------------------------------------------------


@dataclass
class TopUp:
    """What one pass did (for logs and tests)."""

    told: dict[int, str] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)
    status: str | None = None


def _host_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """On SQLite `SELECT ... FOR UPDATE` locks nothing: one top-up at a time on the host."""
    if settings.sqlalchemy_url.startswith("sqlite"):
        return tuning.host_lock(settings)
    return contextlib.nullcontext()


def _locked(session: Session, study_id: uuid.UUID) -> Study | None:
    """The study row, locked until the commit (PostgreSQL), so top-ups of it never overlap."""
    return session.scalar(
        select(Study)
        .where(Study.id == study_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def objective_value(job: Job, objective: dict[str, Any]) -> float | None:
    """The trial's value: the best or last of its objective series."""
    source = job.best if objective.get("use", "best") == "best" else job.last
    entry = (source or {}).get(objective["metric"])
    return None if entry is None else float(entry["value"])


def _tell_ended(ostudy: Any, study: Study, jobs: dict[int, Job], done: TopUp) -> None:
    """Tell Optuna how each ended trial went; asks whose job never landed fail."""
    from optuna.trial import TrialState

    for trial in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job = jobs.get(trial.number)
        if job is not None and not job.status.is_final:
            continue
        state, value = TrialState.FAIL, None
        if job is not None and job.status == Status.DONE:
            if PRUNED in (job.last or {}):
                state = TrialState.PRUNED
            else:
                value = objective_value(job, study.config["objective"])
                if value is not None:
                    state = TrialState.COMPLETE
        try:
            ostudy.tell(trial.number, value, state=state, skip_if_finished=True)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN value: the trial failed
            log.warning("study=%s trial %d: %s", study.id, trial.number, exc)
            ostudy.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            state = TrialState.FAIL
        done.told[trial.number] = state.name.lower()
        log.info(
            "study=%s trial %d (job %s) told %s%s",
            study.id,
            trial.number,
            job.id if job else "lost",
            state.name.lower(),
            f" {value:.4f}" if value is not None else "",
        )


def _no_more_trials(study: Study, jobs: dict[int, Job], now: datetime) -> str | None:
    """Why no trial may be asked any more, or None."""
    config = study.config
    if study.status != StudyStatus.RUNNING:
        return study.reason or study.status.value
    if study.trials_asked >= config["max_trials"]:
        return f"{study.trials_asked} trials (max_trials)"
    if config.get("timeout_s"):
        created = (
            study.created_at
            if study.created_at.tzinfo
            else study.created_at.replace(tzinfo=now.tzinfo)
        )
        if now - created >= timedelta(seconds=float(config["timeout_s"])):
            return f"the time budget of {config['timeout_s']:g} s (timeout_s)"
    if config.get("max_epochs_total"):
        used = sum(j.epoch for j in jobs.values())
        if used >= float(config["max_epochs_total"]):
            return f"{used:.1f} epochs trained (max_epochs_total)"
    failed = [j for j in jobs.values() if j.status in (Status.ERROR, Status.ABORTED)]
    if len(failed) >= MAX_FAILED_START and not any(j.status == Status.DONE for j in jobs.values()):
        last = max(failed, key=lambda j: j.trial_number or 0)
        study.status = StudyStatus.ERROR
        study.reason = f"the first {len(failed)} trials failed; the last: {last.error or 'aborted'}"
        return study.reason
    return None


def _queue_trial(
    session: Session,
    study: Study,
    number: int,
    params: dict[str, Any],
    owner: User,
    settings: Settings,
) -> Job:
    """The trial's job: the base request with the trial's parameters (a sweep's rules)."""
    config = study.config
    hyper = {**config["hyperparameters"], **{k: v for k, v in params.items() if k != "network"}}
    network = config["network"]
    if "network" in params:
        network = {"kind": "standard", "name": params["network"]}
    create = JobCreate.model_validate(
        {
            "dataset_id": config["dataset_id"],
            "name": f"{study.name} #{number}",
            "group": study.group_name,
            "network": network,
            "hyperparameters": hyper,
        }
    )
    (job,) = jobs_service.create_training_jobs(session, create, owner, settings)
    job.study_id = study.id
    job.trial_number = number
    session.flush()
    return job


def top_up(sessions: sessionmaker[Session], settings: Settings, study_id: uuid.UUID) -> TopUp:
    """Tell what ended, ask what fits; the new trials' jobs are sent after the commit."""
    from optuna.trial import TrialState

    done = TopUp()
    # the lock is held through the commit: the next top-up sees these trials' jobs
    with _host_lock(settings), session_scope(sessions) as session:
        study = _locked(session, study_id)
        if study is None:
            return done
        config = study.config
        ostudy = tuning.open_study(settings, study.optuna_name, config, number=study.trials_asked)
        jobs = {
            j.trial_number: j
            for j in session.scalars(select(Job).where(Job.study_id == study.id))
            if j.trial_number is not None
        }
        _tell_ended(ostudy, study, jobs, done)
        owner = session.get(User, study.owner_id) if study.owner_id else None
        space = tuning.distributions(config["search_space"])
        now = utcnow()
        while owner is not None:
            active = [j for j in jobs.values() if not j.status.is_final]
            if _no_more_trials(study, jobs, now) or len(active) >= config["max_concurrent"]:
                break
            ostudy.sampler = tuning.sampler(config, study.trials_asked)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sampled independently", experimental notes
                trial = ostudy.ask(space)
            study.trials_asked += 1
            try:
                with session.begin_nested():
                    job = _queue_trial(session, study, trial.number, trial.params, owner, settings)
            except DomainError as exc:
                # these parameters make no valid job (or the quota is spent): a failed trial
                log.warning("study=%s trial %d cannot run: %s", study.id, trial.number, exc)
                ostudy.tell(trial.number, state=TrialState.FAIL)
                done.told[trial.number] = "fail"
                if exc.status != 400:
                    study.status, study.reason = StudyStatus.ERROR, f"trial {trial.number}: {exc}"
                continue
            trial.set_user_attr("job_id", str(job.id))
            jobs[trial.number] = job
            done.asked.append(trial.number)
            log.info(
                "study=%s trial %d asked: job %s %s", study.id, trial.number, job.id, trial.params
            )
        active = [j for j in jobs.values() if not j.status.is_final]
        reason = _no_more_trials(study, jobs, now)
        if not active and (reason or owner is None) and study.finished_at is None:
            if study.status == StudyStatus.RUNNING:
                study.status = StudyStatus.DONE
                study.reason = reason or "its owner is gone"
            study.finished_at = now
            log.info("study=%s %s: %s", study.id, study.status.value, study.reason)
        done.status = study.status.value
    return done


def after_trial(sessions: sessionmaker[Session], settings: Settings, job_id: uuid.UUID) -> None:
    """A worker finished a job: if it was a trial, tell its study and ask for the next."""
    with reading(sessions) as session:
        study_id = session.scalar(select(Job.study_id).where(Job.id == job_id))
    if study_id is not None:
        top_up(sessions, settings, study_id)


def sweep(sessions: sessionmaker[Session], settings: Settings) -> int:
    """The reaper's pass over unfinished studies; how many it looked at."""
    with reading(sessions) as session:
        ids = list(session.scalars(select(Study.id).where(Study.finished_at.is_(None))))
    for study_id in ids:
        try:
            top_up(sessions, settings, study_id)
        except Exception as exc:  # one broken study must not stop the others, or the reaper
            log.warning("study=%s top-up failed: %s", study_id, str(exc).splitlines()[0])
    return len(ids)


# -- reading ----------------------------------------------------------------------------------


def get_study(session: Session, study_id: uuid.UUID, user: User) -> Study:
    """The study, or NotFound (also for another user's study)."""
    study = session.get(Study, study_id)
    if study is None or not datasets_service.visible(user, study.owner_id):
        raise NotFound(f"study {study_id} does not exist", code="study_not_found")
    return study


def list_studies(
    session: Session, user: User, *, page: int = 1, per_page: int = 25
) -> tuple[list[Study], int]:
    """A page of studies, newest first."""
    conditions = [] if user.is_admin else [Study.owner_id == user.id]
    total = session.scalar(select(func.count()).select_from(Study).where(*conditions)) or 0
    items = list(
        session.scalars(
            select(Study)
            .where(*conditions)
            .order_by(Study.created_at.desc(), Study.id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
    )
    return items, int(total)


def _jobs_of(session: Session, study_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Job]]:
    found: dict[uuid.UUID, list[Job]] = {i: [] for i in study_ids}
    if study_ids:
        for job in session.scalars(
            select(Job)
            .where(Job.study_id.in_(study_ids), Job.delete_requested.is_(False))
            .order_by(Job.trial_number)
        ):
            assert job.study_id is not None
            found[job.study_id].append(job)
    return found


def _params(job: Job, space: dict[str, Any]) -> dict[str, Any]:
    hyper = job.request.get("hyperparameters", {})
    params = {k: hyper.get(k) for k in space if k != "network"}
    if "network" in space:
        params["network"] = job.request.get("network", {}).get("name")
    return params


def _trial(job: Job, config: dict[str, Any], ended_reason: str | None) -> TrialRead:
    objective = config["objective"]
    pruned = (job.last or {}).get(PRUNED)
    if job.status in (Status.INITIALIZED, Status.WAITING):
        state = "waiting"
    elif job.status == Status.RUNNING:
        state = "running"
    elif job.status == Status.DONE and pruned is not None:
        state = "pruned"
    elif job.status == Status.DONE and objective_value(job, objective) is not None:
        state = "complete"
    else:
        state = "failed"
    value = objective_value(job, objective)
    if state == "pruned":
        last = (job.last or {}).get(objective["metric"])
        value = None if last is None else float(last["value"])
    return TrialRead(
        number=job.trial_number or 0,
        job_id=job.id,
        name=job.name,
        state=state,  # type: ignore[arg-type]
        status=job.status.value,
        params=_params(job, config["search_space"]),
        value=value,
        epochs=round(job.epoch, 3),
        pruned_epoch=None if pruned is None else float(pruned["epoch"]),
        reason=ended_reason if state in ("pruned", "failed") else None,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _better(direction: str, a: float, b: float) -> bool:
    return a > b if direction == "maximize" else a < b


def _summary_fields(study: Study, trials: list[TrialRead]) -> dict[str, Any]:
    direction = tuning.direction(study.config)
    counts = dict.fromkeys(("waiting", "running", "complete", "pruned", "failed"), 0)
    best: TrialRead | None = None
    for trial in trials:
        counts[trial.state] += 1
        if (
            trial.state == "complete"
            and trial.value is not None
            and (best is None or best.value is None or _better(direction, trial.value, best.value))
        ):
            best = trial
    return {
        "id": study.id,
        "name": study.name,
        "group": study.group_name,
        "status": study.status.value,
        "reason": study.reason,
        "dataset_id": study.dataset_id,
        "objective": Objective.model_validate(study.config["objective"]),
        "max_trials": study.config["max_trials"],
        "max_concurrent": study.config["max_concurrent"],
        "trials_asked": study.trials_asked,
        "counts": counts,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "created_at": study.created_at,
        "finished_at": study.finished_at,
        "_best": best,
    }


def _reasons(session: Session, jobs: list[Job]) -> dict[uuid.UUID, str | None]:
    histories = lifecycle.histories(session, [j.id for j in jobs if j.status.is_final])
    return {
        job_id: (changes[-1].reason if changes else None) for job_id, changes in histories.items()
    }


def summaries(session: Session, studies: list[Study]) -> list[StudySummary]:
    """List entries, the trials of all of them in one query."""
    jobs = _jobs_of(session, [s.id for s in studies])
    items = []
    for study in studies:
        trials = [_trial(j, study.config, None) for j in jobs[study.id]]
        fields = _summary_fields(study, trials)
        fields.pop("_best")
        items.append(StudySummary(**fields))
    return items


def importances(settings: Settings, study: Study, complete: int) -> dict[str, float]:
    """Optuna's parameter importances, once a few trials have completed (else empty)."""
    if complete < 3 or len(study.config["search_space"]) < 2:
        return {}
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ostudy = tuning.open_study(settings, study.optuna_name, study.config)
            found = optuna.importance.get_param_importances(ostudy)
        return {k: round(float(v), 4) for k, v in found.items()}
    except Exception as exc:  # importances are a courtesy; the study reads without them
        log.info("study=%s importances unavailable: %s", study.id, exc)
        return {}


def read_study(session: Session, settings: Settings, study: Study) -> StudyRead:
    """The full view: trials, best, best-so-far history, importances, epochs."""
    jobs = _jobs_of(session, [study.id])[study.id]
    reasons = _reasons(session, jobs)
    trials = [_trial(j, study.config, reasons.get(j.id)) for j in jobs]
    fields = _summary_fields(study, trials)
    best = fields.pop("_best")
    direction = tuning.direction(study.config)
    history: list[BestPoint] = []
    running_best: float | None = None
    for trial in sorted(
        (t for t in trials if t.state in ("complete", "pruned")),
        key=lambda t: (t.finished_at or utcnow(), t.number),
    ):
        if (
            trial.state == "complete"
            and trial.value is not None
            and (running_best is None or _better(direction, trial.value, running_best))
        ):
            running_best = trial.value
        history.append(
            BestPoint(
                number=trial.number,
                value=trial.value,
                best=running_best,
                finished_at=trial.finished_at,
            )
        )
    return StudyRead(
        **fields,
        config=study.config,
        trials=trials,
        best=best,
        history=history,
        importances=importances(settings, study, fields["counts"]["complete"]),
        epochs_used=round(sum(j.epoch for j in jobs), 3),
        epochs_unpruned=float(
            sum(j.request.get("hyperparameters", {}).get("epochs", 0) for j in jobs)
        ),
    )


# -- stopping ---------------------------------------------------------------------------------


def abort_study(session: Session, study_id: uuid.UUID, user: User) -> Study:
    """Ask nothing more; waiting trials end at once, running ones stop at their next step."""
    study = get_study(session, study_id, user)
    if study.status.is_final:
        raise Conflict(f"study {study_id} is already {study.status.value}", code="study_finished")
    study.status, study.reason = StudyStatus.ABORTED, "aborted by user"
    for job in _jobs_of(session, [study.id])[study.id]:
        if job.status.is_final:
            continue
        outcome = lifecycle.request_abort(session, Job, job.id)
        if outcome.stopped_now:
            dispatch.retract(session, [job])
    session.flush()
    return study


def delete_study(session: Session, study_id: uuid.UUID, user: User) -> list[uuid.UUID]:
    """Delete a study with its trials' jobs; returns the jobs gone now (their folders to
    remove after the commit). Running trials stop and their workers remove them."""
    study = get_study(session, study_id, user)
    gone: list[uuid.UUID] = []
    for job in session.scalars(select(Job).where(Job.study_id == study.id)).all():
        job_id = job.id
        if dispatch.delete_work(session, Job, job):
            gone.append(job_id)
    session.execute(delete(Study).where(Study.id == study.id))
    session.flush()
    return gone


def forget_optuna(settings: Settings, name: str) -> None:
    """Remove a deleted study's Optuna side (after our commit: ours is the source of truth)."""
    try:
        tuning.delete_study(settings, name)
    except Exception as exc:  # an orphaned Optuna study is harmless; ours is gone
        log.warning("could not delete Optuna study %s: %s", name, exc)
