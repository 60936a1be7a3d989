"""Runs one training job in a fresh child process, so the worker process never touches CUDA
and every job gets its device memory back when it ends.

A job whose child dies is requeued and resumes from its last checkpoint (within the restart
budget); a graceful worker shutdown stops the child at a step boundary, saves, and gives the
job back to the queue without spending an attempt.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from shared import artifacts, storage
from shared.db import make_engine, make_session_factory, session_scope
from shared.logging import configure_logging
from shared.models import Checkpoint, Job, MetricPoint, Status
from shared.schemas.jobs import Hyperparameters
from shared.schemas.work import CheckpointRef, TrainingOutcome, TrainingPlan
from shared.settings import Settings
from worker import context, lifecycle

log = logging.getLogger("digits.worker.runner")

_PRELOAD = ["torch", "torchvision", "worker.runner", "worker.training.engine", "worker.reporter"]
_context_cache: list[Any] = []
_current_child: list[Any] = []
_shutting_down = threading.Event()

SHUTDOWN_REASON = "requeued: its worker shut down (the attempt is not counted)"
# seconds a training child has to heed an abort (it checks every ~0.5 s) before it is killed
ABORT_GRACE = 10.0


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


def request_shutdown() -> None:
    """A graceful shutdown: ask the running child to save and stop at its next step."""
    _shutting_down.set()
    for child in list(_current_child):
        if child.is_alive() and child.pid:
            log.info("shutdown: asking the training child %s to checkpoint and stop", child.pid)
            os.kill(child.pid, signal.SIGTERM)


def train_job(running: lifecycle.Running) -> lifecycle.Outcome:
    """Train a claimed job in child processes; the worker's lease covers the whole run."""
    ctx = context.get()
    job_id = running.id
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise lifecycle.Stopped
        try:
            plan = make_plan(session, ctx.settings, job)
        except ValueError as exc:
            return lifecycle.Outcome(Status.ERROR, str(exc))
        dataset_id = job.dataset_id
    store = artifacts.get_store(ctx.settings)
    if not store.local:
        # this host's cached copy (downloaded once per host), outside the database session
        assert dataset_id is not None
        try:
            folder = artifacts.local_dataset(ctx.settings, dataset_id)
        except FileNotFoundError:
            return lifecycle.Outcome(Status.ERROR, "the dataset's files are gone from storage")
        except artifacts.StorageUnavailable as exc:
            return _after_storage_failure(running.attempt, exc)
        plan = plan.model_copy(update={"dataset_dir": str(folder)})
    if plan.world_size > ctx.devices:
        return lifecycle.Outcome(
            Status.ERROR,
            f"the job asks for {plan.world_size} devices; worker {ctx.name} has "
            f"{ctx.devices} (start one with `digits worker --gpus 0,1,...`)",
        )
    log.info(
        "job=%s attempt %d trains on %s (device %s)%s",
        job_id,
        running.attempt,
        ctx.name,
        ctx.device,
        " resuming" if plan.resume_candidates else "",
    )
    world = plan.world_size
    port = _free_port() if world > 1 else 0
    receiver, sender = _mp_context().Pipe(duplex=False)
    children = [
        _mp_context().Process(
            target=child_main,
            args=(
                ctx.settings.model_dump(mode="json"),
                plan.model_dump(mode="json"),
                ctx.device,
                ctx.name,
                os.getpid(),
                {"rank": rank, "world_size": world, "port": port} if world > 1 else None,
                sender if rank == 0 else None,
            ),
            name=f"train-{job_id}-{rank}",
            daemon=False,
        )
        for rank in range(world)
    ]
    for child in children:
        child.start()
        _current_child.append(child)
    sender.close()
    stopped: str | None = "lost"
    try:
        stopped = _wait(children, running, ctx.settings.max_job_seconds)
    finally:
        _current_child.clear()
        # with a bucket, everything is uploaded and this folder was scratch; unless the lease
        # was lost, when another worker on this host may be using it already
        if not store.local and stopped != "lost":
            storage.remove_tree(Path(plan.out_dir))
    outcome = None
    if receiver.poll():
        try:
            outcome = TrainingOutcome.model_validate(receiver.recv())
        except (EOFError, OSError, ValueError):
            outcome = None
    receiver.close()
    if stopped == "lost":
        raise lifecycle.Stopped
    if stopped == "time":
        return lifecycle.Outcome(
            Status.ERROR,
            f"stopped: it ran past the limit of {ctx.settings.max_job_seconds} s "
            "(DIGITS_MAX_JOB_SECONDS)",
        )
    if stopped == "abort":
        return lifecycle.Outcome(Status.ABORTED, "aborted by user")
    if outcome is None:
        child = next((c for c in children if c.exitcode != 0), children[0])
        return _after_crash(running.attempt, child.exitcode)
    if outcome.status == "shutdown":
        return lifecycle.Outcome(Status.WAITING, SHUTDOWN_REASON, count_attempt=False)
    if outcome.status == "done":
        log.info(
            "job=%s done after %d steps, %.1f images/s",
            job_id,
            outcome.steps,
            outcome.images_per_second,
        )
    return lifecycle.Outcome(Status(outcome.status), outcome.reason)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(children: list[Any], running: lifecycle.Running, max_seconds: float) -> str | None:
    """Wait for every rank. Stop them all when one dies (None), the lease is lost ("lost"),
    an abort is not heeded within ABORT_GRACE seconds ("abort"), or the job runs past its
    time limit ("time")."""
    started = time.monotonic()
    abort_seen: float | None = None
    while True:
        alive = [c for c in children if c.exitcode is None]
        if not alive:
            return None
        now = time.monotonic()
        if running.lease.aborted.is_set() and abort_seen is None:
            abort_seen = now
        reason: str | None = None
        if running.lease.lost.is_set():
            reason = "lost"
        elif abort_seen is not None and now - abort_seen > ABORT_GRACE:
            reason = "abort"
        elif now - started > max_seconds:
            reason = "time"
        elif not any(c.exitcode not in (None, 0) for c in children):
            alive[0].join(timeout=0.2)
            continue
        for c in alive:
            c.kill()
        for c in alive:
            c.join()
        return reason


