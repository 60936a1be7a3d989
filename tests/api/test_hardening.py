"""Hostile requests against the real API process: what each costs it, not only its status.

Each test prints a `HARDENING {...}` line with what it measured (docs/reliability.md's
"hostile input" table collects them).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.support import Stack


def report(attack: str, **figures: Any) -> None:
    print("HARDENING " + json.dumps({"attack": attack, **figures}), flush=True)


def _api_process(stack: Stack) -> psutil.Process:
    return psutil.Process(stack.procs[0].pid)


def _tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


class _PeakRss:
    """Samples a process's RSS every 10 ms in the background and keeps the peak."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.base = _tree_rss(proc)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, _tree_rss(self.proc))
            except psutil.Error:
                return

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / 1e6, 1)


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A JSON-looking body of `total` bytes, generated (the client holds one chunk)."""
    yield b'{"name": "' + b"x" * (size - 10)
    sent = size
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def _health_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get(url + "/api/v1/health")
            out.append(time.perf_counter() - start)
            time.sleep(0.05)


def test_an_anonymous_200_mib_json_body_is_refused_before_it_is_read(pg_stack: Stack) -> None:
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=_health_latencies, args=(pg_stack.url, stop, latencies))
    with _PeakRss(_api_process(pg_stack)) as rss:
        poller.start()
        started = time.perf_counter()
        with httpx.Client(timeout=60) as client:
            try:
                resp = client.post(
                    pg_stack.url + "/api/v1/jobs",
                    content=_chunks(200 * 1024 * 1024),
                    headers={"Content-Type": "application/json"},
                )
                status = resp.status_code
                code = resp.json()["code"]
            except httpx.HTTPError:  # the server closed before the client finished sending
                status, code = 401, "closed"
        seconds = time.perf_counter() - started
        time.sleep(0.3)
        stop.set()
        poller.join()
    worst = max(latencies) if latencies else 0.0
    report(
        "anonymous 200 MiB JSON body",
        status=status,
        code=code,
        seconds=round(seconds, 2),
        api_rss_growth_mb=rss.growth_mb,
        health_worst_s=round(worst, 3),
        health_answers=len(latencies),
    )
    assert status == 401
    assert rss.growth_mb < 200
    assert worst < 1.0


def test_an_authenticated_json_body_over_the_json_cap_is_413_before_it_is_read(
    pg_stack: Stack,
) -> None:
    with _PeakRss(_api_process(pg_stack)) as rss, pg_stack.client() as client:
        started = time.perf_counter()
        try:
            resp = client.post(
                "/jobs",
                content=_chunks(200 * 1024 * 1024),
                headers={"Content-Type": "application/json"},
            )
            status, code = resp.status_code, resp.json()["code"]
        except httpx.HTTPError:
            status, code = 413, "closed"
        seconds = time.perf_counter() - started
    report(
        "authenticated 200 MiB JSON body",
        status=status,
        code=code,
        seconds=round(seconds, 2),
        api_rss_growth_mb=rss.growth_mb,
    )
    assert status == 413
    assert rss.growth_mb < 200


def test_a_connection_that_never_finishes_its_headers_is_closed(pg_stack: Stack) -> None:
    port = int(pg_stack.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(30)
        started = time.perf_counter()
        data = sock.recv(1024)
        held = time.perf_counter() - started
    report("unfinished headers", closed_after_s=round(held, 2), bytes_answered=len(data))
    assert data == b""  # closed without an answer
    assert held < 15


def test_a_body_that_stalls_gets_408(pg_stack: Stack) -> None:
    port = int(pg_stack.url.rsplit(":", 1)[1])
    env_timeout = float(pg_stack.env.get("DIGITS_BODY_READ_TIMEOUT", "60"))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        body = b'{"name": "x"'
        sock.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {pg_stack.token}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + body
        )
        sock.settimeout(env_timeout + 20)
        started = time.perf_counter()
        data = sock.recv(4096)
        held = time.perf_counter() - started
    status = int(data.split(b" ", 2)[1]) if data else 0
    report("stalled body", status=status, after_s=round(held, 1))
    assert status == 408


# item 8: extreme-but-valid numbers and odd names: a 4xx problem, and the connection stays usable
NUMBERS = ["nan", "inf", "-inf", "1e400", "NaN", str(2**63), str(2**64), "-1"]


@pytest.fixture(scope="module")
def done_job(lenet_job: dict) -> dict:
    return lenet_job["job"]


@pytest.fixture(scope="module")
def alice(pg_stack: Stack) -> dict[str, Any]:
    import uuid

    with pg_stack.client() as admin:
        resp = admin.post("/users", json={"name": f"carol{uuid.uuid4().hex[:6]}"})
        assert resp.status_code == 201
        return resp.json()


def _then_ok(client: httpx.Client) -> None:
    """The next request on the same keep-alive connection works."""
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("value", NUMBERS)
def test_odd_checkpoint_values_are_4xx_and_the_connection_survives(
    pg_stack: Stack, done_job: dict, value: str
) -> None:
    with pg_stack.client() as client:
        job = done_job["id"]
        answers = [
            client.get(f"/jobs/{job}/download", params={"checkpoint": value}),
            client.post(f"/jobs/{job}/evaluate", data={"checkpoint": value}),
            client.post(f"/jobs/{job}/pretrained", json={"checkpoint": value}),
            client.post(
                f"/jobs/{job}/classify",
                data={"checkpoint": value},
                files={"images": ("a.png", b"x", "image/png")},
            ),
        ]
        for resp in answers:
            assert 400 <= resp.status_code < 500, (value, resp.status_code, resp.text[:200])
            assert resp.headers["content-type"].startswith("application/problem+json")
        _then_ok(client)


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "99999999999999999999999"])
def test_huge_integers_in_pages_and_cursors_are_4xx(
    pg_stack: Stack, done_job: dict, value: str
) -> None:
    with pg_stack.client() as client:
        job = done_job["id"]
        for path, params in (
            ("/jobs", {"page": value}),
            ("/datasets", {"page": value}),
            (f"/jobs/{job}/metrics", {"since": value}),
            (f"/jobs/{job}/logs", {"offset": value}),
        ):
            resp = client.get(path, params=params)
            assert resp.status_code == 422, (path, resp.status_code, resp.text[:200])
        # a cursor past anything stored is simply the end of the stream, not an error
        with client.stream(
            "GET", f"/jobs/{job}/events", headers={"Last-Event-ID": f"{value}.{value}"}
        ) as resp:
            assert resp.status_code == 200
        _then_ok(client)


def test_long_and_odd_file_names_are_answered(pg_stack: Stack, done_job: dict) -> None:
    import numpy as np

    from tests.support import png_bytes

    image = png_bytes(np.zeros((8, 8), dtype=np.uint8))
    names = ["a" * 300 + ".png", "\x00evil.png", "../../etc/passwd.png", "ü" * 200 + ".png"]
    with pg_stack.client() as client:
        resp = client.post(
            f"/jobs/{done_job['id']}/classify",
            files=[("images", (n, image, "image/png")) for n in names],
        )
        assert resp.status_code == 200, resp.text[:300]
        assert len(resp.json()["predictions"]) == len(names)
        _then_ok(client)


def test_a_nul_byte_in_a_server_path_is_400(pg_stack: Stack) -> None:
    with pg_stack.client() as client:
        resp = client.post("/datasets", data={"name": "x", "train_path": "/tmp/a\x00b"})
        assert resp.status_code in (400, 403), resp.text
        assert resp.json()["code"] in ("invalid_path", "import_path_not_allowed")
        _then_ok(client)


def test_sweep_and_snapshot_limits_answer_422_with_the_limit_named(
    pg_stack: Stack, digits_dataset: dict
) -> None:
    with pg_stack.client() as client:
        for hyper, code in (
            ({"learning_rate": [0.01] * 64, "batch_size": [8] * 64}, "sweep_too_large"),
            ({"snapshot_interval": 1e-9, "epochs": 5}, "snapshot_interval_too_small"),
            ({"epochs": 100_000}, "too_many_epochs"),
        ):
            started = time.perf_counter()
            resp = client.post(
                "/jobs",
                json={
                    "dataset_id": digits_dataset["id"],
                    "name": "limits",
                    "network": "lenet",
                    "hyperparameters": hyper,
                },
            )
            report(
                f"limit {code}",
                status=resp.status_code,
                seconds=round(time.perf_counter() - started, 3),
                detail=resp.json().get("detail"),
            )
            assert resp.status_code == 422
            assert resp.json()["code"] == code
            assert "DIGITS_" in resp.json()["detail"]


def test_a_user_sees_no_host_pid_or_other_users_jobs_in_the_fleet(
    pg_stack: Stack, alice: dict
) -> None:
    with pg_stack.client(alice["token"]["token"]) as client:
        workers = client.get("/workers").json()
        assert workers
        assert all(w["hostname"] is None and w["pid"] is None for w in workers)
        assert all(w["job_id"] is None for w in workers)  # alice runs nothing
        for gpu in client.get("/gpus").json():
            assert gpu["hostname"] is None
    with pg_stack.client() as admin:
        assert all(w["hostname"] and w["pid"] for w in admin.get("/workers").json())


def test_answers_do_not_quote_server_paths(pg_stack: Stack, done_job: dict) -> None:
    data_dir = pg_stack.env["DIGITS_DATA_DIR"]
    with pg_stack.client() as client:
        texts = [
            client.get(f"/jobs/{done_job['id']}").text,
            client.get(f"/jobs/{done_job['id']}/logs").text,
            client.get(f"/jobs/{done_job['id']}/checkpoints").text,
        ]
    leaks = [t[:200] for t in texts if data_dir in t or "object at 0x" in t]
    assert not leaks


# -- files that expand: through the API and the model service, cost measured -------------


def _du(root: str) -> int:
    from tests.shared.test_archive_bombs import allocated

    return allocated(__import__("pathlib").Path(root))


@pytest.mark.parametrize("kind", ["gnu", "pax", "gnu.gz", "zip"])
def test_archive_bombs_through_every_upload_route_cost_no_disk(
    pg_stack: Stack, done_job: dict, tmp_path: Any, kind: str
) -> None:
    from tests.shared.test_archive_bombs import gnu_sparse_tar, pax_sparse_tar, zip_declaring

    build = {
        "gnu": lambda p: gnu_sparse_tar(p / "b.tar"),
        "pax": lambda p: pax_sparse_tar(p / "b.tar", "1.0"),
        "gnu.gz": lambda p: gnu_sparse_tar(p / "b.tar.gz", gz=True),
        "zip": lambda p: zip_declaring(p / "b.zip"),
    }[kind]
    bomb = build(tmp_path).read_bytes()
    data_dir = pg_stack.env["DIGITS_DATA_DIR"]
    with pg_stack.client() as client:
        routes = [
            ("/datasets", {"name": "bomb", "image_width": "8", "image_height": "8"}, "archive"),
            ("/pretrained-models", {}, "archive"),
            (f"/jobs/{done_job['id']}/classify", {}, "archive"),
            (f"/jobs/{done_job['id']}/evaluate", {}, "archive"),
        ]
        for path, data, field in routes:
            before = _du(data_dir)
            started = time.perf_counter()
            resp = client.post(path, data=data, files={field: ("b.tar", bomb, "a/x")})
            seconds = time.perf_counter() - started
            grown = (_du(data_dir) - before) / 1e6
            health = client.get("/health")
            report(
                f"{kind} bomb via {path.split('/')[-1]}",
                archive_bytes=len(bomb),
                status=resp.status_code,
                code=resp.json().get("code"),
                disk_growth_mb=round(grown, 1),
                seconds=round(seconds, 2),
            )
            assert resp.status_code == 400, (path, resp.text[:300])
            assert grown < 50
            assert health.status_code == 200


def test_a_thin_image_costs_the_model_service_no_memory_in_any_mode(
    pg_stack: Stack, done_job: dict
) -> None:
    """A 1x300000 PNG (a few hundred bytes) in every resize mode, straight to the model service
    with the job's checkpoint: its peak RSS barely moves."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 300_000), 128).save(buf, "PNG")
    thin = buf.getvalue()
    service = pg_stack.env["DIGITS_MODEL_SERVER_URL"]
    model_proc = next(
        p
        for p in (psutil.Process(q.pid) for q in pg_stack.procs)
        if "model-server" in " ".join(p.cmdline())
    )
    with pg_stack.client() as client:
        ckpt = client.get(f"/jobs/{done_job['id']}/checkpoints").json()
        assert ckpt
    data_dir = pg_stack.env["DIGITS_DATA_DIR"]
    model = f"{data_dir}/jobs/{done_job['id']}/checkpoints/best.pt"
    growth = {}
    with httpx.Client(base_url=service, timeout=60) as ms:
        for mode in ("squash", "crop", "fill", "half_crop"):
            with _PeakRss(model_proc) as rss:
                resp = ms.post(
                    "/classify",
                    data={"model": model, "resize_mode": mode, "top_k": "1"},
                    files={"images": ("thin.png", thin, "image/png")},
                )
            growth[mode] = rss.growth_mb
            assert resp.status_code in (200, 400), resp.text[:200]
    report("1x300000 PNG, model service", png_bytes=len(thin), rss_growth_mb=growth)
    assert max(growth.values()) < 200


def test_a_deep_info_json_is_400(pg_stack: Stack) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    weights = b"\x08" + b"\x00" * 7 + b"{}      "  # an empty safetensors file
    with pg_stack.client() as client:
        resp = client.post(
            "/pretrained-models",
            files={
                "weights": ("weights.safetensors", weights, "x"),
                "info": ("info.json", deep, "application/json"),
            },
        )
        report("100,000-deep info.json", status=resp.status_code, code=resp.json().get("code"))
        assert resp.status_code == 400
        _then_ok(client)


def test_a_nul_character_in_a_json_string_is_400(pg_stack: Stack, digits_dataset: dict) -> None:
    with pg_stack.client() as client:
        resp = client.post(
            "/jobs",
            json={"dataset_id": digits_dataset["id"], "name": "a\u0000b", "network": "lenet"},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["code"] == "invalid_value"
        _then_ok(client)
