"""Training jobs end to end: HTTP API, PostgreSQL, Redis, a real training worker (CPU)."""

from __future__ import annotations

import time

import pytest

from shared.lr_policy import lr_at
from tests.support import LENET, Stack, sse_events, submit, wait_for


def test_lenet_on_digits_reaches_97_percent_and_lists_metrics_and_checkpoints(
    pg_stack: Stack, lenet_job: dict
) -> None:
    job = lenet_job["job"]
    assert job["status"] == "done", job["error"]
    assert job["best"]["val.accuracy"]["value"] >= 0.97  # reached at some validation
    assert job["best"]["val.accuracy"]["value"] >= job["last"]["val.accuracy"]["value"]
    assert job["progress"] == 1.0
    assert job["worker"] == "train-test-1"
    with pg_stack.client() as client:
        metrics = client.get(f"/jobs/{job['id']}/metrics").json()["items"]
        names = {p["name"] for p in metrics}
        assert {"train.loss", "val.loss", "val.accuracy", "val.top5", "train.lr"} <= names
        val = [p for p in metrics if p["name"] == "val.accuracy"]
        assert len(val) == LENET["epochs"]
        checkpoints = {c["name"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()}
        # best, last and the newest DIGITS_KEEP_SNAPSHOTS (5) epoch snapshots are kept
        epochs = LENET["epochs"]
        assert checkpoints == {
            "best",
            "last",
            *(f"epoch-{e}" for e in range(epochs - 4, epochs + 1)),
        }
        assert "val.accuracy" in client.get(f"/jobs/{job['id']}/checkpoints").json()[-1]["metrics"]
        only_loss = client.get(
            f"/jobs/{job['id']}/metrics", params={"names": "val.loss", "since": val[2]["id"]}
        ).json()
        assert all(p["name"] == "val.loss" and p["id"] > val[2]["id"] for p in only_loss["items"])
        assert client.get(f"/jobs/{job['id']}/logs").text


def test_sse_from_submission_sees_every_status_and_validation_in_order(lenet_job: dict) -> None:
    events = lenet_job["events"]
    ids = [e[0] for e in events]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    statuses = [e[2]["status"] for e in events if e[1] == "status"]
    assert statuses == ["initialized", "waiting", "running", "done"]
    val_epochs = [
        p["epoch"]
        for e in events
        if e[1] == "metrics"
        for p in e[2]["points"]
        if "val.accuracy" in p["values"]
    ]
    assert val_epochs == sorted(val_epochs)
    assert len(val_epochs) == LENET["epochs"]
    logs = [e[2] for e in events if e[1] == "log"]
    offsets = [e["offset"] for e in logs]
    assert logs, "the stream carries the job's log lines"
    assert offsets == sorted(offsets)
    assert any("val.accuracy" in line for e in logs for line in e["lines"])


def test_the_log_is_followed_by_byte_offset(pg_stack: Stack, lenet_job: dict) -> None:
    job_id = lenet_job["job"]["id"]
    with pg_stack.client() as client:
        whole = client.get(f"/jobs/{job_id}/logs")
        size = int(whole.headers["X-Log-Offset"])
        assert size == len(whole.content)
        half = client.get(f"/jobs/{job_id}/logs", params={"offset": size // 2})
        rest = client.get(
            f"/jobs/{job_id}/logs", params={"offset": int(half.headers["X-Log-Offset"])}
        )
        assert rest.text == ""  # all whole lines were given
        assert int(half.headers["X-Log-Offset"]) == size
        assert whole.content.endswith(half.content)


def test_sse_reconnect_with_last_event_id_misses_nothing(pg_stack: Stack, lenet_job: dict) -> None:
    everything = lenet_job["events"]
    with pg_stack.client() as client:
        first = sse_events(client, lenet_job["job"]["id"], stop_after=5)
        rest = sse_events(client, lenet_job["job"]["id"], last_id=first[-1][0])
    assert [e[0] for e in first + rest] == [e[0] for e in everything]


def test_sweep_of_two_rates_and_two_batch_sizes_makes_four_jobs_in_one_group(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": digits_dataset["id"],
                "name": "sweep",
                "network": "lenet",
                "hyperparameters": {
                    "epochs": 1,
                    "learning_rate": [0.01, 0.05],
                    "batch_size": [32, 64],
                },
            },
        )
        assert resp.status_code == 202, resp.text
        jobs = resp.json()["jobs"]
        assert len(jobs) == 4
        assert {j["group"] for j in jobs} == {"sweep"}
        combos = {
            (
                j["request"]["hyperparameters"]["learning_rate"],
                j["request"]["hyperparameters"]["batch_size"],
            )
            for j in jobs
        }
        assert combos == {(0.01, 32), (0.01, 64), (0.05, 32), (0.05, 64)}
        finals = [wait_for(client, f"/jobs/{j['id']}", timeout=300) for j in jobs]
        assert [f["status"] for f in finals] == ["done"] * 4
        listed = client.get("/jobs", params={"group": "sweep"}).json()
        assert listed["total"] == 4


def test_abort_stops_a_running_job_within_two_seconds_and_the_worker_moves_on(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        long = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "long",
                "network": "lenet",
                "hyperparameters": {"epochs": 500},
            },
        )[0]
        wait_for(client, f"/jobs/{long['id']}", until=("running",), timeout=120)
        time.sleep(1.0)
        start = time.monotonic()
        assert client.post(f"/jobs/{long['id']}/abort").status_code == 200
        final = wait_for(client, f"/jobs/{long['id']}", timeout=10)
        elapsed = time.monotonic() - start
        assert final["status"] == "aborted"
        assert elapsed < 2.0, f"abort took {elapsed:.2f}s"
        assert client.post(f"/jobs/{long['id']}/abort").status_code == 409
        nxt = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "after-abort",
                "network": "lenet",
                "hyperparameters": {"epochs": 1},
            },
        )[0]
        assert wait_for(client, f"/jobs/{nxt['id']}", timeout=120)["status"] == "done"


