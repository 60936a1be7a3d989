"""The `digits` command against a live server: each command's happy path and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Stack, digits_arrays, write_class_folders

DIGITS = [sys.executable, "-m", "cli"]


def run(
    stack: Stack | None,
    *args: str,
    token: str | None = None,
    url: str | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env["DIGITS_URL"] = url or (stack.url if stack else "")
    env["DIGITS_TOKEN"] = token if token is not None else (stack.token if stack else "")
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*DIGITS, *args], capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=timeout
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = digits_arrays()
    return write_class_folders(tmp_path_factory.mktemp("cli") / "digits", images, labels)


@pytest.fixture(scope="module")
def dataset(pg_stack: Stack, folder: Path) -> dict:
    result = run(
        pg_stack,
        "datasets",
        "create",
        str(folder),
        "--name",
        "cli-digits",
        "--width",
        "28",
        "--height",
        "28",
        "--channels",
        "1",
        "--wait",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def job(pg_stack: Stack, dataset: dict) -> dict:
    result = run(
        pg_stack,
        "jobs",
        "create",
        "--dataset",
        dataset["id"],
        "--network",
        "lenet",
        "--epochs",
        "3",
        "--learning-rate",
        "0.05",
        "--batch-size",
        "32",
        "--name",
        "cli-lenet",
        "--watch",
    )
    assert result.returncode == 0, result.stderr
    assert "cli-lenet: done after 3.00 epochs, val accuracy" in result.stdout
    listed = json.loads(run(pg_stack, "jobs", "list", "--json").stdout)
    return next(j for j in listed if j["name"] == "cli-lenet")


def test_datasets_create_packs_a_folder_and_imports_it(dataset: dict) -> None:
    assert dataset["status"] == "done"
    assert dataset["num_images"] == 1797


def test_datasets_list_show_and_delete(pg_stack: Stack, folder: Path, dataset: dict) -> None:
    table = run(pg_stack, "datasets", "list")
    assert table.returncode == 0
    assert "cli-digits" in table.stdout
    show = run(pg_stack, "datasets", "show", dataset["id"])
    assert show.returncode == 0
    assert "1797 imported" in show.stdout
    extra = json.loads(run(pg_stack, "datasets", "create", str(folder / "0"), "--json").stdout)
    deleted = run(pg_stack, "datasets", "delete", extra["id"])
    assert deleted.returncode == 0, deleted.stderr
    missing = run(pg_stack, "datasets", "show", extra["id"])
    assert missing.returncode == 5
    assert "not found" in missing.stderr


def test_datasets_create_from_a_missing_path_is_a_usage_error(pg_stack: Stack) -> None:
    result = run(pg_stack, "datasets", "create", "/no/such/folder")
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_jobs_create_watch_and_show(pg_stack: Stack, job: dict) -> None:
    assert job["status"] == "done"
    show = run(pg_stack, "jobs", "show", job["id"])
    assert show.returncode == 0
    assert "val.accuracy" in show.stdout
    as_json = json.loads(run(pg_stack, "jobs", "show", job["id"], "--json").stdout)
    assert as_json["id"] == job["id"]


def test_jobs_clone_abort_and_delete(pg_stack: Stack, job: dict) -> None:
    cloned = run(
        pg_stack, "jobs", "clone", job["id"], "--name", "cli-clone", "--epochs", "300", "--json"
    )
    assert cloned.returncode == 0, cloned.stderr
    clone_id = json.loads(cloned.stdout)["jobs"][0]["id"]
    aborted = run(pg_stack, "jobs", "abort", clone_id)
    assert aborted.returncode == 0, aborted.stderr
    watched = run(pg_stack, "jobs", "watch", clone_id)
    assert watched.returncode == 1  # it ended aborted
    assert "aborted" in watched.stdout
    assert run(pg_stack, "jobs", "delete", clone_id).returncode == 0
    again = run(pg_stack, "jobs", "abort", clone_id)
    assert again.returncode == 5


def test_jobs_create_with_a_bad_network_is_rejected(pg_stack: Stack, dataset: dict) -> None:
    result = run(pg_stack, "jobs", "create", "--dataset", dataset["id"], "--network", "nonet")
    assert result.returncode == 6
    assert "rejected (422)" in result.stderr


def test_classify_and_download(pg_stack: Stack, job: dict, folder: Path, tmp_path: Path) -> None:
    image = sorted((folder / "3").iterdir())[0]
    result = run(pg_stack, "classify", job["id"], str(image), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert image.name in result.stdout
    out = tmp_path / "model.zip"
    dl = run(pg_stack, "download", job["id"], "--format", "zip", "-o", str(out))
    assert dl.returncode == 0, dl.stderr
    assert out.stat().st_size > 1000
    missing = run(pg_stack, "classify", job["id"], str(tmp_path / "nope.png"))
    assert missing.returncode == 2


def test_gpus_and_queue(pg_stack: Stack) -> None:
    gpus = run(pg_stack, "gpus")
    assert gpus.returncode == 0
    assert "no GPUs registered" in gpus.stdout
    queue = run(pg_stack, "queue")
    assert queue.returncode == 0
    assert "train-test-1" in queue.stdout
    assert "waiting job(s)" in queue.stdout


def test_unknown_id_server_down_and_bad_token(pg_stack: Stack) -> None:
    unknown = run(pg_stack, "jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 5
    down = run(pg_stack, "jobs", "list", url="http://127.0.0.1:9")
    assert down.returncode == 3
    assert "cannot reach the digits server" in down.stderr
    bad = run(pg_stack, "datasets", "list", token="dgt_wrong")
    assert bad.returncode == 4
    assert "DIGITS_TOKEN" in bad.stderr
