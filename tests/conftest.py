"""Fixtures on real services: a PostgreSQL database and a Redis key prefix per test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support import LENET, Stack, free_port, sse_events, submit, wait_for

PG_ADMIN = os.environ.get("DIGITS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DIGITS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{dbname}"


def create_pg_database() -> str:
    """Create an empty database with a random name; return its URL."""
    name = f"digits_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _pg_url(name)


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of our own; only keys under it are removed at the end."""
    prefix = f"digits-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def pg_env(
    pg_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment of the production configuration: PostgreSQL and Redis."""
    data = tmp_path_factory.mktemp("data-pg")
    imports = tmp_path_factory.mktemp("imports")
    env = {
        **os.environ,
        "DIGITS_DATA_DIR": str(data),
        "DIGITS_DATABASE_URL": pg_url,
        "DIGITS_BROKER_URL": REDIS_URL,
        "DIGITS_BROKER_PREFIX": redis_prefix,
        "DIGITS_IMPORT_ROOTS": str(imports),
        "DIGITS_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024),
        "DIGITS_BODY_READ_TIMEOUT": "5",
        "DIGITS_HEADER_READ_TIMEOUT": "3",
        "DIGITS_MAX_IMAGE_PIXELS": str(4_000_000),
        "DIGITS_LOG_LEVEL": "INFO",
        "DIGITS_MODEL_SERVER_URL": f"http://127.0.0.1:{free_port()}",
    }
    return env


@pytest.fixture(scope="session")
def pg_stack(pg_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API and one cpu worker on PostgreSQL + Redis, migrated, for the whole session."""
    from shared import migrate
    from shared.settings import Settings

    migrate.upgrade(Settings(database_url=pg_env["DIGITS_DATABASE_URL"]))
    stack = Stack(env=pg_env, logs=tmp_path_factory.mktemp("logs-pg"))
    stack.create_admin()
    try:
        stack.start_api()
        stack.start_worker("cpu-test-1", "--queues", "cpu")
        stack.start_worker("train-test-1", "--cpu")
        stack.start_model_server()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def imports_root(pg_env: dict[str, str]) -> Path:
    return Path(pg_env["DIGITS_IMPORT_ROOTS"])


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as PNG class folders, zipped."""
    from tests.support import digits_arrays, write_class_folders, zip_folder

    images, labels = digits_arrays()
    folder = write_class_folders(tmp_path_factory.mktemp("digits") / "digits", images, labels)
    return zip_folder(folder, tmp_path_factory.mktemp("zips") / "digits.zip")


@pytest.fixture(scope="session")
def digits_dataset(pg_stack: Stack, digits_zip: Path) -> dict:
    """The digits imported at 28x28 grayscale with a 25% validation split."""
    from tests.support import post_dataset, wait_for

    with pg_stack.client() as client:
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
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "waiting"
        return wait_for(client, f"/datasets/{resp.json()['id']}")


@pytest.fixture(scope="session")
def lenet_job(pg_stack: Stack, digits_dataset: dict) -> dict[str, Any]:
    """LeNet on digits, followed from submission by an SSE client."""
    with pg_stack.client() as client:
        job = submit(
            client,
            {
                "dataset_id": digits_dataset["id"],
                "name": "lenet-digits",
                "network": "lenet",
                "hyperparameters": LENET,
            },
        )[0]
        assert job["status"] == "waiting"
        events = sse_events(client, job["id"])
        final = wait_for(client, f"/jobs/{job['id']}", timeout=300)
    return {"job": final, "events": events}
