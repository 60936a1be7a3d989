"""The embedded default: SQLite and the kombu filesystem broker, started by `digits up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cli.supervisor import listening
from tests.support import (
    LENET,
    ROOT,
    digits_arrays,
    free_port,
    post_dataset,
    wait_for,
    write_class_folders,
    zip_folder,
)

IMPORTED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`digits up` on a free port with an empty data directory and no other configuration."""
    data = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update({"DIGITS_DATA_DIR": str(data), "DIGITS_PORT": str(port)})
    log = open(data / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if (
                listening("127.0.0.1", port)
                and httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
            ):
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (data / "up.log").read_text()
        time.sleep(0.3)
    else:
        raise AssertionError((data / "up.log").read_text())
    # the worker is ready when its Celery banner says so
    while time.monotonic() < deadline and b"ready." not in (data / "up.log").read_bytes():
        time.sleep(0.3)
    yield proc, url, data
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    log.close()


def test_up_serves_health_and_docs_on_sqlite_and_the_filesystem_broker(up) -> None:  # type: ignore[no-untyped-def]
    _proc, url, data = up
    health = httpx.get(url + "/api/v1/health").json()
    assert health["status"] == "ok"
    assert health["database"]["detail"] == "sqlite"
    assert "filesystem" in health["broker"]["detail"].lower()
    assert httpx.get(url + "/docs").status_code == 200
    assert (data / "digits.db").is_file()


def test_first_start_prints_an_admin_token_that_works(up) -> None:  # type: ignore[no-untyped-def]
    _proc, url, data = up
    token = (data / "admin-token").read_text().strip()
    assert token.startswith("dgt_")
    assert token in (data / "up.log").read_text()
    assert (data / "admin-token").stat().st_mode & 0o077 == 0
    me = httpx.get(url + "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "admin"
    assert me.json()["is_admin"] is True
    assert httpx.get(url + "/api/v1/datasets").status_code == 401


def test_digits_import_on_the_embedded_default(up, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _proc, url, data = up
    images, labels = digits_arrays()
    folder = write_class_folders(tmp_path / "digits", images, labels)
    archive = zip_folder(folder, tmp_path / "digits.zip", prefix="digits/")
    token = (data / "admin-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url + "/api/v1", timeout=60, headers=headers) as client:
        resp = post_dataset(
            client,
            {"name": "digits", "image_width": 28, "image_height": 28, "channels": 1},
            {"archive": ("digits.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        ds = wait_for(client, f"/datasets/{resp.json()['id']}")
    assert ds["status"] == "done", ds["error"]
    IMPORTED["digits"] = ds
    assert len(ds["classes"]) == 10
    assert ds["num_images"] == 1797
    assert ds["splits"]["val"]["images"] == pytest.approx(1797 * 0.25, abs=5)


def test_lenet_trains_to_97_percent_on_the_embedded_default(up) -> None:  # type: ignore[no-untyped-def]
    _proc, url, data = up
    dataset = IMPORTED.get("digits")
    assert dataset, "the import test runs first"
    token = (data / "admin-token").read_text().strip()
    with httpx.Client(
        base_url=url + "/api/v1", timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": dataset["id"],
                "name": "lenet",
                "network": "lenet",
                "hyperparameters": LENET,
            },
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=300)
        checkpoints = {c["name"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()}
    assert job["status"] == "done", job["error"]
    assert job["best"]["val.accuracy"]["value"] >= 0.97  # reached at some validation
    assert {"best", "last"} <= checkpoints


def test_ctrl_c_stops_everything_up_started(up) -> None:  # type: ignore[no-untyped-def]
    proc, url, _data = up
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running: {alive}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/api/v1/health", timeout=2)
