"""One lifecycle for every kind of queued work, end to end with real processes.

Model work (inference, evaluation) and imports that outlast a short lease keep it, because one
worker-side lease is renewed in the background for whatever runs; a second cpu worker never
runs a copy beside the first. Every scenario prints a `LIFECYCLE {...}` line with its figures
(docs/reliability.md collects them).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database
from tests.support import (
    Stack,
    digits_arrays,
    post_dataset,
    wait_for,
    write_class_folders,
    zip_folder,
)

pytestmark = pytest.mark.timeout(600)

LEASE = 2.0

# Six 3x3 convolutions of 64 channels at 28x28: about 0.2 GFLOP an image, so classifying or
# evaluating ~1,800 digits takes several leases on two CPU cores (the point of the test).
HEAVY = {
    "kind": "custom",
    "layers": [
        *[
            layer
            for _ in range(6)
            for layer in (
                {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1},
                {"type": "relu"},
            )
        ],
        {"type": "adaptive_avgpool2d", "output_size": 1},
        {"type": "flatten"},
        {"type": "linear"},
    ],
}


def report(scenario: str, **figures: Any) -> None:
    print("LIFECYCLE " + json.dumps({"scenario": scenario, **figures}), flush=True)


class Env:
    def __init__(self, stack: Stack, tiny: dict, digits: dict, model_job: dict) -> None:
        self.stack, self.tiny, self.digits, self.model_job = stack, tiny, digits, model_job


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, digits_zip: Path, pg_env: dict[str, str]
) -> Iterator[Env]:
    url = create_pg_database()
    from shared import migrate
    from shared.settings import Settings

    migrate.upgrade(Settings(database_url=url))
    env = {
        **pg_env,
        "DIGITS_DATABASE_URL": url,
        "DIGITS_BROKER_URL": REDIS_URL,
        "DIGITS_BROKER_PREFIX": f"life-{uuid.uuid4().hex[:8]}:",
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("life-data")),
        "DIGITS_HEARTBEAT_INTERVAL": "0.5",
        "DIGITS_WORKER_STALE_AFTER": "4",
        "DIGITS_LEASE_TIMEOUT": str(LEASE),
        "DIGITS_REAPER_INTERVAL": "0.5",
        "DIGITS_RESEND_AFTER": "4",
        "DIGITS_MAX_ATTEMPTS": "3",
    }
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("logs-life"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("life-cpu-1", "--queues", "cpu")
        stack.start_worker("life-cpu-2", "--queues", "cpu")
        stack.start_worker("life-train", "--cpu")
        images, labels = digits_arrays()
        tiny_zip = zip_folder(
            write_class_folders(tmp_path_factory.mktemp("tiny") / "d", images[:200], labels[:200]),
            tmp_path_factory.mktemp("tinyz") / "tiny.zip",
        )
        with stack.client() as client:
            shape = {"image_width": 28, "image_height": 28, "channels": 1}
            resp = post_dataset(
                client,
                {"name": "tiny", **shape, "max_per_class": 6, "val_pct": 34, "seed": 1},
                {"archive": ("tiny.zip", tiny_zip.read_bytes(), "application/zip")},
            )
            tiny = wait_for(client, f"/datasets/{resp.json()['id']}")
            resp = post_dataset(
                client,
                {"name": "digits", **shape, "val_pct": 25, "seed": 1},
                {"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
            )
            digits = wait_for(client, f"/datasets/{resp.json()['id']}")
            assert tiny["status"] == digits["status"] == "done", (tiny, digits)
            resp = client.post(
                "/jobs",
                json={
                    "dataset_id": tiny["id"],
                    "name": "heavy",
                    "network": HEAVY,
                    "hyperparameters": {"epochs": 1, "batch_size": 16, "seed": 1},
                },
            )
            assert resp.status_code == 202, resp.text
            model_job = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=180)
            assert model_job["status"] == "done", model_job
        yield Env(stack, tiny, digits, model_job)
    finally:
        stack.stop()
        drop_pg_database(url)


def _statuses(job: dict[str, Any]) -> list[str]:
    return [entry["status"] for entry in job["status_history"]]


def _assert_ran_once(job: dict[str, Any]) -> None:
    assert job["status"] == "done", job
    assert job["attempts"] == 1, job["status_history"]
    assert _statuses(job) == ["initialized", "waiting", "running", "done"], job["status_history"]


def test_an_inference_job_longer_than_the_lease_runs_once(env: Env, digits_zip: Path) -> None:
    """Classify 1,797 images (several leases of work) with a second cpu worker idle beside."""
    with env.stack.client() as client:
        started = time.monotonic()
        resp = client.post(
            f"/jobs/{env.model_job['id']}/classify",
            files={"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=300)
        seconds = time.monotonic() - started
        _assert_ran_once(job)
        results = client.get(
            f"/jobs/{job['id']}/results", params={"per_page": 1000, "page": 1}
        ).json()
        names: list[str] = []
        page = 1
        while True:
            body = client.get(
                f"/jobs/{job['id']}/results", params={"per_page": 1000, "page": page}
            ).json()
            names += [item["filename"] for item in body["items"]]
            if page * 1000 >= body["total"]:
                break
            page += 1
        duplicates = sum(n - 1 for n in Counter(names).values() if n > 1)
        report(
            "inference longer than the lease",
            lease_s=LEASE,
            seconds=round(seconds, 1),
            leases=round(seconds / LEASE, 1),
            attempts=job["attempts"],
            inputs=1797,
            answered=len(names),
            duplicates=duplicates,
            cpu_workers=2,
        )
        assert results["total"] == len(names) == 1797
        assert duplicates == 0
        assert seconds > 2 * LEASE, "the work must outlast the lease for this test to mean anything"


def test_an_evaluation_longer_than_the_lease_runs_once(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Evaluate on a labelled archive of the digits three times over (5,391 images): its import
    and the forward passes are many leases of silent work on any machine (the 1,347 stored
    training images alone took under two leases on a fast one)."""
    images, labels = digits_arrays()
    reps = 3
    folder = write_class_folders(
        tmp_path_factory.mktemp("eval") / "d",
        images.repeat(reps, axis=0),
        labels.repeat(reps, axis=0),
    )
    archive = zip_folder(folder, tmp_path_factory.mktemp("evalz") / "eval.zip")
    with env.stack.client() as client:
        started = time.monotonic()
        resp = client.post(
            f"/jobs/{env.model_job['id']}/evaluate",
            files={"archive": ("eval.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(client, f"/jobs/{resp.json()['id']}", timeout=300)
        seconds = time.monotonic() - started
        _assert_ran_once(job)
        result = client.get(f"/jobs/{job['id']}/results").json()
        total = sum(sum(row) for row in result["confusion_matrix"])
        report(
            "evaluation longer than the lease",
            lease_s=LEASE,
            seconds=round(seconds, 1),
            leases=round(seconds / LEASE, 1),
            attempts=job["attempts"],
            images=result["images"],
            confusion_total=total,
            cpu_workers=2,
        )
        assert result["images"] == total == reps * len(labels)
        assert seconds > 2 * LEASE, "the work must outlast the lease for this test to mean anything"


def test_an_import_longer_than_the_lease_runs_once(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Import 25,158 small PNGs (extraction alone is a long silent step)."""
    images, labels = digits_arrays()
    folder = tmp_path_factory.mktemp("big") / "d"
    reps = 14
    write_class_folders(
        folder,
        images.repeat(reps, axis=0),
        labels.repeat(reps, axis=0),
    )
    archive = zip_folder(folder, tmp_path_factory.mktemp("bigz") / "big.zip")
    with env.stack.client() as client:
        started = time.monotonic()
        resp = post_dataset(
            client,
            # PNG-encoded at 96x96: more work an image than the files cost to write here (at
            # 64x64 raw a quiet machine imported them in under two leases)
            {
                "name": "big",
                "image_width": 96,
                "image_height": 96,
                "channels": 3,
                "seed": 2,
                "encoding": "png",
            },
            {"archive": ("big.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        dataset = wait_for(client, f"/datasets/{resp.json()['id']}", timeout=300)
        seconds = time.monotonic() - started
        report(
            "import longer than the lease",
            lease_s=LEASE,
            seconds=round(seconds, 1),
            leases=round(seconds / LEASE, 1),
            attempts=dataset.get("attempts"),
            images=dataset["num_images"],
            cpu_workers=2,
        )
        assert dataset["status"] == "done", dataset
        assert dataset["num_images"] == 1797 * reps
        assert [e["status"] for e in dataset["status_history"]] == [
            "initialized",
            "waiting",
            "running",
            "done",
        ], dataset["status_history"]
        assert seconds > 2 * LEASE, "the work must outlast the lease for this test to mean anything"


def _worker_busy(client: httpx.Client, name: str) -> bool:
    return any(w["name"] == name and w["busy"] for w in client.get("/workers").json())


def _wait_free(client: httpx.Client, job_id: str, worker: str, timeout: float = 30) -> float:
    """Seconds until the job is final and the worker runs nothing."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "error", "aborted") and not _worker_busy(client, worker):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} or worker {worker} still busy after {timeout}s")


def _long_job(client: httpx.Client, env: Env, name: str) -> str:
    resp = client.post(
        "/jobs",
        json={
            "dataset_id": env.tiny["id"],
            "name": name,
            "network": "lenet",
            "hyperparameters": {"epochs": 10_000, "batch_size": 8, "seed": 1},
        },
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobs"][0]["id"])


def test_50_jobs_created_and_aborted_at_once_all_end_aborted(env: Env) -> None:
    """No delay, and delays spread over the claim (0 to 0.9 s): never the lost update."""
    frees: list[float] = []
    statuses: Counter[str] = Counter()
    flags: list[bool] = []
    with env.stack.client() as client:
        for i in range(50):
            job_id = _long_job(client, env, f"abort-{i}")
            time.sleep((i % 10) * 0.1)
            resp = client.post(f"/jobs/{job_id}/abort")
            assert resp.status_code == 200, resp.text
            frees.append(_wait_free(client, job_id, "life-train"))
            job = client.get(f"/jobs/{job_id}").json()
            statuses[job["status"]] += 1
            flags.append(job["status_history"][-2]["status"] == "running")
            assert job["status"] == "aborted", job
            assert [e["status"] for e in job["status_history"]][-1] == "aborted"
            second = client.post(f"/jobs/{job_id}/abort")
            assert second.status_code == 409
    frees.sort()
    report(
        "50 jobs created and aborted at once",
        aborted=statuses["aborted"],
        aborted_while_running=sum(flags),
        worker_free_p50_s=round(frees[len(frees) // 2], 2),
        worker_free_max_s=round(frees[-1], 2),
    )
    assert statuses["aborted"] == 50
    assert frees[-1] < 2.0, frees[-5:]


def test_a_job_deleted_while_running_stops_and_leaves_no_folder(env: Env) -> None:
    data_dir = Path(env.stack.env["DIGITS_DATA_DIR"])
    with env.stack.client() as client:
        job_id = _long_job(client, env, "delete-me")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] == "running" and job["step"] > 0:
                break
            time.sleep(0.1)
        folder = data_dir / "jobs" / job_id
        assert folder.is_dir()
        started = time.monotonic()
        assert client.delete(f"/jobs/{job_id}").status_code == 204
        assert client.get(f"/jobs/{job_id}").status_code == 404
        assert job_id not in [j["id"] for j in client.get("/jobs").json()["items"]]
        while folder.exists() or _worker_busy(client, "life-train"):
            assert time.monotonic() - started < 30, "the deleted job is still running"
            time.sleep(0.1)
        report("delete while running", gone_after_s=round(time.monotonic() - started, 2))
