"""An abort that races a claim: two real sessions, interleaved deterministically.

The API reads a waiting job, a worker claims it, then the API aborts. The outcome must be
`running` with the abort flag set (the worker is told at its next check) -- never the lost
update where the row says `aborted` while the worker trains on.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job, JobKind, Status, User
from shared.services import jobs as jobs_service
from shared.services import lifecycle


def _user_and_job(sessions: sessionmaker[Session]) -> tuple[uuid.UUID, uuid.UUID]:
    with sessions() as s:
        user = User(name=f"race-{uuid.uuid4().hex[:8]}")
        s.add(user)
        s.flush()
        job = Job(kind=JobKind.TRAIN, owner_id=user.id, name="race", request={})
        s.add(job)
        s.flush()
        lifecycle.record_created(s, job)
        lifecycle.move(s, Job, job.id, Status.WAITING, from_=Status.INITIALIZED)
        s.commit()
        return user.id, job.id


def _cleanup(sessions: sessionmaker[Session], user_id: uuid.UUID, job_id: uuid.UUID) -> None:
    with sessions() as s:
        lifecycle.forget(s, job_id)
        s.execute(delete(Job).where(Job.id == job_id))
        s.execute(delete(User).where(User.id == user_id))
        s.commit()


def test_abort_after_a_claim_it_did_not_see_sets_the_flag(sessions: sessionmaker[Session]) -> None:
    user_id, job_id = _user_and_job(sessions)
    try:
        api, worker = sessions(), sessions()
        user = api.get(User, user_id)
        assert user is not None
        stale = jobs_service.get_job(api, job_id, user)  # the API has read it: waiting
        assert stale.status == Status.WAITING
        claimed = lifecycle.claim(worker, Job, job_id, "worker-a")
        worker.commit()
        assert claimed is not None
        jobs_service.request_abort(api, job_id, user)
        api.commit()
        api.close()
        worker.close()
        with sessions() as s:
            row = s.get(Job, job_id)
            assert row is not None
            history = [c.to_status for c in lifecycle.history(s, job_id)]
            print(
                f"RACE outcome status={row.status} abort_requested={row.abort_requested} "
                f"worker={row.worker} history={history}"
            )
            assert row.status == Status.RUNNING
            assert row.abort_requested is True
            assert row.worker == "worker-a"
            assert history == ["initialized", "waiting", "running"]
            # the worker's next lease renewal tells it to stop
            lease = lifecycle.renew(s, Job, job_id, "worker-a", attempt=row.attempts)
            assert lease.alive
            assert lease.abort_requested
    finally:
        _cleanup(sessions, user_id, job_id)


def test_abort_before_the_claim_wins_and_the_claim_finds_nothing(
    sessions: sessionmaker[Session],
) -> None:
    user_id, job_id = _user_and_job(sessions)
    try:
        api, worker = sessions(), sessions()
        user = api.get(User, user_id)
        assert user is not None
        jobs_service.request_abort(api, job_id, user)
        api.commit()
        assert lifecycle.claim(worker, Job, job_id, "worker-a") is None
        worker.commit()
        api.close()
        worker.close()
        with sessions() as s:
            row = s.get(Job, job_id)
            assert row is not None
            assert row.status == Status.ABORTED
            assert row.worker is None
            assert s.scalar(select(Job.attempts).where(Job.id == job_id)) == 0
    finally:
        _cleanup(sessions, user_id, job_id)
