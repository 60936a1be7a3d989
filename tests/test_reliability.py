"""Failures with real processes: killed training children and workers, graceful shutdowns,
a restart budget, lost broker messages, a database outage, and concurrent submissions.

Each scenario prints a `RELIABILITY {...}` line; docs/reliability.md collects them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from shared.queue import create_celery
from shared.settings import Settings
from tests.chaos import PrivateRedis, TcpProxy
from tests.conftest import create_pg_database, drop_pg_database
from tests.support import (
    Stack,
    post_dataset,
    training_child,
    wait_for,
    write_class_folders,
    zip_folder,
)

pytestmark = pytest.mark.timeout(900)


def report(scenario: str, **figures: Any) -> None:
    print("RELIABILITY " + json.dumps({"scenario": scenario, **figures}), flush=True)


class Env:
    def __init__(self, stack: Stack, redis: PrivateRedis, proxy: TcpProxy, datasets: dict) -> None:
        self.stack, self.redis, self.proxy, self.datasets = stack, redis, proxy, datasets


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, digits_zip: Path, pg_env: dict) -> Iterator[Env]:
    from tests.support import digits_arrays

    url = create_pg_database()
    redis = PrivateRedis()
    redis.start()
    proxy = TcpProxy(5432)
    proxy.start()
    db_url = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    from shared import migrate

    migrate.upgrade(Settings(database_url=url))
    env = {
        **pg_env,
        "DIGITS_DATABASE_URL": db_url,
        "DIGITS_BROKER_URL": redis.url,
        "DIGITS_BROKER_PREFIX": "",
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("rel-data")),
        "DIGITS_HEARTBEAT_INTERVAL": "1",
        "DIGITS_WORKER_STALE_AFTER": "4",
        "DIGITS_LEASE_TIMEOUT": "8",
        "DIGITS_REAPER_INTERVAL": "1",
        "DIGITS_RESEND_AFTER": "4",
        "DIGITS_MAX_ATTEMPTS": "3",
    }
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("logs-rel"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("rel-cpu", "--queues", "cpu")
        stack.start_worker("rel-a", "--cpu")
        images, labels = digits_arrays()
        small = zip_folder(
            write_class_folders(tmp_path_factory.mktemp("small") / "d", images, labels),
            tmp_path_factory.mktemp("smallz") / "d.zip",
        )
        datasets = {}
        with stack.client() as client:
            for key, size, archive in (("d28", 28, digits_zip), ("d8", 8, small)):
                resp = post_dataset(
                    client,
                    {
                        "name": key,
                        "image_width": size,
                        "image_height": size,
                        "channels": 1,
                        # d8 is tiny: many short jobs, where per-job overhead is what counts
                        **({"max_per_class": 6} if key == "d8" else {}),
                    },
                    {"archive": ("d.zip", archive.read_bytes(), "a/zip")},
                )
                datasets[key] = wait_for(client, f"/datasets/{resp.json()['id']}")
                assert datasets[key]["status"] == "done"
        yield Env(stack, redis, proxy, datasets)
    finally:
        stack.stop()
        proxy.cut()
        redis.stop()
        drop_pg_database(url)


def _submit(
    client: httpx.Client, dataset: dict, name: str, gpu: str | None = None, **hyper: Any
) -> str:
    body: dict[str, Any] = {
        "dataset_id": dataset["id"],
        "name": name,
        "network": "lenet",
        "hyperparameters": {"batch_size": 64, "learning_rate": 0.05, "seed": 1, **hyper},
    }
    if gpu:
        body["gpu"] = gpu
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["jobs"][0]["id"]


def _worker_pid(client: httpx.Client, name: str) -> int:
    return next(w["pid"] for w in client.get("/workers").json() if w["name"] == name)


def _checkpoint_epochs(client: httpx.Client, job_id: str) -> list[float]:
    return [
        c["epoch"]
        for c in client.get(f"/jobs/{job_id}/checkpoints").json()
        if c["name"].startswith("epoch-")
    ]


def _wait_checkpoint(client: httpx.Client, job_id: str, epoch: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e >= epoch for e in _checkpoint_epochs(client, job_id)):
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never saved epoch {epoch}")


def _series_ok(client: httpx.Client, job_id: str, epochs: int) -> dict[str, int]:
    points = client.get(
        f"/jobs/{job_id}/metrics", params={"names": "train.loss,val.accuracy"}
    ).json()["items"]
    train = [p["step"] for p in points if p["name"] == "train.loss"]
    val = [p["epoch"] for p in points if p["name"] == "val.accuracy"]
    assert len(train) == len(set(train)), "a training step was reported twice"
    assert train == sorted(train)
    gaps = {b - a for a, b in itertools.pairwise(train)}
    assert len(gaps) <= 2, f"uneven train.loss steps {sorted(gaps)}"  # last interval may be short
    assert val == [float(e) for e in range(1, epochs + 1)], val
    return {"train_points": len(train), "val_points": len(val)}


def _recovery_seconds(
    client: httpx.Client, job_id: str, killed_at: float, after_step: int
) -> float:
    """Seconds from the kill until the resumed attempt reports training progress again."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "error", "aborted"):
            return time.monotonic() - killed_at
        if job["attempts"] >= 2 and job["status"] == "running" and job["step"] > after_step:
            return time.monotonic() - killed_at
        time.sleep(0.1)
    raise AssertionError("the job never resumed")


