"""Three workers standing in for three hosts, against one PostgreSQL and one Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database
from tests.support import Stack, post_dataset, wait_for

HOSTS = ("host-a", "host-b", "host-c")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, digits_zip: Path, pg_env: dict
) -> Iterator[tuple[Stack, str]]:
    url = create_pg_database()
    prefix = f"digits-test-{uuid.uuid4().hex[:10]}:"
    env = {
        **pg_env,
        "DIGITS_DATABASE_URL": url,
        "DIGITS_BROKER_PREFIX": prefix,
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("fleet-data")),
        "DIGITS_HEARTBEAT_INTERVAL": "1",
        "DIGITS_WORKER_STALE_AFTER": "5",
        "DIGITS_TELEMETRY_INTERVAL": "0.5",
    }
    from shared import migrate
    from shared.settings import Settings

    migrate.upgrade(Settings(database_url=url))
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("logs-fleet"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("cpu-fleet", "--queues", "cpu")
        for host in HOSTS:
            stack.start_worker(host, "--cpu")
        with stack.client() as client:
            resp = post_dataset(
                client,
                {
                    "name": "digits",
                    "image_width": 28,
                    "image_height": 28,
                    "channels": 1,
                    "max_per_class": 60,
                },
                {"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
            )
            dataset = wait_for(client, f"/datasets/{resp.json()['id']}")
            assert dataset["status"] == "done"
        yield stack, dataset["id"]
    finally:
        stack.stop()
        drop_pg_database(url)
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        r.close()


def _job(dataset_id: str, name: str, epochs: int = 2, gpu: str | None = None) -> dict:
    body: dict = {
        "dataset_id": dataset_id,
        "name": name,
        "network": "lenet",
        "hyperparameters": {"epochs": epochs, "batch_size": 64},
    }
    if gpu:
        body["gpu"] = gpu
    return body


def test_twelve_jobs_spread_over_three_workers_each_run_once(fleet) -> None:  # type: ignore[no-untyped-def]
    stack, dataset_id = fleet
    with stack.client() as client:
        workers = {w["name"]: w for w in client.get("/workers").json()}
        assert set(HOSTS) <= set(workers)
        assert all(workers[h]["alive"] for h in HOSTS)
        ids = []
        for i in range(12):
            resp = client.post("/jobs", json=_job(dataset_id, f"fleet-{i}"))
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["jobs"][0]["id"])
        checked_stages = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            jobs = {
                j["id"]: j for j in client.get("/jobs", params={"per_page": 200}).json()["items"]
            }
            queue = client.get("/queue").json()
            fleet_now = {w["name"]: w for w in client.get("/workers").json()}
            mine = [jobs[i] for i in ids]
            waiting = [j for j in mine if j["status"] == "waiting"]
            running = [j for j in mine if j["status"] == "running"]
            # the queue lists exactly the waiting jobs, in submission order, numbered 1..n
            queued = [item["job_id"] for item in queue["items"]]
            if {j["id"] for j in waiting} == set(queued):
                assert queued == [i for i in ids if i in set(queued)]
                assert [item["position"] for item in queue["items"]] == list(
                    range(1, len(queued) + 1)
                )
                if len(running) == 3 and queued:
                    # the queue is its own snapshot: a worker may have freed up since the
                    # jobs were read, and then the first items say where they start
                    reasons = [item["reason"] for item in queue["items"]]
                    starting = [r for r in reasons if r.startswith("starting on host-")]
                    assert len(starting) <= 3
                    assert reasons[len(starting) :] == ["all 3 matching workers are busy"] * (
                        len(reasons) - len(starting)
                    )
                    # each running job's worker reports that job
                    for j in running:
                        if fleet_now[j["worker"]]["job_id"] == j["id"]:
                            checked_stages += 1
                    # the job's own record says the same (read a moment later: it may
                    # have moved up or started meanwhile)
                    detail = client.get(f"/jobs/{queued[-1]}").json()
                    if detail["status"] == "waiting":
                        assert 1 <= detail["queue_position"] <= len(queued)
                        reason = detail["waiting_reason"]
                        assert reason == "all 3 matching workers are busy" or (
                            reason.startswith("starting on host-")
                        )
            if all(j["status"] in ("done", "error", "aborted") for j in mine):
                break
            time.sleep(0.3)
        finals = [client.get(f"/jobs/{i}").json() for i in ids]
    assert [f["status"] for f in finals] == ["done"] * 12, [f["error"] for f in finals]
    assert all(f["attempts"] == 1 for f in finals)
    assert all([h["status"] for h in f["status_history"]].count("running") == 1 for f in finals)
    used = {f["worker"] for f in finals}
    assert used == set(HOSTS), f"jobs ran on {used}"
    assert checked_stages > 0, "never saw three busy workers with a queue behind them"


def test_job_for_a_missing_worker_waits_with_that_reason_then_starts_when_it_appears(
    fleet,  # type: ignore[no-untyped-def]
) -> None:
    stack, dataset_id = fleet
    with stack.client() as client:
        job = client.post("/jobs", json=_job(dataset_id, "pinned", 1, gpu="host-d")).json()["jobs"][
            0
        ]
        time.sleep(2)
        detail = client.get(f"/jobs/{job['id']}").json()
        assert detail["status"] == "waiting"
        assert "no live worker" in detail["waiting_reason"]
        assert "host-d" in detail["waiting_reason"]
        stack.start_worker("host-d", "--cpu")
        final = wait_for(client, f"/jobs/{job['id']}", timeout=180)
    assert final["status"] == "done"
    assert final["worker"] == "host-d"


def test_prometheus_metrics_match_the_rest_endpoints(fleet) -> None:  # type: ignore[no-untyped-def]
    stack, _ = fleet
    text = httpx.get(
        stack.url + "/metrics", headers={"Authorization": f"Bearer {stack.token}"}
    ).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    with stack.client() as client:
        for state in ("done", "waiting", "running", "error"):
            total = client.get("/jobs", params={"status": state}).json()["total"]
            sample = next(s for s in families["digits_jobs"].samples if s.labels["state"] == state)
            assert sample.value == total, state
        queue_total = client.get("/queue").json()["total"]
        workers = client.get("/workers").json()
    train = sum(
        s.value for s in families["digits_queue_length"].samples if s.labels["queue"] != "cpu"
    )
    assert train == queue_total
    up = {s.labels["worker"]: s.value for s in families["digits_worker_up"].samples}
    assert up == {w["name"]: (1.0 if w["alive"] else 0.0) for w in workers}
    durations = families["digits_job_duration_seconds"]
    count = next(s for s in durations.samples if s.name.endswith("_count"))
    assert count.value >= 12


def test_a_job_records_process_telemetry(fleet) -> None:  # type: ignore[no-untyped-def]
    stack, dataset_id = fleet
    with stack.client() as client:
        resp = client.post("/jobs", json=_job(dataset_id, "telemetry", epochs=8))
        job = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=300)
        assert job["status"] == "done"
        points = client.get(
            f"/jobs/{job['id']}/metrics", params={"names": "process.rss_bytes,process.cpu_percent"}
        ).json()
    rss = [p["value"] for p in points["items"] if p["name"] == "process.rss_bytes"]
    assert rss
    assert min(rss) > 50 * 1024 * 1024  # a process with torch loaded
