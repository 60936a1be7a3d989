"""The study scheduler in process, on the real PostgreSQL and Optuna's storage in its schema:
what a top-up asks and tells, how a trial's reports count once, and what a bad study gets.

Jobs are moved by hand through the lifecycle (no workers): a "trial" here is a job that the
test claims and finishes with the metrics a worker would have written.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import tuning
from shared.db import make_session_factory, session_scope
from shared.errors import InvalidInput
from shared.models import Dataset, Job, Status, Study, User
from shared.schemas.studies import StudyCreate
from shared.services import dispatch, lifecycle, users
from shared.services import studies as studies_service
from shared.settings import Settings

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "solver": {"type": "categorical", "choices": ["sgd", "adam"]},
}


class World:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, user: User, ds: str):
        self.sessions, self.settings, self.user, self.dataset = sessions, settings, user, ds
        self.recorder = dispatch.RecordingSender()
        dispatch.install(sessions, self.recorder)


@pytest.fixture
def world(engine: Engine, services_db: str, tmp_path: Path) -> World:
    sessions = make_session_factory(engine)
    settings = Settings(database_url=services_db, data_dir=tmp_path)
    with session_scope(sessions) as s:
        user = users.create_user(s, f"t{uuid.uuid4().hex[:10]}")
        ds = Dataset(
            name="d",
            owner_id=user.id,
            image_width=28,
            image_height=28,
            image_channels=1,
            classes=[str(i) for i in range(10)],
            counts={"train": [10] * 10, "val": [2] * 10},
        )
        lifecycle.create(s, [ds])
        lifecycle.claim(s, Dataset, ds.id, "cpu")
        lifecycle.finish(s, Dataset, ds.id, Status.DONE, worker="cpu", attempt=1)
        s.expunge(user)
        dataset_id = str(ds.id)
    return World(sessions, settings, user, dataset_id)


def _create(world: World, **overrides: Any) -> uuid.UUID:
    body: dict[str, Any] = {
        "name": "s",
        "dataset_id": world.dataset,
        "network": "lenet",
        "hyperparameters": {"epochs": 9},
        "search_space": SPACE,
        "sampler": {"type": "tpe", "seed": 3},
        "max_trials": 5,
        "max_concurrent": 2,
        **overrides,
    }
    with session_scope(world.sessions) as s:
        study = studies_service.create_study(
            s, StudyCreate.model_validate(body), world.user, world.settings
        )
        return study.id


def _jobs(world: World, study_id: uuid.UUID) -> list[Job]:
    with session_scope(world.sessions) as s:
        rows = list(
            s.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.trial_number))
        )
        s.expunge_all()
        return rows


def _finish(world: World, job: Job, accuracy: float, *, pruned_at: float | None = None) -> None:
    """What a worker does for a trial: claim, write its metrics, finish."""
    with session_scope(world.sessions) as s:
        lifecycle.claim(s, Job, job.id, "w")
        last = {"val.accuracy": {"value": accuracy, "step": 1, "epoch": 1.0}}
        if pruned_at is not None:
            last[studies_service.PRUNED] = {"value": 1.0, "step": 1, "epoch": pruned_at}
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(best=dict(last), last=last, epoch=pruned_at or 9.0)
        )
        lifecycle.finish(s, Job, job.id, Status.DONE, worker="w", attempt=1)


def test_a_top_up_asks_up_to_max_concurrent_trials_with_distinct_parameters(
    world: World,
) -> None:
    study_id = _create(world)
    done = studies_service.top_up(world.sessions, world.settings, study_id)
    again = studies_service.top_up(world.sessions, world.settings, study_id)
    jobs = _jobs(world, study_id)
    params = [
        (j.request["hyperparameters"]["learning_rate"], j.request["hyperparameters"]["solver"])
        for j in jobs
    ]
    print(f"STUDIES asked {done.asked} then {again.asked}: {params}")
    assert done.asked == [0, 1]
    assert again.asked == []  # two run already: max_concurrent
    assert [j.trial_number for j in jobs] == [0, 1]
    assert len(set(params)) == 2
    assert {m.id for m in world.recorder.sent} >= {j.id for j in jobs}
    assert all(j.group_name == "s" and j.status == Status.WAITING for j in jobs)


def test_ended_trials_are_told_once_and_the_budget_ends_the_study(world: World) -> None:
    study_id = _create(world, max_trials=3)
    studies_service.top_up(world.sessions, world.settings, study_id)
    first, second = _jobs(world, study_id)
    _finish(world, first, 0.9)
    _finish(world, second, 0.5, pruned_at=1.0)
    told = studies_service.top_up(world.sessions, world.settings, study_id)
    again = studies_service.top_up(world.sessions, world.settings, study_id)
    assert told.told == {0: "complete", 1: "pruned"}
    assert told.asked == [2]
    assert again.told == {}  # told once
    (third,) = [j for j in _jobs(world, study_id) if j.trial_number == 2]
    with session_scope(world.sessions) as s:
        lifecycle.request_abort(s, Job, third.id)  # a waiting trial aborted: no worker ran it
    last = studies_service.top_up(world.sessions, world.settings, study_id)
    with session_scope(world.sessions) as s:
        study = s.get(Study, study_id)
        assert study is not None
        read = studies_service.read_study(s, world.settings, study)
    print(f"STUDIES {read.status} ({read.reason}): {read.counts}, best {read.best_value}")
    assert last.told == {2: "fail"}
    assert last.status == "done"
    assert read.counts == {"waiting": 0, "running": 0, "complete": 1, "pruned": 1, "failed": 1}
    assert read.best is not None
    assert read.best.number == 0
    assert read.best_value == pytest.approx(0.9)
    assert [h.number for h in read.history] == [0, 1]
    ostudy = tuning.open_study(world.settings, f"digits-{study_id}", study.config)
    states = {t.number: t.state.name for t in ostudy.get_trials(deepcopy=False)}
    assert states == {0: "COMPLETE", 1: "PRUNED", 2: "FAIL"}


def test_a_repeated_report_counts_once(world: World) -> None:
    """A resumed trial reports its validations after the last checkpoint again."""
    study_id = _create(world, pruner={"type": "asha", "min_epochs": 1, "reduction_factor": 3})
    studies_service.top_up(world.sessions, world.settings, study_id)
    with session_scope(world.sessions) as s:
        study = s.get(Study, study_id)
        assert study is not None
        config = study.config
    ostudy = tuning.open_study(world.settings, f"digits-{study_id}", config)
    assert tuning.report(ostudy, 0, 1, 0.8) is False  # alone at the rung: the best so far
    assert tuning.report(ostudy, 0, 2, 0.85) is False
    assert tuning.report(ostudy, 0, 1, 0.1) is False  # the lost attempt's step again
    pruned_first = tuning.report(ostudy, 1, 1, 0.2)  # worse than trial 0 at the first rung
    assert tuning.report(ostudy, 1, 1, 0.2) is pruned_first is True  # the decision stands
    trial = ostudy.get_trials(deepcopy=False)[0]
    print(f"STUDIES trial 0 values {trial.intermediate_values}")
    assert trial.intermediate_values == {1: 0.8, 2: 0.85}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        (
            {"search_space": {"batch_size": {"type": "float", "low": 1.5, "high": 8}}},
            "invalid_search_space",
        ),
        (
            {"search_space": {"solver": {"type": "categorical", "choices": ["sgd", "lbfgs"]}}},
            "invalid_search_space",
        ),
        (
            {
                "search_space": {
                    "network": {"type": "categorical", "choices": ["lenet", "vit_b_16"]}
                }
            },
            "invalid_search_space",
        ),
        ({"sampler": {"type": "grid"}}, "invalid_search_space"),
        ({"hyperparameters": {"epochs": 3, "val_interval": 0}}, "invalid_pruner"),
        ({"pruner": {"type": "asha", "min_epochs": 20}}, "invalid_pruner"),
    ],
)
def test_a_bad_study_is_refused_before_anything_is_queued(
    world: World, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _create(world, **overrides)
    print(f"STUDIES refused: {caught.value.code}: {caught.value.detail}")
    assert caught.value.code == code


def test_a_grid_study_asks_each_point_once(world: World) -> None:
    study_id = _create(
        world,
        search_space={
            "learning_rate": {"type": "categorical", "choices": [0.01, 0.1]},
            "batch_size": {"type": "categorical", "choices": [32, 128]},
        },
        sampler={"type": "grid"},
        pruner={"type": "none"},
        max_trials=50,
        max_concurrent=4,
    )
    studies_service.top_up(world.sessions, world.settings, study_id)
    jobs = _jobs(world, study_id)
    points = sorted(
        (j.request["hyperparameters"]["learning_rate"], j.request["hyperparameters"]["batch_size"])
        for j in jobs
    )
    assert points == [(0.01, 32), (0.01, 128), (0.1, 32), (0.1, 128)]
    with session_scope(world.sessions) as s:
        study = s.get(Study, study_id)
        assert study is not None
        assert study.config["max_trials"] == 4  # the grid's size
