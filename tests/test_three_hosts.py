"""Three hosts that share nothing but services, built on this machine as network namespaces.

Host A runs the API, the model service, the S3 server (moto's standalone server) and a private
Redis; PostgreSQL (which listens on 127.0.0.1 here) is reached through a forwarder that
listens on A's address only. Hosts B and C each run one CPU training worker with a data folder
of its own. The hosts reach each other only over veth pairs on a bridge inside A (10.77.0.0/24,
no other addresses). Twelve jobs spread over B and C, each runs once; the host running a
longer job is killed (every process in its namespace, SIGKILL) and the job resumes on the other
host from its last checkpoint in the bucket; classify and download on A work for models trained
on either host. CI runs as root; where namespaces cannot be made, the test fails saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.chaos import TcpProxy
from tests.s3server import MotoServer
from tests.support import ROOT, post_dataset, submit

SUBNET = "10.77.0"
HOST_A, HOST_B, HOST_C = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _report(what: str, **figures: Any) -> None:
    print(f"\n[three hosts] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run this thread in a network namespace (setns is per thread), then come back.

    Sockets keep the namespace they were made in, so a listener made here serves that host
    after the thread has left.
    """
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


class HostProxy(TcpProxy):
    """A TCP forwarder listening on a host's address, connecting out from this namespace."""

    def __init__(self, netns: str, host: str, port: int, target_port: int) -> None:
        super().__init__(target_port)
        self.netns, self.host, self.port = netns, host, port

    def start(self) -> None:
        with entered(self.netns):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
        self._listener = listener
        self._up = True
        # started from this namespace: the forwarded connections leave from here
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()


