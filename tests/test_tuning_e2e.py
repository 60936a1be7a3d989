"""Tuning end to end: Optuna studies over the job queue, with two real training workers.

One stack for every tuning test (its own PostgreSQL database, Redis prefix, API, a dataset
worker and two training workers): the digits at 28x28, LeNet with batch settings that keep an
epoch well under a second on a CPU. Each test prints a `TUNING {...}` line with its figures.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database
from tests.support import Stack, post_dataset, wait_for

pytestmark = pytest.mark.timeout(1500)

# a lease a loaded 2-core machine renews in time (3 s saw healthy jobs requeued)
LEASE = 6.0
# checkpoints only where a trial stops (pruned or done): nothing here resumes
BASE = {"epochs": 15, "seed": 3, "snapshot_interval": 0}
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    "solver": {"type": "categorical", "choices": ["sgd", "nesterov", "adam"]},
}


def report(scenario: str, **figures: Any) -> None:
    print("TUNING " + json.dumps({"scenario": scenario, **figures}), flush=True)


class Env:
    def __init__(self, stack: Stack, digits: dict[str, Any], url: str) -> None:
        self.stack, self.digits, self.url = stack, digits, url
        self.workers = ["tune-a", "tune-b"]


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, digits_zip: Path, pg_env: dict[str, str]
) -> Iterator[Env]:
    url = create_pg_database()
    from shared import migrate
    from shared.settings import Settings

    migrate.upgrade(Settings(database_url=url))
    environ = {
        **pg_env,
        "DIGITS_DATABASE_URL": url,
        "DIGITS_BROKER_URL": REDIS_URL,
        "DIGITS_BROKER_PREFIX": f"tune-{uuid.uuid4().hex[:8]}:",
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("tune-data")),
        "DIGITS_HEARTBEAT_INTERVAL": "0.5",
        "DIGITS_WORKER_STALE_AFTER": "5",
        "DIGITS_LEASE_TIMEOUT": str(LEASE),
        "DIGITS_REAPER_INTERVAL": "1",
        "DIGITS_RESEND_AFTER": "5",
        "DIGITS_TELEMETRY_INTERVAL": "5",
        "DIGITS_LOG_LEVEL": "INFO",
    }
    stack = Stack(env=environ, logs=tmp_path_factory.mktemp("logs-tune"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("tune-cpu", "--queues", "cpu")
        stack.start_worker("tune-a", "--cpu")
        stack.start_worker("tune-b", "--cpu")
        with stack.client() as client:
            resp = post_dataset(
                client,
                {
                    "name": "digits",
                    "image_width": 28,
                    "image_height": 28,
                    "channels": 1,
                    "val_pct": 25,
                    "seed": 1,
                },
                {"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
            )
            digits = wait_for(client, f"/datasets/{resp.json()['id']}", timeout=300)
            assert digits["status"] == "done", digits
        yield Env(stack, digits, url)
    finally:
        stack.stop()
        drop_pg_database(url)


def _wait_study(client: httpx.Client, study_id: str, timeout: float = 1200) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/studies/{study_id}").json()
        if body["status"] != "running" and body.get("finished_at"):
            return body
        time.sleep(1.0)
    raise AssertionError(f"study {study_id} still {body.get('status')}: {body.get('counts')}")


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if not (a["started_at"] and b["started_at"]):
        return False
    end_a = a["finished_at"] or "9999"
    end_b = b["finished_at"] or "9999"
    return a["started_at"] < end_b and b["started_at"] < end_a


def _optuna_trials(env: Env, name: str) -> list[Any]:
    import optuna

    from shared import tuning
    from shared.settings import Settings

    store = optuna.storages.RDBStorage(
        Settings(database_url=env.url).sqlalchemy_url,
        engine_kwargs={"connect_args": {"options": f"-c search_path={tuning.SCHEMA}"}},
    )
    try:
        study = optuna.load_study(study_name=name, storage=store)
        return list(study.get_trials(deepcopy=True))
    finally:
        store.engine.dispose()


def test_a_tpe_asha_study_prunes_and_beats_the_grid(env: Env) -> None:
    """16 trials over LR, momentum, batch size and solver, two at once, beside a 2x2 grid."""
    with env.stack.client() as client:
        started = time.monotonic()
        grid = client.post(
            "/jobs",
            json={
                "dataset_id": env.digits["id"],
                "name": "grid",
                "network": "lenet",
                "hyperparameters": {**BASE, "learning_rate": [0.01, 0.1], "batch_size": [32, 128]},
            },
        )
        assert grid.status_code == 202, grid.text
        resp = client.post(
            "/studies",
            json={
                "name": "lenet-tpe",
                "dataset_id": env.digits["id"],
                "network": "lenet",
                "hyperparameters": BASE,
                "search_space": SPACE,
                "objective": {"metric": "val.accuracy"},
                "sampler": {"type": "tpe", "seed": 1},
                "pruner": {"type": "asha", "min_epochs": 1, "reduction_factor": 3},
                "max_trials": 16,
                "max_concurrent": 2,
            },
        )
        assert resp.status_code == 202, resp.text
        created = resp.json()
        assert created["counts"]["waiting"] + created["counts"]["running"] == 2, created
        study = _wait_study(client, created["id"])
        grid_jobs = [wait_for(client, f"/jobs/{j['id']}", timeout=600) for j in grid.json()["jobs"]]
        seconds = time.monotonic() - started
        trials = study["trials"]
        # a grid job whose loss diverged ends in error with the best it reached before
        grid_best = max(j["best"].get("val.accuracy", {}).get("value", 0.0) for j in grid_jobs)
        used, unpruned = study["epochs_used"], study["epochs_unpruned"]
        clashes = [
            (a["number"], b["number"])
            for i, a in enumerate(trials)
            for b in trials[i + 1 :]
            if _overlaps(a, b) and a["params"] == b["params"]
        ]
        pruned = [t for t in trials if t["state"] == "pruned"]
        report(
            "16-trial TPE + ASHA study beside a 2x2 grid",
            seconds=round(seconds, 1),
            trials=len(trials),
            counts=study["counts"],
            epochs_used=used,
            epochs_unpruned=unpruned,
            fraction=round(used / unpruned, 3),
            best_value=study["best_value"],
            best_params=study["best"]["params"] if study["best"] else None,
            grid_best=grid_best,
            grid=[
                (
                    j["request"]["hyperparameters"]["learning_rate"],
                    j["request"]["hyperparameters"]["batch_size"],
                    j["best"].get("val.accuracy", {}).get("value"),
                    j["status"],
                )
                for j in grid_jobs
            ],
            importances=study["importances"],
            pruned_epochs=sorted(t["pruned_epoch"] for t in pruned),
        )
        assert study["status"] == "done", study["reason"]
        assert len(trials) == 16
        statuses = {t["status"] for t in trials}
        assert statuses == {"done"}, [(t["number"], t["status"], t["reason"]) for t in trials]
        assert {t["state"] for t in trials} <= {"complete", "pruned"}
        assert pruned, "ASHA pruned nothing"
        for trial in pruned:
            job = client.get(f"/jobs/{trial['job_id']}").json()
            assert job["status"] == "done"
            assert "trial.pruned" in job["last"], job["last"]
            assert job["status_history"][-1]["reason"].startswith("pruned"), job["status_history"]
            assert trial["pruned_epoch"] is not None
            assert trial["pruned_epoch"] < 15
        assert not clashes, clashes
        assert used <= 0.4 * unpruned, (used, unpruned)
        assert unpruned == 16 * 15
        assert study["best_value"] >= grid_best, (study["best_value"], grid_best)
        assert [h["number"] for h in study["history"]]
        bests = [h["best"] for h in study["history"] if h["best"] is not None]
        assert bests == sorted(bests), bests
        optuna_trials = _optuna_trials(env, f"digits-{study['id']}")
        assert len(optuna_trials) == 16
        assert {t.user_attrs["job_id"] for t in optuna_trials} == {t["job_id"] for t in trials}
        assert sum(t.state.name == "PRUNED" for t in optuna_trials) == len(pruned)


def _kill(env: Env, name: str) -> None:
    """SIGKILL a worker and its training child (its process group): a lost host."""
    for proc in env.stack.procs:
        if proc.poll() is None and name in proc.args:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
    raise AssertionError(f"no running worker {name}")


def test_a_worker_killed_mid_study_loses_and_doubles_nothing(env: Env) -> None:
    """Kill a worker while it trains a trial: it resumes elsewhere; Optuna counts it once."""
    with env.stack.client() as client:
        resp = client.post(
            "/studies",
            json={
                "name": "kill",
                "dataset_id": env.digits["id"],
                "network": "lenet",
                "hyperparameters": {"epochs": 8, "seed": 5, "batch_size": 32},
                "search_space": {
                    "learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True}
                },
                "sampler": {"type": "random", "seed": 2},
                "pruner": {"type": "none"},
                "max_trials": 3,
                "max_concurrent": 2,
            },
        )
        assert resp.status_code == 202, resp.text
        study_id = resp.json()["id"]
        victim: dict[str, Any] | None = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            for trial in client.get(f"/studies/{study_id}").json()["trials"]:
                if trial["state"] == "running" and trial["epochs"] >= 2:
                    job = client.get(f"/jobs/{trial['job_id']}").json()
                    if job["worker"] in env.workers:
                        victim = job
                        break
            time.sleep(0.2)
        assert victim is not None, "no trial got to epoch 2"
        killed_at = victim["epoch"]
        _kill(env, victim["worker"])
        study = _wait_study(client, study_id, timeout=600)
        job = client.get(f"/jobs/{victim['id']}").json()
        trials = study["trials"]
        optuna_trials = _optuna_trials(env, f"digits-{study_id}")
        resumed = optuna_trials[victim_number(trials, victim["id"])]
        report(
            "a worker killed mid-study",
            killed_worker=victim["worker"],
            killed_at_epoch=killed_at,
            attempts=job["attempts"],
            history=[e["status"] for e in job["status_history"]],
            trials=len(trials),
            optuna_trials=len(optuna_trials),
            states=sorted(t.state.name for t in optuna_trials),
            resumed_steps=sorted(resumed.intermediate_values),
        )
        assert study["status"] == "done", study["reason"]
        assert len(trials) == 3 == len(optuna_trials)
        assert all(t["state"] == "complete" for t in trials), trials
        # the kill requeued it (a later lease lapse on a busy machine would be one more)
        assert job["attempts"] >= 2, job["status_history"]
        assert "waiting" in [e["status"] for e in job["status_history"][3:]]
        assert sorted(resumed.intermediate_values) == list(range(1, 9))
        assert {t.state.name for t in optuna_trials} == {"COMPLETE"}
        assert sorted(t.number for t in optuna_trials) == [0, 1, 2]
        assert len({t.user_attrs["job_id"] for t in optuna_trials}) == 3
    # back to two training workers for the tests after this one
    name = victim["worker"]
    env.stack.procs = [p for p in env.stack.procs if p.poll() is None]
    env.stack.start_worker(name, "--cpu")


def victim_number(trials: list[dict[str, Any]], job_id: str) -> int:
    return next(t["number"] for t in trials if t["job_id"] == job_id)


def _columns(client: httpx.Client, job_id: str, names: str) -> dict[str, Any]:
    resp = client.get(f"/jobs/{job_id}/metrics", params={"names": names, "format": "columnar"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["series"])


def test_auto_learning_rate_and_the_recommended_recipe_train_good_models(env: Env) -> None:
    """learning_rate auto with DIGITS's defaults otherwise (step policy included), and LeNet's
    recommended recipe with only the epochs set: both on the digits, 15 epochs."""
    with env.stack.client() as client:
        auto = client.post(
            "/jobs",
            json={
                "dataset_id": env.digits["id"],
                "name": "auto-lr",
                "network": "lenet",
                # a fixed seed: over eight seeds here auto reached 0.969-0.976, and CI once
                # drew one that reached 0.964
                "hyperparameters": {"epochs": 15, "learning_rate": "auto", "seed": 11},
            },
        )
        assert auto.status_code == 202, auto.text
        recipe = client.post(
            "/jobs",
            json={
                "dataset_id": env.digits["id"],
                "name": "recommended",
                "network": "lenet",
                "recipe": "recommended",
                "hyperparameters": {"epochs": 15, "seed": 11},
            },
        )
        assert recipe.status_code == 202, recipe.text
        auto_job = wait_for(client, f"/jobs/{auto.json()['jobs'][0]['id']}", timeout=600)
        recipe_job = wait_for(client, f"/jobs/{recipe.json()['jobs'][0]['id']}", timeout=600)
        series = _columns(client, auto_job["id"], "lr_find.lr,lr_find.loss,lr_find.suggestion")
        suggestion = series["lr_find.suggestion"]["value"]
        lrs, losses = series["lr_find.lr"]["value"], series["lr_find.loss"]["value"]
        train_lr = _columns(client, auto_job["id"], "train.lr")["train.lr"]["value"]
        report(
            "learning_rate auto and the recommended recipe",
            auto_best=auto_job["best"]["val.accuracy"]["value"],
            suggestion=suggestion,
            curve_points=len(lrs),
            curve_lr_range=[min(lrs), max(lrs)],
            first_train_lr=train_lr[0],
            policy=auto_job["request"]["hyperparameters"]["lr_policy"],
            recipe_best=recipe_job["best"]["val.accuracy"]["value"],
            recipe=recipe_job["request"]["hyperparameters"],
        )
        assert auto_job["status"] == "done", auto_job["error"]
        assert auto_job["request"]["hyperparameters"]["learning_rate"] == "auto"
        assert auto_job["request"]["hyperparameters"]["lr_policy"] == "step"
        assert len(suggestion) == 1
        assert 1e-7 <= suggestion[0] <= 10
        assert len(lrs) == len(losses) > 20
        assert lrs == sorted(lrs)
        assert train_lr[0] == pytest.approx(suggestion[0], rel=1e-6)
        assert auto_job["best"]["val.accuracy"]["value"] >= 0.965
        assert recipe_job["status"] == "done", recipe_job["error"]
        assert recipe_job["request"]["hyperparameters"]["lr_policy"] == "onecycle"
        assert recipe_job["best"]["val.accuracy"]["value"] >= 0.965


def _readme_blocks() -> dict[str, str]:
    import re

    from tests.support import ROOT

    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"```sh (tuning-[a-z]+)\n(.*?)```", text, flags=re.S))


def test_the_readme_has_both_tuning_examples() -> None:
    assert set(_readme_blocks()) == {"tuning-cli", "tuning-curl"}


@pytest.mark.parametrize("name", ["tuning-cli", "tuning-curl"])
def test_the_readme_tuning_example_runs(env: Env, name: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    environ.update(
        DIGITS_URL=env.stack.url,
        DIGITS_TOKEN=env.stack.token,
        PATH=f"{Path(sys.executable).parent}:{environ.get('PATH', '')}",
    )
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _readme_blocks()[name]],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=600,
    )
    report(
        f"README {name}",
        seconds=round(time.monotonic() - started, 1),
        tail=result.stdout.strip().splitlines()[-3:],
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if name == "tuning-cli":
        assert "study done" in result.stdout
        assert "best trial" in result.stdout
        assert "lenet-tune" in result.stdout
    else:
        assert result.stdout.strip().splitlines()[-1].startswith("done ")