def test_the_same_task_delivered_twice_trains_once(
    pg_stack: Stack, digits_dataset: dict, pg_env: dict
) -> None:
    from shared.queue import TRAIN, TRAIN_QUEUE, create_celery
    from shared.settings import Settings

    with pg_stack.client() as client:
        job = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "twice",
                "network": "lenet",
                "hyperparameters": {"epochs": 2},
            },
        )[0]
        app = create_celery(
            Settings(
                broker_url=pg_env["DIGITS_BROKER_URL"], broker_prefix=pg_env["DIGITS_BROKER_PREFIX"]
            )
        )
        app.send_task(TRAIN, args=[job["id"]], queue=TRAIN_QUEUE, routing_key=TRAIN_QUEUE)
        final = wait_for(client, f"/jobs/{job['id']}", timeout=180)
        time.sleep(1.5)  # let the duplicate be consumed
        final = client.get(f"/jobs/{job['id']}").json()
        assert final["status"] == "done"
        assert final["attempts"] == 1
        assert [h["status"] for h in final["status_history"]].count("running") == 1
        points = client.get(f"/jobs/{job['id']}/metrics", params={"names": "val.accuracy"}).json()[
            "items"
        ]
        assert len(points) == 2
        assert len({p["step"] for p in points}) == 2


def test_bad_custom_network_is_rejected_naming_the_layer(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    layers = [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 5},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 8, "kernel_size": 15},
        {"type": "flatten"},
        {"type": "linear"},
    ]
    with pg_stack.client() as client:
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": digits_dataset["id"],
                "name": "bad",
                "network": {"kind": "custom", "layers": layers},
            },
        )
        assert resp.status_code == 400
        body = resp.json()
        assert body["code"] == "invalid_network"
        assert "layer 2 (conv2d)" in body["detail"]
        assert body["layer"] == 2
        unknown = client.post(
            "/jobs",
            json={
                "dataset_id": digits_dataset["id"],
                "name": "x",
                "network": "lenet",
                "colour": "red",
            },
        )
        assert unknown.status_code == 422
        assert client.get("/jobs", params={"status": "waiting"}).json()["total"] >= 0