@dataclass
class Hosts:
    """Three network namespaces joined by a bridge inside A; processes started in them."""

    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"digits-{self.tag}-{host}"

    def build(self) -> None:
        """A: bridge br0 with 10.77.0.1; B and C: eth0 with .2 and .3, a veth into the bridge."""
        for host in "abc":
            _ip("netns", "add", self.ns(host))
            _ip("-n", self.ns(host), "link", "set", "lo", "up")
        a = self.ns("a")
        _ip("-n", a, "link", "add", "br0", "type", "bridge")
        _ip("-n", a, "addr", "add", f"{HOST_A}/24", "dev", "br0")
        _ip("-n", a, "link", "set", "br0", "up")
        for host, address in (("b", HOST_B), ("c", HOST_C)):
            port = f"v{self.tag}{host}"
            _ip("-n", a, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                self.ns(host))  # fmt: skip
            _ip("-n", a, "link", "set", port, "master", "br0")
            _ip("-n", a, "link", "set", port, "up")
            _ip("-n", self.ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def addresses(self) -> dict[str, list[str]]:
        """Every IPv4 address of each host (to show there are no others)."""
        out = {}
        for host in "abc":
            text = subprocess.run(
                ["ip", "-n", self.ns(host), "-4", "-o", "addr"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            out[host] = sorted(line.split()[3] for line in text.splitlines())
        return out

    def spawn(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> None:
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))

    def log(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self, host: str) -> list[int]:
        done = subprocess.run(
            ["ip", "netns", "pids", self.ns(host)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in done.stdout.split()]

    def kill(self, host: str, sig: int = signal.SIGKILL) -> int:
        """Every process on the host, at once: the host is lost."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    def destroy(self) -> None:
        for host in "abc":
            if os.path.exists(f"/var/run/netns/{self.ns(host)}"):
                self.kill(host, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(self._exists(h) and self.pids(h) for h in "abc"):
            time.sleep(0.2)
        for host in "abc":
            if self._exists(host):
                self.kill(host)
        for _name, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for host in "abc":
            if self._exists(host):
                subprocess.run(["ip", "netns", "del", self.ns(host)], check=False)

    def _exists(self, host: str) -> bool:
        return os.path.exists(f"/var/run/netns/{self.ns(host)}")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(tmp_path)
    try:
        made.build()
    except (RuntimeError, FileNotFoundError) as exc:
        made.destroy()
        pytest.fail(
            f"network namespaces cannot be made here ({exc}); this test needs root and `ip` "
            "(iproute2), as CI has",
            pytrace=False,
        )
    try:
        yield made
    finally:
        made.destroy()


def _wait(check: Any, what: str, timeout: float, hosts: Hosts, logs: list[str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            value = check()
            if value:
                return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {n}\n{hosts.log(n)[-2500:]}" for n in logs)
    raise AssertionError(f"{what} not within {timeout}s\n{tails}")


def _done(client: httpx.Client, path: str) -> dict[str, Any] | None:
    body = client.get(path).json()
    return body if body["status"] in ("done", "error", "aborted") else None


def _small_digits(tmp: Path) -> bytes:
    """40 of scikit-learn's digits per class, zipped: jobs of a second or two each."""
    import numpy as np

    from tests.support import digits_arrays, write_class_folders, zip_folder

    images, labels = digits_arrays()
    keep = np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(10)])
    folder = write_class_folders(tmp / "small-digits", images[keep], labels[keep])
    return zip_folder(folder, tmp / "small-digits.zip").read_bytes()


def test_three_hosts_share_nothing_but_services(hosts: Hosts, tmp_path: Path) -> None:
    from shared import migrate
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.services import users
    from shared.settings import Settings
    from tests.conftest import create_pg_database, drop_pg_database

    figures: dict[str, Any] = {"addresses": hosts.addresses()}
    assert figures["addresses"] == {
        "a": [f"{HOST_A}/24", "127.0.0.1/8"],
        "b": [f"{HOST_B}/24", "127.0.0.1/8"],
        "c": [f"{HOST_C}/24", "127.0.0.1/8"],
    }
    started = time.perf_counter()
    db = create_pg_database()
    proxy = HostProxy(hosts.ns("a"), HOST_A, 5432, 5432)
    try:
        migrate.upgrade(Settings(database_url=db))
        engine = make_engine(Settings(database_url=db))
        with session_scope(make_session_factory(engine)) as session:
            token = users.ensure_admin(session)
        engine.dispose()
        proxy.start()
        bucket = "digits-hosts"
        moto = MotoServer(
            tmp_path / "logs" / "s3-a.log",
            host=HOST_A,
            port=9000,
            prefix=["ip", "netns", "exec", hosts.ns("a")],
        )
        moto.start()
        assert moto.proc is not None
        hosts.procs.append(("s3-a", moto.proc))
        hosts.spawn(
            "a",
            "redis-a",
            ["redis-server", "--bind", HOST_A, "--port", "6379", "--save", "", "--appendonly",
             "no", "--protected-mode", "no"],
            dict(os.environ),
        )  # fmt: skip
        with entered(hosts.ns("a")):
            moto.wait_ready()
            moto.create_bucket(bucket)
        storage = moto.env(bucket, "lab")
        _run_hosts(hosts, db, token or "", storage, _small_digits(tmp_path), figures, started)
    finally:
        proxy.cut()
        drop_pg_database(db)
    _report("figures", **figures)


def _env(hosts: Hosts, host: str, db: str, storage: dict[str, str]) -> dict[str, str]:
    data = hosts.tmp / f"data-{host}"
    data.mkdir(exist_ok=True)
    pg = db.replace("127.0.0.1:5432", f"{HOST_A}:5432")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")},
        **storage,
        "DIGITS_DATA_DIR": str(data),
        "DIGITS_DATABASE_URL": pg,
        "DIGITS_BROKER_URL": f"redis://{HOST_A}:6379/0",
        "DIGITS_MODEL_SERVER_URL": f"http://{HOST_A}:8001",
        "DIGITS_LEASE_TIMEOUT": "4",
        "DIGITS_REAPER_INTERVAL": "1",
        "DIGITS_HEARTBEAT_INTERVAL": "1",
        "DIGITS_WORKER_STALE_AFTER": "6",
        "DIGITS_RESEND_AFTER": "5",
        "DIGITS_LOG_LEVEL": "INFO",
    }