def _after_crash(attempt: int, exitcode: int | None) -> lifecycle.Outcome:
    """The child died: requeue within the restart budget, else end in error."""
    ctx = context.get()
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"code {exitcode}"
    if attempt >= ctx.settings.max_attempts:
        return lifecycle.Outcome(
            Status.ERROR, f"gave up after {attempt} attempts: the training process died ({how})"
        )
    return lifecycle.Outcome(
        Status.WAITING, f"requeued: the training process died ({how}) on {ctx.name}"
    )


def _after_storage_failure(attempt: int, exc: Exception) -> lifecycle.Outcome:
    """The storage did not answer: requeue within the restart budget, else end in error."""
    ctx = context.get()
    if attempt >= ctx.settings.max_attempts:
        return lifecycle.Outcome(Status.ERROR, f"gave up after {attempt} attempts: {exc}")
    return lifecycle.Outcome(Status.WAITING, f"requeued: {exc}")


def _head_free(network: dict[str, Any]) -> dict[str, Any]:
    """A network whose last linear layer is sized by the new dataset (a fresh head)."""
    network = dict(network)
    layers = network.get("layers")
    if network.get("kind") == "custom" and layers and layers[-1].get("type") == "linear":
        network["layers"] = [*layers[:-1], {**layers[-1], "out_features": None}]
    return network


