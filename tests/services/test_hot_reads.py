"""The reads pollers hammer (a job, a page of jobs, metric series), off the ORM: the same
JSON as the ORM's JobRead, ETags, the finished-job memory, a lost connection, decimation in
the database, and the same reads on SQLite."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.main import create_app
from api.reads import ThreadedReads
from shared import migrate
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Dataset, Job, MetricPoint, Status, User
from shared.schemas.common import Page
from shared.schemas.jobs import JobRead
from shared.services import dispatch, job_reads, lifecycle, users
from shared.services import jobs as jobs_service
from shared.services import metrics as metrics_service
from shared.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Api:
    def __init__(self, client: httpx.AsyncClient, app: Any, user_id: uuid.UUID) -> None:
        self.client, self.app, self.user_id = client, app, user_id

    def session(self) -> Session:
        return self.app.state.session_factory()  # type: ignore[no-any-return]


def _user_and_dataset(s: Session, name: str) -> tuple[uuid.UUID, str, uuid.UUID]:
    """A user, its token and a ready dataset of theirs (ids: the moves expire the rows)."""
    user = users.create_user(s, name)
    _, token = users.create_token(s, user)
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
    user_id, dataset_id = user.id, ds.id
    lifecycle.finish(s, Dataset, ds.id, Status.DONE, worker="cpu", attempt=1)
    return user_id, token, dataset_id


@pytest.fixture(scope="module")
def reads_db() -> Iterator[str]:
    """A database of this module's own: its tests commit jobs, which would be queued work
    in the shared one (the queue tests of other modules count it)."""
    url = create_pg_database()
    migrate.upgrade(Settings(database_url=url))
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
async def api(reads_db: str, tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        data_dir=tmp_path, database_url=reads_db, broker_url="redis://127.0.0.1:1/0"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        dispatch.install(app.state.session_factory, dispatch.RecordingSender())
        with session_scope(app.state.session_factory) as s:
            user_id, token, dataset_id = _user_and_dataset(s, f"h{uuid.uuid4().hex[:10]}")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            client.dataset_id = str(dataset_id)  # type: ignore[attr-defined]
            yield Api(client, app, user_id)


async def _submit(api: Api, name: str = "r", **request: Any) -> dict[str, Any]:
    body = {
        "dataset_id": api.client.dataset_id,  # type: ignore[attr-defined]
        "name": name,
        "network": "lenet",
        "hyperparameters": {"epochs": 2},
        **request,
    }
    resp = await api.client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["jobs"][0]  # type: ignore[no-any-return]


def _finish(api: Api, job_id: str) -> None:
    """Run the job's lifecycle to done, with best/last as a worker writes them (an int)."""
    with session_scope(api.app.state.session_factory) as s:
        lifecycle.claim(s, Job, uuid.UUID(job_id), "w1")
        s.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(
                best={"val.accuracy": {"value": 1, "step": 10, "epoch": 2}},
                last={"train.loss": {"value": 0.25, "step": 20, "epoch": 2.0}},
                progress=1.0,
            )
        )
        lifecycle.finish(s, Job, uuid.UUID(job_id), Status.DONE, worker="w1", attempt=1)


def _orm_read(api: Api, job_id: str) -> bytes:
    with api.session() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return jobs_service.read(s, job).model_dump_json().encode()


async def test_a_job_read_is_the_json_of_its_jobread(api: Api) -> None:
    job = await _submit(api)
    _finish(api, job["id"])
    resp = await api.client.get(f"/jobs/{job['id']}")
    again = await api.client.get(f"/jobs/{job['id']}")  # the finished job, from memory
    print("job read bytes:", len(resp.content), "history:", len(resp.json()["status_history"]))
    assert resp.status_code == 200
    assert resp.content == _orm_read(api, job["id"])
    assert again.content == resp.content
    assert resp.json()["best"]["val.accuracy"]["value"] == 1.0


async def test_a_waiting_job_says_where_it_stands_in_the_queue(api: Api) -> None:
    job = await _submit(api)
    body = (await api.client.get(f"/jobs/{job['id']}")).json()
    print("waiting:", body["queue_position"], body["waiting_reason"])
    assert body["status"] == "waiting"
    assert body["queue_position"] >= 1
    assert body["waiting_reason"]


