"""Route contracts in process: the real app over httpx's ASGI transport, the real PostgreSQL,
and a recording sender in place of the broker (what a route sends, and only after its commit)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from api.main import create_app
from shared.db import session_scope
from shared.models import Dataset, Job, MetricPoint, Status, User
from shared.queue import TRAIN_QUEUE
from shared.services import dispatch, lifecycle, users
from shared.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    def __init__(self, client: httpx.AsyncClient, app: Any, recorder: dispatch.RecordingSender):
        self.client, self.app, self.recorder = client, app, recorder

    def sessions(self) -> Any:
        return self.app.state.session_factory


@pytest.fixture
async def api(services_db: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        database_url=services_db, data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0"
    )
    app = create_app(settings)
    recorder = dispatch.RecordingSender()
    async with app.router.lifespan_context(app):
        dispatch.install(app.state.session_factory, recorder)
        with session_scope(app.state.session_factory) as s:
            user = users.create_user(s, f"r{uuid.uuid4().hex[:10]}")
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
            lifecycle.finish(s, Dataset, ds.id, Status.DONE, worker="cpu", attempt=1)
            dataset_id = str(ds.id)
        recorder.sent.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            client.dataset_id = dataset_id  # type: ignore[attr-defined]
            yield App(client, app, recorder)


def _body(api: App, **hyper: Any) -> dict[str, Any]:
    return {
        "dataset_id": api.client.dataset_id,  # type: ignore[attr-defined]
        "name": "r",
        "network": "lenet",
        "hyperparameters": {"epochs": 2, **hyper},
    }


async def test_a_submission_is_sent_once_after_its_commit(api: App) -> None:
    resp = await api.client.post("/jobs", json=_body(api))
    assert resp.status_code == 202, resp.text
    job = resp.json()["jobs"][0]
    assert [m.id for m in api.recorder.sent] == [uuid.UUID(job["id"])]
    assert api.recorder.sent[0].queue == TRAIN_QUEUE
    assert [e["status"] for e in job["status_history"]] == ["initialized", "waiting"]
    with api.sessions()() as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        assert row.enqueued_at is not None


async def test_a_refused_submission_sends_nothing_and_stores_nothing(api: App) -> None:
    name = f"refused-{uuid.uuid4().hex[:8]}"
    for hyper in ({"epochs": 0}, {"learning_rate": [0.1] * 9, "batch_size": [8] * 8}):
        resp = await api.client.post("/jobs", json={**_body(api, **hyper), "name": name})
        assert resp.status_code == 422, resp.text
    assert api.recorder.sent == []
    with api.sessions()() as s:
        assert s.scalar(select(Job.id).where(Job.name == name)) is None


async def test_an_anonymous_request_is_401_before_anything(api: App) -> None:
    resp = await api.client.post("/jobs", json=_body(api), headers={"Authorization": ""})
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert api.recorder.sent == []


async def test_abort_of_a_waiting_job_takes_its_message_back(api: App) -> None:
    job = (await api.client.post("/jobs", json=_body(api))).json()["jobs"][0]
    resp = await api.client.post(f"/jobs/{job['id']}/abort")
    assert resp.status_code == 200
    assert resp.json()["status"] == "aborted"
    assert [m.id for m in api.recorder.dropped] == [uuid.UUID(job["id"])]
    assert (await api.client.post(f"/jobs/{job['id']}/abort")).status_code == 409


async def test_delete_of_a_waiting_job_removes_it(api: App) -> None:
    job = (await api.client.post("/jobs", json=_body(api))).json()["jobs"][0]
    assert (await api.client.delete(f"/jobs/{job['id']}")).status_code == 204
    assert (await api.client.get(f"/jobs/{job['id']}")).status_code == 404
    with api.sessions()() as s:
        assert not lifecycle.history(s, uuid.UUID(job["id"]))


async def test_a_clone_overrides_and_is_sent(api: App) -> None:
    job = (await api.client.post("/jobs", json=_body(api, learning_rate=0.05))).json()["jobs"][0]
    resp = await api.client.post(
        f"/jobs/{job['id']}/clone", json={"hyperparameters": {"learning_rate": 0.2}}
    )
    assert resp.status_code == 202, resp.text
    clone = resp.json()["jobs"][0]
    assert clone["request"]["hyperparameters"]["learning_rate"] == 0.2
    assert [m.id for m in api.recorder.sent][-1] == uuid.UUID(clone["id"])


async def test_columnar_metrics_are_decimated_keeping_extremes(api: App) -> None:
    job = (await api.client.post("/jobs", json=_body(api))).json()["jobs"][0]
    values = np.sin(np.arange(100_000) / 500.0)
    values[12_345] = 50.0  # a spike decimation must keep
    values[77_777] = -50.0
    with session_scope(api.sessions()) as s:
        s.add_all(
            MetricPoint(
                job_id=uuid.UUID(job["id"]),
                name="train.loss",
                step=i,
                epoch=i / 1000,
                value=float(v),
            )
            for i, v in enumerate(values.tolist())
        )
    resp = await api.client.get(
        f"/jobs/{job['id']}/metrics", params={"format": "columnar", "max_points": 2000}
    )
    assert resp.status_code == 200
    series = resp.json()["series"]["train.loss"]
    assert resp.json()["decimated"] is True
    assert len(series["value"]) <= 2000
    assert max(series["value"]) == 50.0
    assert min(series["value"]) == -50.0
    assert series["step"][0] == 0
    assert series["step"][-1] == 99_999
    assert series["step"] == sorted(series["step"])
    batch = await api.client.get("/metrics", params={"jobs": job["id"], "max_points": 100})
    assert len(batch.json()["jobs"][job["id"]]["series"]["train.loss"]["value"]) <= 100


async def test_the_event_stream_refuses_bad_ids_and_unknown_jobs(api: App) -> None:
    assert (await api.client.get("/events", params={"jobs": "not-a-uuid"})).status_code == 400
    assert (await api.client.get("/events")).status_code == 400
    assert (await api.client.get("/events", params={"jobs": str(uuid.uuid4())})).status_code == 404


async def test_users_of_the_records_are_unknown_to_others(api: App) -> None:
    with session_scope(api.sessions()) as s:
        other = users.create_user(s, f"o{uuid.uuid4().hex[:10]}")
        _, token = users.create_token(s, other)
        assert s.scalar(select(User.id).where(User.id == other.id)) is not None
    job = (await api.client.post("/jobs", json=_body(api))).json()["jobs"][0]
    resp = await api.client.get(f"/jobs/{job['id']}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 404
