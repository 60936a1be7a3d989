"""shared/services in process, on the real PostgreSQL, each test rolled back: every allowed and
refused move, the guards of a worker's attempt, each reaper sweep with an injected clock, each
waiting reason, sweeps and clone overrides."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.errors import InvalidTransition, LimitExceeded
from shared.models import Dataset, Job, JobKind, Status, StatusChange, User, Worker
from shared.queue import TRAIN
from shared.schemas.jobs import JobClone, JobCreate
from shared.services import dispatch, fleet, lifecycle
from shared.services import jobs as jobs_service
from shared.settings import Settings

ALL = list(Status)


@pytest.fixture
def user(session: Session) -> User:
    row = User(name=f"u-{uuid.uuid4().hex[:10]}")
    session.add(row)
    session.flush()
    return row


def _job(session: Session, user: User, **fields: object) -> Job:
    job = Job(kind=JobKind.TRAIN, owner_id=user.id, name="j", request={}, **fields)
    lifecycle.create(session, [job])
    return job


def _status(session: Session, job: Job) -> Status:
    return session.scalar(select(Job.status).where(Job.id == job.id))  # type: ignore[return-value]


def _at(status: Status, session: Session, user: User) -> Job:
    """A job brought to `status` through allowed moves."""
    if status == Status.INITIALIZED:  # inserted, not yet queued
        job = Job(kind=JobKind.TRAIN, owner_id=user.id, name="j", request={})
        session.add(job)
        lifecycle.record_created(session, job)
        session.flush()
        return job
    job = _job(session, user)
    path = {
        Status.INITIALIZED: [],
        Status.WAITING: [Status.WAITING],
        Status.RUNNING: [Status.WAITING, Status.RUNNING],
        Status.DONE: [Status.WAITING, Status.RUNNING, Status.DONE],
        Status.ERROR: [Status.WAITING, Status.ERROR],
        Status.ABORTED: [Status.WAITING, Status.ABORTED],
    }[status]
    if status != Status.INITIALIZED:
        # create() queued it already
        path = path[1:]
    current = Status.WAITING
    for step in path:
        assert lifecycle.move(session, Job, job.id, step, from_=current, worker="w")
        current = step
    assert _status(session, job) == status
    return job


@pytest.mark.parametrize(("start", "to"), list(itertools.product(ALL, ALL)))
def test_every_move_is_allowed_or_refused_by_the_table(
    session: Session, user: User, start: Status, to: Status
) -> None:
    job = _at(start, session, user)
    before = len(lifecycle.history(session, job.id))
    if lifecycle.allowed(start, to):
        assert lifecycle.move(session, Job, job.id, to, from_=start, worker="w") == [job.id]
        changes = lifecycle.history(session, job.id)
        assert len(changes) == before + 1
        assert (changes[-1].from_status, changes[-1].to_status) == (start, to)
        assert _status(session, job) == to
    else:
        with pytest.raises(InvalidTransition):
            lifecycle.move(session, Job, job.id, to, from_=start)
        assert _status(session, job) == start
        assert len(lifecycle.history(session, job.id)) == before


def test_a_move_from_a_state_the_row_is_not_in_changes_nothing(
    session: Session, user: User
) -> None:
    job = _at(Status.RUNNING, session, user)
    assert lifecycle.move(session, Job, job.id, Status.ABORTED, from_=Status.WAITING) == []
    assert _status(session, job) == Status.RUNNING


def test_a_worker_whose_lease_was_lost_cannot_renew_or_finish(session: Session, user: User) -> None:
    t0 = utcnow()
    job = _job(session, user)
    assert lifecycle.claim(session, Job, job.id, "worker-a", now=t0) is not None
    settings = Settings(lease_timeout=10, max_attempts=3)
    sweep = dispatch.reap(session, settings, now=t0 + timedelta(seconds=11))
    assert sweep.requeued == [job.id]
    claimed = lifecycle.claim(session, Job, job.id, "worker-b", now=t0 + timedelta(seconds=12))
    assert claimed is not None
    assert claimed.attempts == 2
    assert not lifecycle.renew(session, Job, job.id, "worker-a", attempt=1).alive
    assert not lifecycle.finish(session, Job, job.id, Status.DONE, worker="worker-a", attempt=1)
    assert not lifecycle.requeue(
        session, Job, job.id, "x", count_attempt=False, worker="worker-a", attempt=1
    )
    assert lifecycle.renew(session, Job, job.id, "worker-b", attempt=2).alive
    assert lifecycle.finish(session, Job, job.id, Status.DONE, worker="worker-b", attempt=2)
    assert [c.to_status for c in lifecycle.history(session, job.id)] == [
        Status.INITIALIZED,
        Status.WAITING,
        Status.RUNNING,
        Status.WAITING,
        Status.RUNNING,
        Status.DONE,
    ]


def test_a_graceful_requeue_gives_its_attempt_back(session: Session, user: User) -> None:
    job = _job(session, user)
    row = lifecycle.claim(session, Job, job.id, "w")
    assert row is not None
    assert row.attempts == 1
    assert lifecycle.requeue(
        session, Job, job.id, "shutdown", count_attempt=False, worker="w", attempt=1
    )
    session.refresh(job)
    assert (job.status, job.attempts, job.worker) == (Status.WAITING, 0, None)


class TestReaper:
    settings = Settings(lease_timeout=10, max_attempts=2, resend_after=15, worker_stale_after=30)

    def test_a_lapsed_lease_is_requeued_and_sent_again(self, session: Session, user: User) -> None:
        t0 = utcnow()
        job = _job(session, user)
        lifecycle.claim(session, Job, job.id, "w", now=t0)
        assert dispatch.reap(session, self.settings, now=t0 + timedelta(seconds=9)).requeued == []
        sweep = dispatch.reap(session, self.settings, now=t0 + timedelta(seconds=11))
        assert sweep.requeued == [job.id]
        assert _status(session, job) == Status.WAITING
        assert [m.id for m in dispatch._outbox(session).sends] == [job.id]
        reason = lifecycle.history(session, job.id)[-1].reason
        assert reason is not None
        assert "stopped answering" in reason

    def test_a_renewal_that_lands_first_keeps_the_work(self, session: Session, user: User) -> None:
        t0 = utcnow()
        job = _job(session, user)
        lifecycle.claim(session, Job, job.id, "w", now=t0)
        lifecycle.renew(session, Job, job.id, "w", attempt=1, now=t0 + timedelta(seconds=9))
        sweep = dispatch.reap(session, self.settings, now=t0 + timedelta(seconds=11))
        assert sweep.requeued == []
        assert _status(session, job) == Status.RUNNING

    def test_past_the_restart_budget_it_gives_up(self, session: Session, user: User) -> None:
        t0 = utcnow()
        job = _job(session, user)
        for attempt in (1, 2):
            now = t0 + timedelta(seconds=100 * attempt)
            lifecycle.claim(session, Job, job.id, f"w{attempt}", now=now)
            sweep = dispatch.reap(session, self.settings, now=now + timedelta(seconds=11))
        assert sweep.gave_up == [job.id]
        session.refresh(job)
        assert job.status == Status.ERROR
        assert job.error is not None
        assert job.error.startswith("gave up after 2 attempts")

    def test_an_import_lease_is_reaped_the_same_way(self, session: Session, user: User) -> None:
        t0 = utcnow()
        ds = Dataset(name="d", owner_id=user.id, image_width=8, image_height=8, image_channels=1)
        lifecycle.create(session, [ds])
        lifecycle.claim(session, Dataset, ds.id, "cpu", now=t0)
        sweep = dispatch.reap(session, self.settings, now=t0 + timedelta(seconds=11))
        assert sweep.requeued == [ds.id]
        assert session.scalar(select(Dataset.status).where(Dataset.id == ds.id)) == Status.WAITING

    def test_work_never_sent_is_sent(self, session: Session, user: User) -> None:
        job = _job(session, user)  # waiting, enqueued_at None: its sender died
        later = utcnow() + timedelta(seconds=5)
        sweep = dispatch.reap(session, self.settings, now=later)
        assert job.id in sweep.sent
        message = next(m for m in dispatch._outbox(session).sends if m.id == job.id)
        assert message.task == TRAIN

    def test_lost_messages_are_sent_again_only_as_many_as_idle_workers(
        self, session: Session, user: User
    ) -> None:
        now = utcnow()
        old = now - timedelta(seconds=60)
        jobs = [_job(session, user) for _ in range(5)]
        for job in jobs:  # sent a minute ago, never picked up: the broker lost them
            job.enqueued_at = old
        for name in ("idle-1", "idle-2"):
            session.add(
                Worker(
                    name=f"{name}-{uuid.uuid4().hex[:6]}",
                    hostname="h",
                    pid=1,
                    kind="cpu-train",
                    queues=["train"],
                    heartbeat_at=now,
                    idle_since=old,
                )
            )
        session.flush()
        sweep = dispatch.reap(session, self.settings, now=now)
        assert sorted(sweep.sent) == sorted(j.id for j in jobs[:2])

    def test_deleted_work_that_stopped_is_purged(self, session: Session, user: User) -> None:
        job = _at(Status.ABORTED, session, user)
        job.delete_requested = True
        session.flush()
        sweep = dispatch.reap(session, self.settings)
        assert sweep.purged == [("job", job.id)]
        session.expunge(job)
        assert session.get(Job, job.id) is None
        assert not lifecycle.history(session, job.id)


def test_each_waiting_reason(session: Session, user: User) -> None:
    now = utcnow()
    for row in session.scalars(select(Worker)):
        session.delete(row)
    session.flush()
    no_worker = _job(session, user)
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert "no live training worker" in entries[no_worker.id].reason
    missing = _job(session, user, requested_worker="GPU-nowhere")
    session.add(
        Worker(name="t1", hostname="h", pid=1, kind="gpu", heartbeat_at=now, queues=["train"])
    )
    session.flush()
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert entries[no_worker.id].reason == "starting on t1"
    assert "'GPU-nowhere' (not registered)" in entries[missing.id].reason
    third = _job(session, user)
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert entries[third.id].reason == "all 1 matching workers are busy"
    stale = Worker(
        name="t2",
        hostname="h",
        pid=1,
        kind="gpu",
        heartbeat_at=now - timedelta(seconds=99),
        queues=["train"],
    )
    session.add(stale)
    pinned = _job(session, user, requested_worker="t2")
    session.flush()
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert "(stale or stopped)" in entries[pinned.id].reason
    # model work waits for cpu workers, not training ones, and counts its own line
    evaluation = Job(kind=JobKind.EVALUATE, owner_id=user.id, name="e", request={})
    lifecycle.create(session, [evaluation])
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert entries[evaluation.id].reason.startswith("no live cpu worker")
    assert entries[evaluation.id].position == 1
    session.add(
        Worker(name="c1", hostname="h", pid=1, kind="cpu", heartbeat_at=now, queues=["cpu"])
    )
    session.flush()
    entries = {e.job.id: e for e in fleet.queue(session, 30)}
    assert entries[evaluation.id].reason == "starting on c1"


def _dataset(session: Session, user: User) -> Dataset:
    ds = Dataset(
        name="d",
        owner_id=user.id,
        image_width=28,
        image_height=28,
        image_channels=1,
        classes=[str(i) for i in range(10)],
        counts={"train": [10] * 10, "val": [2] * 10},
    )
    lifecycle.create(session, [ds])
    lifecycle.claim(session, Dataset, ds.id, "cpu")
    lifecycle.finish(session, Dataset, ds.id, Status.DONE, worker="cpu", attempt=1)
    session.refresh(ds)
    return ds


def test_a_sweep_makes_one_job_per_combination_in_one_group(session: Session, user: User) -> None:
    ds = _dataset(session, user)
    body = JobCreate.model_validate(
        {
            "dataset_id": ds.id,
            "name": "s",
            "network": "lenet",
            "hyperparameters": {"epochs": 2, "learning_rate": [0.1, 0.01], "batch_size": [8, 16]},
        }
    )
    jobs = jobs_service.create_training_jobs(session, body, user, Settings())
    assert len(jobs) == 4
    assert {j.group_name for j in jobs} == {"s"}
    hypers = [j.request["hyperparameters"] for j in jobs]
    pairs = {(h["learning_rate"], h["batch_size"]) for h in hypers}
    assert pairs == {(0.1, 8), (0.1, 16), (0.01, 8), (0.01, 16)}
    assert len({j.request["hyperparameters"]["seed"] for j in jobs}) == 1
    assert [m.id for m in dispatch._outbox(session).sends] == [j.id for j in jobs]
    assert all(_status(session, j) == Status.WAITING for j in jobs)


@pytest.mark.parametrize(
    ("hyper", "code"),
    [
        ({"learning_rate": [0.1] * 9, "batch_size": [8] * 8}, "sweep_too_large"),
        ({"epochs": 20_000}, "too_many_epochs"),
        ({"epochs": 10, "snapshot_interval": 1e-9}, "snapshot_interval_too_small"),
        ({"epochs": 10, "val_interval": 0.0001}, "val_interval_too_small"),
    ],
)
def test_limits_answer_with_the_limit_named(
    session: Session, user: User, hyper: dict, code: str
) -> None:
    ds = _dataset(session, user)
    body = JobCreate.model_validate(
        {"dataset_id": ds.id, "name": "s", "network": "lenet", "hyperparameters": hyper}
    )
    with pytest.raises(LimitExceeded) as caught:
        jobs_service.create_training_jobs(session, body, user, Settings())
    print(f"LIMIT {code}: {caught.value.detail}")
    assert caught.value.code == code
    assert caught.value.status == 422
    assert "DIGITS_" in caught.value.detail
    assert session.scalar(select(Job.id).where(Job.owner_id == user.id)) is None


def test_a_clone_copies_the_request_and_applies_overrides(session: Session, user: User) -> None:
    ds = _dataset(session, user)
    body = JobCreate.model_validate(
        {
            "dataset_id": ds.id,
            "name": "orig",
            "network": "lenet",
            "hyperparameters": {"epochs": 3, "learning_rate": 0.05, "momentum": 0.8},
        }
    )
    (orig,) = jobs_service.create_training_jobs(session, body, user, Settings())
    (clone,) = jobs_service.clone_job(
        session,
        orig.id,
        JobClone.model_validate({"hyperparameters": {"learning_rate": 0.2}}),
        user,
        Settings(),
    )
    hyper = clone.request["hyperparameters"]
    assert (hyper["learning_rate"], hyper["momentum"], hyper["epochs"]) == (0.2, 0.8, 3)
    assert clone.name == "orig (clone)"
    assert clone.request["network"] == orig.request["network"]


def test_abort_of_a_waiting_job_ends_it_and_takes_its_message_back(
    session: Session, user: User
) -> None:
    job = _job(session, user)
    jobs_service.request_abort(session, job.id, user)
    assert _status(session, job) == Status.ABORTED
    assert [m.id for m in dispatch._outbox(session).drops] == [job.id]


def test_delete_of_a_running_job_hides_it_until_its_worker_removes_it(
    session: Session, user: User
) -> None:
    job = _job(session, user)
    lifecycle.claim(session, Job, job.id, "w")
    assert jobs_service.request_delete(session, job.id, user) is False
    with pytest.raises(Exception, match="does not exist"):
        jobs_service.get_job(session, job.id, user)
    items, _ = jobs_service.list_jobs(session, user)
    assert job.id not in [j.id for j in items]
    lease = lifecycle.renew(session, Job, job.id, "w", attempt=1)
    assert lease.alive
    assert lease.abort_requested
    assert lease.delete_requested


def test_history_rows_name_the_subject(session: Session, user: User) -> None:
    job = _job(session, user)
    subjects = set(
        session.scalars(select(StatusChange.subject).where(StatusChange.subject_id == job.id))
    )
    assert subjects == {"job"}
    assert isinstance(lifecycle.history(session, job.id)[0].at, datetime)