def make_plan(session: Any, settings: Settings, job: Job) -> TrainingPlan:
    """Everything the child needs, resolved while we hold the database session."""
    request = job.request
    network = dict(request["network"])
    init_checkpoint = None
    own = None
    if network["kind"] == "pretrained":
        from shared.models import PretrainedModel

        model = session.get(PretrainedModel, uuid.UUID(network["model_id"]))
        store = artifacts.get_store(settings)
        init = store.ref(f"{artifacts.pretrained_prefix(model.id)}/init.pt") if model else None
        if model is None or init is None or not store.exists(init):
            raise ValueError("the pretrained model is gone")
        init_checkpoint = init
        network = _head_free(model.network)
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
        if source is None or row is None or not artifacts.get_store(settings).exists(row.path):
            raise ValueError(f"the previous job's checkpoint {name!r} is gone")
        init_checkpoint = row.path
        network = _head_free(source.request["network"])
    elif network["kind"] == "standard" and (
        network.get("backbone_job_id") or network.get("backbone_model_id")
    ):
        # a job with checkpoints of its own resumes from them: the backbone may be gone
        own = session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id).limit(1))
        if own is None and network.get("backbone_model_id"):
            store = artifacts.get_store(settings)
            ref = store.ref(
                f"{artifacts.pretrained_prefix(uuid.UUID(network['backbone_model_id']))}/init.pt"
            )
            if not store.exists(ref):
                raise ValueError("the backbone's pretrained model is gone")
            init_checkpoint = ref
    if network["kind"] == "standard" and network.get("backbone_job_id") and own is None:
        from shared.services.jobs import backbone_checkpoint

        row = backbone_checkpoint(session, uuid.UUID(network["backbone_job_id"]))
        if row is None or not artifacts.get_store(settings).exists(row.path):
            raise ValueError("the backbone job's checkpoint is gone")
        init_checkpoint = row.path
    # resume candidates: recorded checkpoints, newest first. A file written just before a
    # crash, whose row (and metrics) never reached the database, is not among them.
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step.desc())
    ).all()
    assert job.dataset_id is not None
    return TrainingPlan(
        job_id=str(job.id),
        dataset_dir=str(storage.dataset_dir(settings, job.dataset_id)),
        network=network,
        hyper=Hyperparameters.model_validate(request["hyperparameters"]),
        out_dir=str(storage.job_dir(settings, job.id)),
        init_checkpoint=init_checkpoint,
        resume_candidates=[
            CheckpointRef(path=r.path, step=r.step)
            for r in rows
            if artifacts.get_store(settings).exists(r.path)
        ],
        world_size=int(request.get("gpus") or 1),
        keep_snapshots=settings.keep_snapshots,
    )


class _AbortedBeforeStart(Exception):
    """The job was aborted before training began."""


def _watch_parent(worker_pid: int) -> None:
    """Die with the worker: an orphaned child must not keep training (and the GPU) alone.

    The forkserver that forked us exits when the worker dies, so our parent changes; a killed
    worker not yet reaped is a zombie, which also counts as gone.
    """
    import psutil

    parent = os.getppid()
    while True:
        time.sleep(0.5)
        try:
            gone = os.getppid() != parent or (
                psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            gone = True
        if gone:
            log.error("the worker (pid %d) is gone; the training process stops", worker_pid)
            os._exit(3)


def _pick_resume(
    candidates: list[CheckpointRef], store: artifacts.ArtifactStore
) -> tuple[Path | None, int]:
    """The newest recorded checkpoint whose file holds the step its row says (from the
    storage: after a lost host, another host resumes from what the lost one uploaded)."""
    from worker.training import checkpoint as ckpt

    for ref in candidates:
        try:
            path = store.fetch(ref.path)
            if int(ckpt.load(path)["step"]) == ref.step:
                return path, ref.step
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("cannot resume from %s: %s", Path(ref.path).name, exc)
    return None, -1


def _local(store: artifacts.ArtifactStore, ref: str | None) -> Path | None:
    """A local file with the checkpoint to start from; a missing one stays a path that the
    engine reports as unreadable."""
    if ref is None:
        return None
    try:
        return store.fetch(ref)
    except FileNotFoundError:
        return Path(ref)


def _restore_log(store: artifacts.ArtifactStore, key: str, path: Path) -> None:
    """A job resumed on another host continues the log its earlier attempts uploaded."""
    try:
        stored = store.stat(key).size
    except FileNotFoundError:
        return
    if not path.exists() or path.stat().st_size < stored:
        storage.atomic_write(path, store.get_bytes(key))


def _forget_after(sessions: Any, job_id: uuid.UUID, step: int) -> None:
    """Before resuming from `step`, drop what the lost attempt recorded after it (the LR
    range test's curve stays: its steps are its own, and a resumed job does not rerun it)."""
    kept = [MetricPoint.name.not_like("lr\\_find.%", escape="\\")] if step >= 0 else []
    with session_scope(sessions) as session:
        session.execute(
            delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step, *kept)
        )
        session.execute(
            delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step > step)
        )


