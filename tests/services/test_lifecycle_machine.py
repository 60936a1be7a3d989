"""A stateful property test of the lifecycle over real rows in PostgreSQL.

Hypothesis drives random sequences of submit / claim / renew / progress / abort / finish /
lease lapse / reap / worker restart, with two workers and an injected clock, and checks the
invariants after every step: each history is a path of allowed transitions; no job is running
on two workers (only the holder of the current attempt can renew or finish it); a finished job
never changes again; and once work stops, every job ends in a final state.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
)
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job, JobKind, Status, User
from shared.services import dispatch, lifecycle
from shared.settings import Settings

WORKERS = ("worker-a", "worker-b")
LEASE = 10.0
BUDGET = 3
T0 = datetime(2026, 1, 1, 12, 0, 0).astimezone()


def test_lifecycle_state_machine(engine: Engine) -> None:
    """Runs the machine below (a function, so the fixtures give it its database)."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)

    class Lifecycle(RuleBasedStateMachine):
        jobs = Bundle("jobs")

        def __init__(self) -> None:
            super().__init__()
            self.sessions = factory
            self.recorder = dispatch.RecordingSender()
            self.now = T0
            self.settings = Settings(
                lease_timeout=LEASE, max_attempts=BUDGET, resend_after=1000, database_url="x"
            )
            with self.sessions() as s:
                user = User(name=f"m-{uuid.uuid4().hex[:10]}")
                s.add(user)
                s.commit()
                self.user_id = user.id
            # what each worker believes it holds: job id -> attempt
            self.held: dict[str, dict[uuid.UUID, int]] = {w: {} for w in WORKERS}
            self.ids: list[uuid.UUID] = []
            self.final: dict[uuid.UUID, Status] = {}

        # -- helpers --------------------------------------------------------------------
        def _row(self, s: Session, job_id: uuid.UUID) -> Job:
            row = s.get(Job, job_id, populate_existing=True)
            assert row is not None
            return row

        def _holds(self, s: Session, job_id: uuid.UUID, worker: str, attempt: int) -> bool:
            row = self._row(s, job_id)
            return row.status == Status.RUNNING and row.worker == worker and row.attempts == attempt

        # -- rules ----------------------------------------------------------------------
        @rule(target=jobs)
        def submit(self) -> uuid.UUID:
            with self.sessions() as s:
                job = Job(kind=JobKind.TRAIN, owner_id=self.user_id, name="m", request={})
                lifecycle.create(s, [job])
                s.commit()
                self.ids.append(job.id)
                return job.id

        @rule(job=jobs, worker=st.sampled_from(WORKERS))
        def claim(self, job: uuid.UUID, worker: str) -> None:
            with self.sessions() as s:
                row = lifecycle.claim(s, Job, job, worker, now=self.now)
                s.commit()
                if row is not None:
                    self.held[worker][job] = row.attempts

        @rule(worker=st.sampled_from(WORKERS), data=st.data())
        def renew(self, worker: str, data: st.DataObject) -> None:
            if not self.held[worker]:
                return
            job = data.draw(st.sampled_from(sorted(self.held[worker])))
            with self.sessions() as s:
                holds = self._holds(s, job, worker, self.held[worker][job])
                lease = lifecycle.renew(
                    s, Job, job, worker, attempt=self.held[worker][job], now=self.now
                )
                s.commit()
            assert lease.alive == holds  # a stale holder is told, never renewed
            if not lease.alive:  # reaped, finished or taken over: this worker lets go
                del self.held[worker][job]

        @rule(worker=st.sampled_from(WORKERS), data=st.data(), fraction=st.floats(0, 1))
        def progress(self, worker: str, data: st.DataObject, fraction: float) -> None:
            if not self.held[worker]:
                return
            job = data.draw(st.sampled_from(sorted(self.held[worker])))
            with self.sessions() as s:
                lifecycle.renew(
                    s,
                    Job,
                    job,
                    worker,
                    attempt=self.held[worker][job],
                    now=self.now,
                    values={"progress": round(fraction, 3)},
                )
                s.commit()

        @rule(job=jobs)
        def abort(self, job: uuid.UUID) -> None:
            with self.sessions() as s:
                lifecycle.request_abort(s, Job, job)
                s.commit()

        @rule(
            worker=st.sampled_from(WORKERS),
            data=st.data(),
            to=st.sampled_from([Status.DONE, Status.ERROR, Status.ABORTED, Status.WAITING]),
        )
        def finish(self, worker: str, data: st.DataObject, to: Status) -> None:
            if not self.held[worker]:
                return
            job = data.draw(st.sampled_from(sorted(self.held[worker])))
            attempt = self.held[worker].pop(job)
            with self.sessions() as s:
                holds = self._holds(s, job, worker, attempt)
                if to == Status.WAITING:  # a graceful shutdown gives the job back
                    moved = lifecycle.requeue(
                        s,
                        Job,
                        job,
                        "shutdown",
                        count_attempt=False,
                        worker=worker,
                        attempt=attempt,
                    )
                else:
                    moved = lifecycle.finish(
                        s, Job, job, to, worker=worker, attempt=attempt, reason=to.value
                    )
                s.commit()
            assert moved == holds  # only the holder of the running attempt can end it

        @rule(seconds=st.sampled_from([1.0, 4.0, LEASE + 1]))
        def time_passes(self, seconds: float) -> None:
            self.now += timedelta(seconds=seconds)

        @rule()
        def reap(self) -> None:
            with self.sessions() as s:
                s.info[dispatch.SENDER] = self.recorder
                dispatch.reap(s, self.settings, now=self.now)
                s.commit()

        @rule(worker=st.sampled_from(WORKERS))
        def restart(self, worker: str) -> None:
            """The worker process dies and comes back: it forgets what it held."""
            self.held[worker] = {}

        # -- invariants -----------------------------------------------------------------
        @invariant()
        def histories_are_paths_of_allowed_moves(self) -> None:
            with self.sessions() as s:
                for job_id, changes in lifecycle.histories(s, self.ids).items():
                    assert changes[0].from_status is None
                    assert changes[0].to_status == Status.INITIALIZED
                    for before, after in itertools.pairwise(changes):
                        assert after.from_status == before.to_status, (job_id, changes)
                        assert lifecycle.allowed(before.to_status, after.to_status)
                    assert self._row(s, job_id).status == changes[-1].to_status

        @invariant()
        def only_the_current_holder_can_act(self) -> None:
            with self.sessions() as s:
                for job_id in self.ids:
                    row = self._row(s, job_id)
                    holders = [
                        w
                        for w in WORKERS
                        if self.held[w].get(job_id) == row.attempts
                        and row.status == Status.RUNNING
                        and row.worker == w
                    ]
                    assert len(holders) <= 1
                    if row.status == Status.RUNNING:
                        assert row.worker in WORKERS
                        assert row.attempts >= 1

        @invariant()
        def finished_jobs_never_change(self) -> None:
            with self.sessions() as s:
                for job_id in self.ids:
                    row = self._row(s, job_id)
                    if job_id in self.final:
                        assert row.status == self.final[job_id]
                    elif row.status.is_final:
                        self.final[job_id] = row.status

        def teardown(self) -> None:
            """No more claims: workers stop (they die), leases lapse, the reaper sweeps; what
            still waits is aborted by its owner. Then every job is final."""
            for worker in WORKERS:
                self.held[worker] = {}
            for _ in range(BUDGET + 2):
                self.now += timedelta(seconds=LEASE + 1)
                self.reap()
            with self.sessions() as s:
                for job_id in self.ids:
                    lifecycle.request_abort(s, Job, job_id)
                s.commit()
                statuses = {
                    job_id: s.scalar(select(Job.status).where(Job.id == job_id))
                    for job_id in self.ids
                }
                assert all(status.is_final for status in statuses.values()), statuses
                for job_id in self.ids:  # leave the shared database as we found it
                    dispatch.purge(s, Job, job_id)
                s.execute(update(User).where(User.id == self.user_id).values(disabled=True))
                s.commit()

    Lifecycle.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    Lifecycle.TestCase().runTest()