def test_custom_network_trains(pg_stack: Stack, digits_dataset: dict) -> None:
    layers = [
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "dropout", "p": 0.1},
        {"type": "linear"},
    ]
    with pg_stack.client() as client:
        job = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "custom",
                "network": {"kind": "custom", "layers": layers},
                "hyperparameters": {"epochs": 2, "solver": "adam", "learning_rate": 0.001},
            },
        )[0]
        final = wait_for(client, f"/jobs/{job['id']}", timeout=180)
        assert final["status"] == "done", final["error"]
        assert final["last"]["val.accuracy"]["value"] > 0.5


def test_patch_clone_and_delete(pg_stack: Stack, lenet_job: dict, pg_env: dict) -> None:
    from pathlib import Path

    job_id = lenet_job["job"]["id"]
    with pg_stack.client() as client:
        patched = client.patch(f"/jobs/{job_id}", json={"notes": "first run", "group": "g1"})
        assert patched.status_code == 200
        assert patched.json()["notes"] == "first run"
        assert client.patch(f"/jobs/{job_id}", json={"status": "done"}).status_code == 422
        clone = client.post(
            f"/jobs/{job_id}/clone", json={"name": "clone", "hyperparameters": {"epochs": 1}}
        )
        assert clone.status_code == 202, clone.text
        cloned = clone.json()["jobs"][0]
        assert cloned["request"]["hyperparameters"]["epochs"] == 1
        assert cloned["request"]["hyperparameters"]["learning_rate"] == LENET["learning_rate"]
        assert cloned["notes"] == "first run"
        final = wait_for(client, f"/jobs/{cloned['id']}", timeout=180)
        assert final["status"] == "done"
        folder = Path(pg_env["DIGITS_DATA_DIR"]) / "jobs" / cloned["id"]
        assert folder.is_dir()
        assert client.delete(f"/jobs/{cloned['id']}").status_code == 204
        assert client.get(f"/jobs/{cloned['id']}").status_code == 404
        assert not folder.exists()
        # a dataset used by jobs cannot be deleted
        in_use = client.delete(f"/datasets/{lenet_job['job']['dataset_id']}")
        assert in_use.status_code == 409


def test_fine_tune_from_a_previous_job(pg_stack: Stack, lenet_job: dict) -> None:
    job = lenet_job["job"]
    with pg_stack.client() as client:
        ft = submit(
            client,
            {
                "dataset_id": job["dataset_id"],
                "name": "fine-tune",
                "network": {"kind": "previous", "job_id": job["id"], "checkpoint": "best"},
                "hyperparameters": {"epochs": 1, "learning_rate": 0.001},
            },
        )[0]
        final = wait_for(client, f"/jobs/{ft['id']}", timeout=180)
        assert final["status"] == "done", final["error"]
        # starting from a trained LeNet, one epoch at a small rate is already good
        assert final["last"]["val.accuracy"]["value"] >= 0.95
        missing = client.post(
            "/jobs",
            json={
                "dataset_id": job["dataset_id"],
                "name": "x",
                "network": {"kind": "previous", "job_id": job["id"], "checkpoint": 999},
            },
        )
        assert missing.status_code == 409


@pytest.mark.parametrize(
    "policy", ["fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid", "cosine"]
)
def test_lr_preview_returns_the_policy_curve(pg_stack: Stack, policy: str) -> None:
    with pg_stack.client() as client:
        body = client.get(
            "/lr-policies/preview", params={"policy": policy, "learning_rate": 0.1}
        ).json()
    assert len(body["values"]) == 101
    for p in (0, 25, 50, 75, 100):
        assert body["values"][p] == pytest.approx(lr_at(p, 0.1, policy, {}), abs=1e-12)


def test_networks_are_listed(pg_stack: Stack) -> None:
    with pg_stack.client() as client:
        names = {n["name"] for n in client.get("/networks").json()}
    assert {
        "lenet",
        "alexnet",
        "googlenet",
        "resnet18",
        "resnet50",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "convnext_tiny",
        "vgg16",
        "vit_b_16",
        "custom",
        "previous",
    } <= names