def child_main(
    settings_json: dict[str, Any],
    plan_json: dict[str, Any],
    device: str | None,
    worker_name: str | None = None,
    worker_pid: int | None = None,
    dist: dict[str, int] | None = None,
    outcome_pipe: Any = None,
) -> None:
    """Entry point of the training child: train, report metrics, send back how it ended.

    The worker (our parent) owns the job's state: it holds the lease and records the outcome
    we send over `outcome_pipe`. With `dist`, this is one rank of a DistributedDataParallel
    job: rank 0 reports, the others only train.
    """
    plan = TrainingPlan.model_validate(plan_json)
    if dist is not None and dist["rank"] != 0:
        _follower(settings_json, plan, device, worker_pid, dist)
        return
    if dist is not None:
        _init_distributed(device, dist)
    settings = Settings.model_validate(settings_json)
    job_id = uuid.UUID(plan.job_id)
    if worker_pid:
        threading.Thread(target=_watch_parent, args=(worker_pid,), daemon=True).start()
    out_dir = Path(plan.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.log_level)
    store = artifacts.get_store(settings)
    log_key = f"{artifacts.job_prefix(job_id)}/job.log"
    if not store.local:
        _restore_log(store, log_key, out_dir / "job.log")
    handler = logging.FileHandler(out_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)

    engine = make_engine(settings)
    sessions = make_session_factory(engine)

    from worker.reporter import DbReporter, LogForwarder
    from worker.telemetry import Sampler
    from worker.training.engine import Diverged, TrainingError, TrainSpec, train

    resume, step = _pick_resume(plan.resume_candidates, store)
    if resume is not None:
        _forget_after(sessions, job_id, step)
        log.info("job=%s resuming from %s at step %d", job_id, resume.name, step)
    elif plan.resume_candidates:
        log.warning("job=%s no usable checkpoint to resume from; starting over", job_id)
        _forget_after(sessions, job_id, -1)

    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        best, last = (dict(job.best or {}), dict(job.last or {})) if job else ({}, {})
    reporter = DbReporter(
        sessions,
        job_id,
        best=best,
        last=last,
        worker=worker_name,
        keep=plan.keep_snapshots,
        store=None if store.local else store,
        log_file=out_dir / "job.log",
    )
    # after the file handler, so a line is on disk (and counted in the offset) when it is sent
    forwarder = LogForwarder(reporter, handler)
    logging.getLogger().addHandler(forwarder)
    stop_for_shutdown = threading.Event()

    def on_sigterm(_signum: int, _frame: object) -> None:
        stop_for_shutdown.set()
        reporter.request_stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which stops us
    reporter.flush()  # reads the abort flag: a job aborted while its child started stops here
    reporter.start()
    from worker import trials

    on_validation = trials.hook(sessions, settings, job_id, reporter)  # a study's trial
    sampler = Sampler(reporter.telemetry, interval=settings.telemetry_interval).start()
    spec = TrainSpec(
        dataset_dir=Path(plan.dataset_dir),
        network=plan.network,
        hyper=plan.hyper,
        out_dir=out_dir,
        device=device,
        init_checkpoint=_local(store, plan.init_checkpoint),
        resume_checkpoint=resume,
        rank=0,
        world_size=plan.world_size,
        on_validation=on_validation,
    )
    outcome = TrainingOutcome(status="done")
    try:
        if reporter.should_stop():
            raise _AbortedBeforeStart
        result = train(spec, reporter)
        if result.outcome == "stopped":
            outcome = TrainingOutcome(status="aborted", reason="aborted by user")
        else:
            if result.outcome == "early_stopped":
                reporter.log(f"early stopping at epoch {result.epoch:.2f}")
            outcome = TrainingOutcome(  # pruned: done, and the reason says where and why
                status="done",
                reason=result.reason,
                steps=result.steps,
                images_per_second=result.images_per_second,
            )
        log.info(
            "job=%s %s after %d steps, %.1f images/s",
            job_id,
            result.outcome,
            result.steps,
            result.images_per_second,
        )
    except _AbortedBeforeStart:
        outcome = TrainingOutcome(status="aborted", reason="aborted by user")
    except Diverged as exc:
        if on_validation is None:
            outcome = TrainingOutcome(status="error", reason=str(exc))
        else:  # a study's trial: a diverged trial is a bad one, pruned
            outcome = TrainingOutcome(
                status="done", reason=trials.diverged(reporter, exc.step, exc.epoch, str(exc))
            )
        log.error("job=%s training diverged: %s", job_id, exc)
    except TrainingError as exc:
        outcome = TrainingOutcome(status="error", reason=str(exc))
        log.error("job=%s training failed: %s", job_id, exc)
    except Exception as exc:
        outcome = TrainingOutcome(status="error", reason=f"internal error: {type(exc).__name__}")
        log.exception("job=%s training crashed", job_id)
    finally:
        sampler.stop()
        reporter.close()
    if stop_for_shutdown.is_set() and outcome.status == "aborted":
        outcome = TrainingOutcome(status="shutdown")
    if outcome_pipe is not None:
        outcome_pipe.send(outcome.model_dump(mode="json"))
        outcome_pipe.close()
    engine.dispose()
    logging.getLogger().removeHandler(forwarder)
    logging.getLogger().removeHandler(handler)
    handler.close()