def test_sigkill_of_the_training_child_resumes_from_the_last_checkpoint(env: Env) -> None:
    epochs = 8
    with env.stack.client() as client:
        job_id = _submit(client, env.datasets["d28"], "kill-child", epochs=epochs)
        _wait_checkpoint(client, job_id, 3)
        child = training_child(_worker_pid(client, "rel-a"), job_id)
        saved = max(c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json())
        at_kill = client.get(f"/jobs/{job_id}").json()["step"]
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        recovery = _recovery_seconds(client, job_id, killed, at_kill)
        final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        series = _series_ok(client, job_id, epochs)
    steps_per_epoch = final["total_steps"] // epochs
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 2
    assert at_kill - saved <= steps_per_epoch, "lost more than one snapshot interval"
    assert recovery < 60
    report(
        "sigkill training child",
        recovery_s=round(recovery, 2),
        steps_lost=at_kill - saved,
        snapshot_interval_steps=steps_per_epoch,
        attempts=final["attempts"],
        **series,
    )


def test_sigkill_of_the_whole_worker_then_restart_resumes(env: Env) -> None:
    epochs = 8
    with env.stack.client() as client:
        job_id = _submit(client, env.datasets["d28"], "kill-worker", epochs=epochs)
        _wait_checkpoint(client, job_id, 3)
        pid = _worker_pid(client, "rel-a")
        child = training_child(pid, job_id)
        at_kill = client.get(f"/jobs/{job_id}").json()["step"]
        saved = max(c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json())
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        child.wait(timeout=10)  # the child dies with its worker
        env.stack.start_worker("rel-a", "--cpu")
        recovery = _recovery_seconds(client, job_id, killed, at_kill)
        final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        series = _series_ok(client, job_id, epochs)
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 2
    assert "stopped answering" in json.dumps(final["status_history"])
    assert recovery < 60
    report(
        "sigkill whole worker + restart",
        recovery_s=round(recovery, 2),
        steps_lost=at_kill - saved,
        attempts=final["attempts"],
        **series,
    )


def test_graceful_shutdown_requeues_without_spending_an_attempt(env: Env) -> None:
    with env.stack.client() as client:
        job_id = _submit(client, env.datasets["d28"], "graceful", epochs=6)
        _wait_checkpoint(client, job_id, 2)
        pid = _worker_pid(client, "rel-a")
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=60)
        waiting = client.get(f"/jobs/{job_id}").json()
        assert waiting["status"] == "waiting", waiting
        assert waiting["attempts"] == 0
        env.stack.start_worker("rel-a", "--cpu")
        final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        series = _series_ok(client, job_id, 6)
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 1
    report("graceful shutdown", attempts=final["attempts"], **series)


def test_a_job_that_kills_its_worker_every_epoch_ends_in_error_and_others_finish(
    env: Env,
) -> None:
    env.stack.start_worker("rel-b", "--cpu")
    with env.stack.client() as client:
        doomed = _submit(client, env.datasets["d28"], "doomed", epochs=40)
        kills = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = client.get(f"/jobs/{doomed}").json()
            if job["status"] == "error":
                break
            if job["status"] == "running" and job["epoch"] >= 1:
                pid = _worker_pid(client, job["worker"])
                try:
                    training_child(pid, doomed, timeout=5).send_signal(signal.SIGKILL)
                    kills += 1
                except (AssertionError, psutil.Error):
                    pass
                time.sleep(1)
            time.sleep(0.2)
        others = [_submit(client, env.datasets["d8"], f"bystander-{i}", epochs=1) for i in range(3)]
        finals = [wait_for(client, f"/jobs/{o}", timeout=300) for o in others]
        job = client.get(f"/jobs/{doomed}").json()
    assert job["status"] == "error"
    assert "gave up after 3 attempts" in job["error"]
    assert [f["status"] for f in finals] == ["done"] * 3
    report("crash every epoch", kills=kills, attempts=job["attempts"], error=job["error"])


def test_visibility_timeout_is_above_the_longest_job() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    options = create_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] > settings.max_job_seconds


def test_redis_restart_with_30_jobs_queued_runs_each_once(env: Env) -> None:
    with env.stack.client() as client:
        ids = [_submit(client, env.datasets["d8"], f"queued-{i}", epochs=1) for i in range(30)]
        env.redis.restart()  # no persistence: every queued message is gone
        restarted = time.monotonic()
        finals = [wait_for(client, f"/jobs/{i}", timeout=600) for i in ids]
        elapsed = time.monotonic() - restarted
    assert [f["status"] for f in finals] == ["done"] * 30
    assert all(f["attempts"] == 1 for f in finals)
    assert all([h["status"] for h in f["status_history"]].count("running") == 1 for f in finals)
    report("redis restart with 30 queued", jobs=30, all_done_s=round(elapsed, 1), run_twice=0)