async def test_an_etag_answers_304_until_the_job_changes(api: Api) -> None:
    job = await _submit(api)
    _finish(api, job["id"])
    first = await api.client.get(f"/jobs/{job['id']}")
    tag = first.headers["etag"]
    same = await api.client.get(f"/jobs/{job['id']}", headers={"If-None-Match": tag})
    print("etag:", tag, "then", same.status_code, len(same.content), "bytes")
    assert same.status_code == 304
    assert same.content == b""
    assert first.headers["cache-control"] == "private, no-cache"
    renamed = await api.client.patch(f"/jobs/{job['id']}", json={"name": "renamed"})
    assert renamed.status_code == 200
    fresh = await api.client.get(f"/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert fresh.status_code == 200
    assert fresh.json()["name"] == "renamed"  # the kept JSON of the finished job is not served
    assert fresh.headers["etag"] != tag


async def test_a_page_of_jobs_is_the_json_of_its_page(api: Api) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    made = [await _submit(api, f"p{i}", group=group) for i in range(5)]
    _finish(api, made[1]["id"])
    for page in (1, 2, 3, 4):
        resp = await api.client.get("/jobs", params={"group": group, "per_page": 2, "page": page})
        assert resp.status_code == 200
        with api.session() as s:
            user = s.get(User, api.user_id)
            assert user is not None
            items, total = jobs_service.list_jobs(s, user, group=group, page=page, per_page=2)
            expected = Page[JobRead](
                items=jobs_service.read_many(s, items), total=total, page=page, per_page=2
            )
        print("page", page, "items", len(resp.json()["items"]), "total", resp.json()["total"])
        assert resp.content == expected.model_dump_json().encode()
    names = [
        j["name"] for j in (await api.client.get("/jobs", params={"group": group})).json()["items"]
    ]
    assert names == ["p4", "p3", "p2", "p1", "p0"]  # newest first
    done = await api.client.get("/jobs", params={"group": group, "status": "done"})
    assert [j["id"] for j in done.json()["items"]] == [made[1]["id"]]


async def test_another_users_jobs_are_neither_listed_nor_read(api: Api) -> None:
    job = await _submit(api)
    with session_scope(api.app.state.session_factory) as s:
        _, token, _ = _user_and_dataset(s, f"o{uuid.uuid4().hex[:10]}")
    other = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get(f"/jobs/{job['id']}", headers=other)).status_code == 404
    listed = (await api.client.get("/jobs", headers=other)).json()
    assert listed["total"] == 0
    assert listed["items"] == []


async def test_reads_survive_the_loss_of_their_connections(api: Api, reads_db: str) -> None:
    job = await _submit(api)
    assert (await api.client.get(f"/jobs/{job['id']}")).status_code == 200
    with psycopg.connect(reads_db.replace("+psycopg", "")) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    resp = await api.client.get(f"/jobs/{job['id']}")
    listed = await api.client.get("/jobs")
    print("backends terminated:", killed[0] if killed else 0, "then", resp.status_code)
    assert resp.status_code == 200
    assert listed.status_code == 200


def _series(api: Api, job_id: str, values: np.ndarray, name: str = "train.loss") -> None:
    with session_scope(api.app.state.session_factory) as s:
        s.add_all(
            MetricPoint(job_id=uuid.UUID(job_id), name=name, step=i, epoch=i / 100, value=float(v))
            for i, v in enumerate(values.tolist())
        )


async def test_decimation_in_the_database_keeps_what_numpy_keeps(api: Api) -> None:
    job = await _submit(api)
    values = np.cos(np.arange(30_000) / 300.0)
    values[4_321], values[25_000] = 40.0, -40.0
    _series(api, job["id"], values)
    _series(api, job["id"], np.arange(10, dtype=np.float64), name="val.loss")
    started = time.perf_counter()
    resp = await api.client.get(
        f"/jobs/{job['id']}/metrics", params={"format": "columnar", "max_points": 1000}
    )
    took = (time.perf_counter() - started) * 1000
    body = resp.json()
    series = body["series"]["train.loss"]
    keep = metrics_service.minmax_indices(values, 1000)
    print(f"30,000 -> {len(series['value'])} points in {took:.0f} ms; val.loss untouched")
    assert body["decimated"] is True
    assert series["step"] == keep.tolist()
    assert series["value"] == values[keep].tolist()
    assert series["epoch"] == [k / 100 for k in keep.tolist()]
    assert body["series"]["val.loss"]["value"] == list(range(10))
    assert list(body["series"]) == ["train.loss", "val.loss"]  # in the order they began


async def test_columns_choose_what_each_series_carries(api: Api) -> None:
    job = await _submit(api)
    _series(api, job["id"], np.linspace(1, 0, 50))
    one = await api.client.get(
        f"/jobs/{job['id']}/metrics",
        params={"format": "columnar", "max_points": 10, "columns": "value,epoch"},
    )
    batch = await api.client.get(
        "/metrics", params={"jobs": job["id"], "max_points": 10, "columns": "step"}
    )
    bad = await api.client.get("/metrics", params={"jobs": job["id"], "columns": "value,nope"})
    print("one:", sorted(one.json()["series"]["train.loss"]), "bad:", bad.json()["detail"])
    assert sorted(one.json()["series"]["train.loss"]) == ["epoch", "value"]
    assert list(batch.json()["jobs"][job["id"]]["series"]["train.loss"]) == ["step"]
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_columns"