def _init_distributed(device: str | None, dist: dict[str, int]) -> None:
    """Join the job's process group (NCCL on GPUs, gloo on CPUs)."""
    import torch
    import torch.distributed as tdist

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(dist["rank"])
    tdist.init_process_group(
        backend="nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{dist['port']}",
        rank=dist["rank"],
        world_size=dist["world_size"],
    )


class _Silent:
    """The reporter of ranks other than 0: rank 0 speaks for the job."""

    def metrics(self, *_args: object) -> None:
        return None

    def progress(self, *_args: object) -> None:
        return None

    def checkpoint_saved(self, *_args: object) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def log(self, *_args: object) -> None:
        return None


def _follower(
    settings_json: dict[str, Any],
    plan: TrainingPlan,
    device: str | None,
    worker_pid: int | None,
    dist: dict[str, int],
) -> None:
    """A rank other than 0 of a distributed job: train in step with rank 0, report nothing."""
    settings = Settings.model_validate(settings_json)
    configure_logging(settings.log_level)
    if worker_pid:
        threading.Thread(target=_watch_parent, args=(worker_pid,), daemon=True).start()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0 decides when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_distributed(device, dist)
    from worker.training.engine import TrainSpec, train

    store = artifacts.get_store(settings)
    resume, _step = _pick_resume(plan.resume_candidates, store)
    spec = TrainSpec(
        dataset_dir=Path(plan.dataset_dir),
        network=plan.network,
        hyper=plan.hyper,
        out_dir=Path(plan.out_dir),
        device=f"cuda:{dist['rank']}" if device == "cuda" else device,
        init_checkpoint=_local(store, plan.init_checkpoint),
        resume_checkpoint=resume,
        rank=dist["rank"],
        world_size=dist["world_size"],
    )
    train(spec, _Silent())
