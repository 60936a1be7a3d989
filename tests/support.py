"""Helpers for tests that run the real service: API and worker subprocesses, datasets on disk."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

from cli.supervisor import listening

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """An API server and workers running as subprocesses against one configuration."""

    env: dict[str, str]
    logs: Path
    token: str = ""
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_api(self) -> None:
        self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if listening("127.0.0.1", self.port) and httpx.get(
                    self.url + "/api/v1/health", timeout=2
                ).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("API did not start:\n" + self.log("api"))

    def start_model_server(self) -> None:
        """The model service, on its own free port (DIGITS_MODEL_SERVER_URL tells the API)."""
        port = int(self.env["DIGITS_MODEL_SERVER_URL"].rsplit(":", 1)[1])
        self._spawn("model-server", "model-server")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if (
                    listening("127.0.0.1", port)
                    and httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("model service did not start:\n" + self.log("model-server"))

    def start_worker(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """A worker subprocess: `--queues cpu` for dataset work, `--cpu` to train.

        It is ready when it has registered itself (its heartbeat row says alive).
        """
        proc = self._spawn(
            f"worker-{name}", "worker", "--name", name, *(args or ("--queues", "cpu"))
        )
        deadline = time.monotonic() + 60
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                workers = httpx.get(self.url + "/api/v1/workers", headers=headers, timeout=5)
                if workers.status_code == 200 and any(
                    w["name"] == name and w["alive"] and w["pid"] == proc.pid
                    for w in workers.json()
                ):
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("worker did not start:\n" + self.log(f"worker-{name}"))

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for /api/v1 sending the stack's admin token (or `token`)."""
        chosen = self.token if token is None else token
        headers = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        return httpx.Client(base_url=self.url + "/api/v1", timeout=60, headers=headers)

    def create_admin(self) -> str:
        """Create the admin user directly in the database; keep and return its token."""
        from shared.db import make_engine, make_session_factory, session_scope
        from shared.services import users
        from shared.settings import Settings

        engine = make_engine(
            Settings(
                database_url=self.env.get("DIGITS_DATABASE_URL", ""),
                data_dir=Path(self.env["DIGITS_DATA_DIR"]),
            )
        )
        with session_scope(make_session_factory(engine)) as session:
            token = users.ensure_admin(session)
        engine.dispose()
        assert token, "the database already had users"
        self.token = token
        return token

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def wait_for(
    client: httpx.Client,
    path: str,
    *,
    until: Iterable[str] = ("done", "error", "aborted"),
    timeout: float = 120,
) -> dict[str, Any]:
    """Poll a resource until its status is one of `until`."""
    final = set(until)
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = client.get(path)
        resp.raise_for_status()
        body = resp.json()
        if body["status"] in final:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path} still {body.get('status')} after {timeout}s: {body}")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 images (0..255) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.round(data.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    return images, data.target.astype(np.int64)


def write_class_folders(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write images as PNG files in one folder per class (DIGITS's folder method)."""
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


def zip_folder(folder: Path, target: Path, *, prefix: str = "") -> Path:
    """Zip a folder's files, names relative to it (optionally under a wrapping prefix)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + str(path.relative_to(folder)))
    return target


def tar_folder(folder: Path, target: Path, *, gz: bool = True) -> Path:
    with tarfile.open(target, "w:gz" if gz else "w") as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tf.add(path, str(path.relative_to(folder)))
    return target


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def post_dataset(
    client: httpx.Client,
    options: dict[str, Any],
    files: dict[str, tuple[str, bytes]] | None = None,
) -> httpx.Response:
    """POST /datasets as multipart: options as form fields, files as uploads."""
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    return client.post("/datasets", data=data, files=files)


LENET = {
    "epochs": 15,
    "batch_size": 32,
    "learning_rate": 0.05,
    "lr_policy": "step",
    "lr_params": {"step_size": 50, "gamma": 0.1},
    "seed": 7,
}


def submit(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["jobs"]


def sse_events(
    client: httpx.Client,
    job_id: str,
    last_id: tuple[int, int] | None = None,
    stop_after: int | None = None,
) -> list[tuple[tuple[int, int], str, dict]]:
    """Read the job's SSE stream until it ends (or after `stop_after` events).

    Ids are cursors "E.S" (last event, last status change), returned as (E, S) tuples: both
    grow along the stream, so the tuples sort in stream order.
    """
    headers = {"Last-Event-ID": f"{last_id[0]}.{last_id[1]}"} if last_id is not None else {}
    events: list[tuple[tuple[int, int], str, dict]] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in resp.iter_lines():
            if line == "":
                if "id" in event:
                    head, _, tail = event["id"].partition(".")
                    cursor = (int(head), int(tail))
                    events.append((cursor, event["event"], json.loads(event["data"])))
                    if stop_after is not None and len(events) >= stop_after:
                        break
                event = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                event[key] = value
    return events


def training_child(worker_pid: int, job_id: str, timeout: float = 30) -> psutil.Process:
    """The process training `job_id` under a worker (it writes that job's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.Process(worker_pid).children(recursive=True):
            try:
                if any(job_id in f.path for f in proc.open_files()):
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no training process for {job_id}")