async def test_a_batch_read_names_the_first_job_it_cannot_show(api: Api) -> None:
    job = await _submit(api)
    unknown = str(uuid.uuid4())
    resp = await api.client.get("/metrics", params={"jobs": f"{job['id']},{unknown}"})
    assert resp.status_code == 404
    assert unknown in resp.json()["detail"]


async def test_a_batch_read_of_a_group_is_the_read_of_its_jobs(api: Api) -> None:
    """`group=` answers what `jobs=` with the group's training jobs answers, and nothing of
    another user's job in a group of the same name."""
    group = f"g{uuid.uuid4().hex[:8]}"
    mine = [await _submit(api, f"r{i}", group=group) for i in range(3)]
    await _submit(api, "elsewhere", group=f"{group}-other")
    for job, n in zip(mine, (40, 60, 80), strict=True):
        _series(api, job["id"], np.linspace(1, 0, n))
    with session_scope(api.app.state.session_factory) as s:
        other_id, other_token, other_ds = _user_and_dataset(s, f"o{uuid.uuid4().hex[:10]}")
    theirs = await api.client.post(
        "/jobs",
        json={"dataset_id": str(other_ds), "name": "theirs", "network": "lenet", "group": group},
        headers={"Authorization": f"Bearer {other_token}"},
    )
    assert theirs.status_code == 202, theirs.text
    params = {"max_points": 20, "columns": "epoch,value", "names": "train.loss"}
    by_group = await api.client.get("/metrics", params={**params, "group": group})
    ids = ",".join(j["id"] for j in mine)
    by_ids = await api.client.get("/metrics", params={**params, "jobs": ids})
    both = await api.client.get("/metrics", params={"jobs": ids, "group": group})
    neither = await api.client.get("/metrics", params=params)
    print("group:", list(by_group.json()["jobs"]), "both:", both.json()["code"])
    assert by_group.status_code == 200
    assert by_group.json() == by_ids.json()  # the same jobs, oldest first, the same series
    assert list(by_group.json()["jobs"]) == [j["id"] for j in mine]
    assert (both.status_code, both.json()["code"]) == (400, "jobs_and_group")
    assert (neither.status_code, neither.json()["code"]) == (400, "no_jobs")
    assert other_id != api.user_id


async def test_the_same_reads_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        user_id, _, dataset_id = _user_and_dataset(s, "sqlite")
        job = Job(name="j", owner_id=user_id, dataset_id=dataset_id, request={"name": "j"})
        lifecycle.create(s, [job])
        s.add_all(
            MetricPoint(job_id=job.id, name="train.loss", step=i, epoch=i, value=math.sin(i))
            for i in range(500)
        )
    reads = ThreadedReads(engine)
    with factory() as s:
        user = s.scalars(select(User)).one()
        s.expunge(user)
        expected = jobs_service.read(s, s.get(Job, job.id)).model_dump_json()  # type: ignore[arg-type]
        found = metrics_service.read_series(s, {job.id: job.created_at}, names=None, max_points=50)[
            job.id
        ]
    body, status = await job_reads.read_job(reads, job.id, user)
    page = json.loads(await job_reads.list_jobs_json(reads, reads.dialect, user))
    values = np.sin(np.arange(500, dtype=np.float64))
    print("sqlite:", status, len(body), "bytes;", len(found["series"]["train.loss"]["value"]))
    assert body.decode() == expected
    assert page["total"] == 1
    assert (
        found["series"]["train.loss"]["value"]
        == values[metrics_service.minmax_indices(values, 50)].tolist()
    )
    engine.dispose()


async def test_a_finished_jobs_series_are_kept_until_its_row_changes(api: Api) -> None:
    job = await _submit(api)
    _series(api, job["id"], np.linspace(1, 0, 40))
    _finish(api, job["id"])
    params = {"format": "columnar", "max_points": 10}
    first = await api.client.get(f"/jobs/{job['id']}/metrics", params=params)
    # a point written behind the job row's back is not seen: the row's updated_at is the key
    _series(api, job["id"], np.asarray([5.0]), name="val.loss")
    kept = await api.client.get(f"/jobs/{job['id']}/metrics", params=params)
    with session_scope(api.app.state.session_factory) as s:  # as the worker writes a point
        s.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(progress=1.0))
    fresh = await api.client.get(f"/jobs/{job['id']}/metrics", params=params)
    print("series:", list(first.json()["series"]), "->", list(fresh.json()["series"]))
    assert kept.content == first.content
    assert fresh.json()["series"]["val.loss"]["value"] == [5.0]
