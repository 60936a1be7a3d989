"""A running service for the benchmarks: PostgreSQL database, Redis prefix, API, workers."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT  # noqa: F401  (puts the repo on sys.path)
from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database
from tests.support import (
    Stack,
    digits_arrays,
    free_port,
    post_dataset,
    wait_for,
    write_class_folders,
    zip_folder,
)


class BenchStack:
    """Context manager: a fresh database and key prefix, the API, a cpu and a train worker."""

    def __init__(
        self,
        train_workers: int = 1,
        model_server: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.train_workers = train_workers
        self.model_server = model_server
        self.extra_env = extra_env or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="digits-bench-"))

    def __enter__(self) -> BenchStack:
        self.db = create_pg_database()
        self.prefix = f"digits-bench-{uuid.uuid4().hex[:8]}:"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")},
            "DIGITS_DATA_DIR": str(self.tmp / "data"),
            "DIGITS_DATABASE_URL": self.db,
            "DIGITS_BROKER_URL": REDIS_URL,
            "DIGITS_BROKER_PREFIX": self.prefix,
            "DIGITS_LOG_LEVEL": "WARNING",
            "DIGITS_MODEL_SERVER_URL": f"http://127.0.0.1:{free_port()}",
            **self.extra_env,
        }
        from shared import migrate
        from shared.settings import Settings

        migrate.upgrade(Settings(database_url=self.db))
        self.stack = Stack(env=env, logs=self.tmp / "logs")
        self.stack.create_admin()
        self.stack.start_api()
        self.stack.start_worker("bench-cpu", "--queues", "cpu")
        for i in range(self.train_workers):
            self.stack.start_worker(f"bench-train-{i}", "--cpu")
        if self.model_server:
            self.stack.start_model_server()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.stop()
        drop_pg_database(self.db)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=self.prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()

    def digits_dataset(self, size: int = 28, max_per_class: int | None = None) -> dict[str, Any]:
        """scikit-learn's digits imported at size x size, grayscale."""
        images, labels = digits_arrays()
        folder = write_class_folders(self.tmp / f"digits-{size}", images, labels)
        archive = zip_folder(folder, self.tmp / f"digits-{size}.zip")
        options: dict[str, Any] = {
            "name": f"digits-{size}",
            "image_width": size,
            "image_height": size,
            "channels": 1,
            "seed": 1,
        }
        if max_per_class:
            options["max_per_class"] = max_per_class
        with self.stack.client() as client:
            resp = post_dataset(
                client, options, {"archive": ("d.zip", archive.read_bytes(), "application/zip")}
            )
            return wait_for(client, f"/datasets/{resp.json()['id']}", timeout=300)