def _run_hosts(
    hosts: Hosts,
    db: str,
    token: str,
    storage: dict[str, str],
    archive: bytes,
    figures: dict[str, Any],
    started: float,
) -> None:
    """Start the hosts' services, then the twelve jobs, the lost host, classify and download."""
    py = [sys.executable, "-m", "cli"]
    env_a = _env(hosts, "a", db, storage)
    hosts.spawn("a", "api-a", [*py, "api", "--host", HOST_A, "--port", "8000"], env_a)
    hosts.spawn("a", "model-server-a", [*py, "model-server"], env_a)
    names = {"b": "train@hostB", "c": "train@hostC"}
    for host, name in names.items():
        argv = [*py, "worker", "--cpu", "--queues", "train,cpu", "--name", name]
        hosts.spawn(host, f"worker-{host}", argv, _env(hosts, host, db, storage))
    logs = ["api-a", "model-server-a", "worker-b", "worker-c"]
    headers = {"Authorization": f"Bearer {token}"}
    with (
        entered(hosts.ns("a")),
        httpx.Client(base_url=f"http://{HOST_A}:8000/api/v1", headers=headers, timeout=60) as api,
    ):
        _wait(
            lambda: (
                {w["name"] for w in api.get("/workers").json() if w["alive"]} >= set(names.values())
            ),
            "both workers registered",
            120,
            hosts,
            logs,
        )
        _wait(
            lambda: httpx.get(f"http://{HOST_A}:8001/health", timeout=2).status_code == 200,
            "the model service",
            120,
            hosts,
            logs,
        )
        figures["setup_s"] = round(time.perf_counter() - started, 1)

        clock = time.perf_counter()
        resp = post_dataset(
            api,
            {"name": "digits", "image_width": 16, "image_height": 16, "channels": 1,
             "val_pct": 25, "seed": 1},
            {"archive": ("digits.zip", archive, "application/zip")},
        )  # fmt: skip
        assert resp.status_code == 202, resp.text
        dataset = _wait(
            lambda: _done(api, f"/datasets/{resp.json()['id']}"), "import", 120, hosts, logs
        )
        assert dataset["status"] == "done", dataset
        figures["import_s"] = round(time.perf_counter() - clock, 2)

        # twelve jobs: a sweep of twelve learning rates, one epoch each
        clock = time.perf_counter()
        rates = [round(0.01 + 0.01 * i, 3) for i in range(12)]
        jobs = submit(
            api,
            {"dataset_id": dataset["id"], "name": "sweep", "network": "lenet",
             "hyperparameters": {"epochs": 1, "batch_size": 64, "learning_rate": rates,
                                 "seed": 5}},
        )  # fmt: skip
        assert len(jobs) == 12
        finals = [
            _wait(lambda j=j: _done(api, f"/jobs/{j['id']}"), "the twelve jobs", 600, hosts, logs)
            for j in jobs
        ]
        twelve_s = time.perf_counter() - clock
        assert all(j["status"] == "done" for j in finals), [j["error"] for j in finals]
        by_host = {name: [j for j in finals if j["worker"] == name] for name in names.values()}
        assert all(j["attempts"] == 1 for j in finals)
        assert all(by_host.values()), {k: len(v) for k, v in by_host.items()}  # both hosts
        figures.update(
            twelve_jobs_s=round(twelve_s, 1),
            jobs_per_host={k: len(v) for k, v in by_host.items()},
        )

        # classify and download on A, of models trained on B and on C
        sample = api.get(f"/datasets/{dataset['id']}/samples", params={"per_page": 1}).json()
        png = api.get(sample["items"][0]["image_url"]).content
        for name, trained in by_host.items():
            clock = time.perf_counter()
            resp = api.post(
                f"/jobs/{trained[0]['id']}/classify", files={"images": ("x.png", png, "image/png")}
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["predictions"][0]["top"]
            figures[f"classify_ms[{name}]"] = round((time.perf_counter() - clock) * 1000, 1)
            resp = api.get(f"/jobs/{trained[0]['id']}/download")
            assert resp.status_code == 200, resp.text
            with tarfile.open(fileobj=io.BytesIO(resp.content)) as tf:
                assert "weights.safetensors" in tf.getnames()
            figures[f"download_bytes[{name}]"] = len(resp.content)

        # a longer job; its host is lost mid-job; the other host resumes it from the bucket
        # long enough that the kill lands mid-job on any machine: 12 s of training steps at
        # the speed the sweep measured, and never under 30 epochs (a one-epoch sweep's speed
        # is mostly warm-up: on a fast machine 8 epochs ended between two polls)
        speeds = sorted(j["last"]["train.images_per_second"]["value"] for j in finals)
        epoch_s = dataset["splits"]["train"]["images"] / speeds[len(speeds) // 2]
        epochs = min(1000, max(300, math.ceil(12 / epoch_s)))
        victim = submit(
            api,
            {"dataset_id": dataset["id"], "name": "victim", "network": "lenet",
             "hyperparameters": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.05,
                                 "seed": 9}},
        )[0]  # fmt: skip

        def second_snapshot() -> dict[str, Any] | None:
            job = api.get(f"/jobs/{victim['id']}").json()
            assert job["status"] in ("initialized", "waiting", "running"), f"ended early: {job}"
            names_ = {c["name"] for c in api.get(f"/jobs/{victim['id']}/checkpoints").json()}
            epochs_ = [int(n.split("-")[1]) for n in names_ if re.fullmatch(r"epoch-\d+", n)]
            return job if job["status"] == "running" and max(epochs_, default=0) >= 2 else None

        running = _wait(second_snapshot, "the victim's second snapshot", 300, hosts, logs)
        lost = next(h for h, n in names.items() if n == running["worker"])
        survivor = "c" if lost == "b" else "b"
        killed_at = time.perf_counter()
        figures["killed_processes"] = hosts.kill(lost)
        final = _wait(
            lambda: _done(api, f"/jobs/{victim['id']}"), "the resumed job", 300, hosts, logs
        )
        figures["kill_to_done_s"] = round(time.perf_counter() - killed_at, 1)
        assert final["status"] == "done", final
        assert final["worker"] == names[survivor], final["worker"]
        assert final["attempts"] == 2
        log_text = api.get(f"/jobs/{victim['id']}/logs").text
        resp = api.post(
            f"/jobs/{victim['id']}/classify", files={"images": ("x.png", png, "image/png")}
        )
        assert resp.status_code == 200, resp.text
    # from the database, directly: each of the twelve ran once; the victim's two attempts
    runs = _runs(db, [j["id"] for j in finals] + [victim["id"]])
    assert all(runs[j["id"]] == [(1, j["worker"])] for j in finals), runs
    assert runs[victim["id"]] == [(1, names[lost]), (2, names[survivor])]
    resumed = [line for line in log_text.splitlines() if "resumed at step" in line]
    assert resumed, log_text[-3000:]
    step = int(resumed[-1].split("resumed at step ")[1].split()[0])
    assert step > 0
    # the survivor never had the lost host's files: it resumed from the bucket's checkpoint
    survivor_dir = hosts.tmp / f"data-{survivor}"
    fetched = list((survivor_dir / "cache" / "objects" / "jobs" / victim["id"]).rglob("*.pt"))
    assert fetched, "the resumed checkpoint did not come from the bucket"
    for host in ("b", "c"):
        data = hosts.tmp / f"data-{host}"
        caches = list((data / "cache" / "datasets").iterdir())
        assert len(caches) == 1, caches  # every job on one dataset: one copy per host
        downloads = hosts.log(f"worker-{host}").count("downloaded into the cache")
        assert downloads <= 1, downloads
        figures[f"dataset_downloads[{host}]"] = downloads
    figures.update(
        train_images_per_second=round(speeds[len(speeds) // 2]),
        victim_epochs=epochs,
        lost_host=lost,
        resumed_on=survivor,
        resumed_at_step=step,
        total_s=round(time.perf_counter() - started, 1),
    )


def _runs(db: str, job_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    """Each job's moves to running: (attempt, worker), in order."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT subject_id::text, attempt, worker FROM status_change "
            "WHERE to_status = 'running' AND subject_id::text = ANY(%s) ORDER BY id",
            (job_ids,),
        ).fetchall()
    runs: dict[str, list[tuple[int, str]]] = {j: [] for j in job_ids}
    for job_id, attempt, worker in rows:
        runs[job_id].append((attempt, worker))
    return runs