def test_submissions_while_redis_is_down_wait_and_are_sent_when_it_returns(env: Env) -> None:
    with env.stack.client() as client:
        env.redis.stop()
        try:
            started = time.monotonic()
            resp = client.post(
                "/jobs",
                json={
                    "dataset_id": env.datasets["d8"]["id"],
                    "name": "redis-down",
                    "network": "lenet",
                    "hyperparameters": {"epochs": 1},
                },
            )
            latency = time.monotonic() - started
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["jobs"][0]["id"]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "waiting"
        finally:
            env.redis.start()
        final = wait_for(client, f"/jobs/{job_id}", timeout=180)
    assert final["status"] == "done"
    report("submit while redis is down", submit_s=round(latency, 2))


def test_postgres_outage_gives_only_503_then_recovers(env: Env) -> None:
    statuses: Counter[int] = Counter()
    phase = {"name": "before"}
    by_phase: dict[str, Counter[int]] = {
        "before": Counter(),
        "outage": Counter(),
        "after": Counter(),
    }
    stop = threading.Event()
    slowest = [0.0]

    def load() -> None:
        with env.stack.client() as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    code = client.get("/jobs", params={"per_page": 5}, timeout=20).status_code
                except httpx.HTTPError:
                    code = 0
                slowest[0] = max(slowest[0], time.monotonic() - started)
                statuses[code] += 1
                by_phase[phase["name"]][code] += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    phase["name"] = "outage"
    env.proxy.cut()
    time.sleep(6)
    env.proxy.restore()
    time.sleep(3)  # the pool reconnects by itself
    phase["name"] = "after"
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join()
    with env.stack.client() as client:
        resp = client.get("/jobs")
        assert resp.status_code == 200
    outage = by_phase["outage"]
    assert set(outage) <= {200, 503}, outage
    assert outage[503] > 0
    assert set(by_phase["after"]) == {200}, by_phase["after"]
    assert 500 not in statuses
    assert 0 not in statuses
    assert slowest[0] < 15
    report(
        "postgres outage",
        outage_responses=dict(outage),
        after=dict(by_phase["after"]),
        slowest_s=round(slowest[0], 2),
    )


def test_60_concurrent_submissions_from_20_clients(env: Env) -> None:
    ids: list[str] = []
    codes: Counter[int] = Counter()
    lock = threading.Lock()

    def client_thread(n: int) -> None:
        with env.stack.client() as client:
            for i in range(3):
                resp = client.post(
                    "/jobs",
                    json={
                        "dataset_id": env.datasets["d8"]["id"],
                        "name": f"burst-{n}-{i}",
                        "network": "lenet",
                        "hyperparameters": {"epochs": 1, "batch_size": 128},
                    },
                )
                with lock:
                    codes[resp.status_code] += 1
                    if resp.status_code == 202:
                        ids.append(resp.json()["jobs"][0]["id"])

    started = time.monotonic()
    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submit_s = time.monotonic() - started
    with env.stack.client() as client:
        finals = [wait_for(client, f"/jobs/{i}", timeout=900) for i in ids]
    assert codes == Counter({202: 60})
    assert len(set(ids)) == 60
    assert [f["status"] for f in finals] == ["done"] * 60
    assert all([h["status"] for h in f["status_history"]].count("running") == 1 for f in finals)
    report(
        "60 submissions from 20 clients",
        accepted=60,
        server_errors=0,
        submit_s=round(submit_s, 2),
        all_done_s=round(time.monotonic() - started, 1),
        run_twice=0,
    )


def test_a_short_visibility_timeout_redelivers_but_the_job_runs_once(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two workers whose broker redelivers after 2 s; a job of several seconds runs once."""
    extra = Stack(
        env={
            **env.stack.env,
            "DIGITS_VISIBILITY_TIMEOUT": "2",
            "DIGITS_BROKER_PREFIX": f"vis-{uuid.uuid4().hex[:6]}:",
        },
        logs=tmp_path_factory.mktemp("logs-vis"),
        token=env.stack.token,
    )
    extra.port = env.stack.port
    try:
        extra.start_worker("vis-a", "--cpu", "--queues", "vis")
        extra.start_worker("vis-b", "--cpu", "--queues", "vis")
        from shared.queue import TRAIN

        with env.stack.client() as client:
            job_id = _submit(client, env.datasets["d28"], "visibility", epochs=20, gpu="nobody")
            app = create_celery(
                Settings(
                    broker_url=env.redis.url,
                    broker_prefix=extra.env["DIGITS_BROKER_PREFIX"],
                    visibility_timeout=2,
                )
            )
            app.send_task(TRAIN, args=[job_id], queue="vis", routing_key="vis")
            final = wait_for(client, f"/jobs/{job_id}", timeout=300)
        logs = extra.log("worker-vis-a") + extra.log("worker-vis-b")
        redelivered = logs.count(f"job={job_id} nothing to claim")
    finally:
        extra.stop()
    assert final["status"] == "done", final["error"]
    assert final["attempts"] == 1
    assert [h["status"] for h in final["status_history"]].count("running") == 1
    assert redelivered >= 1, "the broker never redelivered"
    report("short visibility timeout", redeliveries=redelivered, runs=1)
