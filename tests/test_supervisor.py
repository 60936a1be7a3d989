"""`digits up` supervises its children: a killed child comes back while the API keeps serving."""

from __future__ import annotations

import itertools
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from api.routers.health import read_processes
from cli.supervisor import (
    Backoff,
    ChildSpec,
    Supervisor,
    listening,
    machine_memory_mb,
    memory_limit_mb,
    port_free,
    spawn,
    up_specs,
)
from tests.support import (
    LENET,
    ROOT,
    Stack,
    digits_arrays,
    free_port,
    post_dataset,
    wait_for,
    write_class_folders,
    zip_folder,
)

PY = sys.executable


def _report(line: str) -> None:
    sys.stdout.write(line + "\n")  # tests print what they measure
    sys.stdout.flush()


def _supervisor(tmp_path: Path, *specs: ChildSpec, stop_timeout: float = 5) -> Supervisor:
    return Supervisor(
        specs,
        env=os.environ,
        state_file=tmp_path / "supervisor.json",
        backoff=Backoff(initial=0.1, maximum=0.4, reset_after=30),
        stop_timeout=stop_timeout,
    )


def _python(name: str, code: str, **kwargs: Any) -> ChildSpec:
    return ChildSpec(name, "api", (PY, "-c", code), **kwargs)


def _tick_until(sup: Supervisor, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, {n: c.as_json() for n, c in sup.children.items()}
        sup.tick()
        time.sleep(0.02)


def test_backoff_doubles_to_its_maximum_and_starts_afresh_after_a_long_run() -> None:
    backoff = Backoff(initial=0.5, maximum=30, reset_after=60)
    delays, previous = [], None
    for _ in range(9):
        previous = backoff.next_delay(previous, uptime=1.0)
        delays.append(previous)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.next_delay(30, uptime=61) == 0.5


def test_memory_limits_default_to_half_the_machine_and_spare_cuda_processes() -> None:
    from shared.settings import Settings

    half = max(2048, machine_memory_mb() // 2)
    plain = Settings()
    assert memory_limit_mb(plain, "dataset-worker", uses_cuda=False) == half
    assert memory_limit_mb(plain, "train-gpu", uses_cuda=True) is None
    tuned = Settings(
        child_memory_limit_mb=1024, child_memory_limits_mb={"api": 512, "train-gpu": 0}
    )
    assert memory_limit_mb(tuned, "api", uses_cuda=False) == 512
    assert memory_limit_mb(tuned, "train-worker", uses_cuda=False) == 1024
    assert memory_limit_mb(tuned, "train-gpu", uses_cuda=True) is None
    assert memory_limit_mb(Settings(child_memory_limit_mb=0), "api", uses_cuda=False) is None
    specs = {s.name: s for s in up_specs(plain, "127.0.0.1", 8000, 8001, gpus=[0, 1])}
    _report(
        f"SUPERVISION limits with two GPUs: { {n: s.memory_limit_mb for n, s in specs.items()} }"
    )
    assert set(specs) == {"api", "model-server", "dataset-worker", "train-gpu0", "train-gpu1"}
    assert specs["train-gpu0"].memory_limit_mb is None
    assert specs["model-server"].memory_limit_mb is None  # it uses the GPU too
    assert specs["dataset-worker"].memory_limit_mb == half
    cpu_only = {s.name for s in up_specs(plain, "127.0.0.1", 8000, 8001, gpus=[])}
    assert cpu_only == {"api", "model-server", "dataset-worker", "train-worker"}


def test_a_crashing_child_is_retried_with_backoff_while_its_sibling_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = _supervisor(
        tmp_path,
        _python("crasher", "import sys; sys.exit(3)"),
        _python("sibling", "import time; time.sleep(60)"),
    )
    caplog.set_level(logging.INFO, logger="digits.supervisor")
    sup.start()
    sibling = sup.children["sibling"].proc
    assert sibling is not None
    crasher = sup.children["crasher"]
    restarted_at: list[float] = []
    try:
        while crasher.restarts < 5:
            before = crasher.restarts
            _tick_until(sup, lambda b=before: crasher.restarts > b)  # type: ignore[misc]
            restarted_at.append(time.monotonic())
        last_exit = crasher.last_exit  # before stop() ends the latest start with SIGTERM
    finally:
        sup.stop()
    exits = [r.getMessage() for r in caplog.records if "event=exited child=crasher" in r.message]
    waits = [float(m.split("restart_in_s=")[1].split()[0]) for m in exits]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(restarted_at)]
    _report(f"SUPERVISION crash loop: scheduled waits {waits}, measured restart gaps {gaps}")
    assert waits[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert all("code=3" in m for m in exits)
    assert any("crash_loop=true" in m for m in exits)
    assert last_exit == 3
    sibling_now = sup.children["sibling"]
    assert sibling_now.restarts == 0
    assert sibling_now.proc is sibling  # never restarted: no outage for the others


def test_a_child_whose_port_is_taken_waits_with_backoff_until_it_is_free(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        sup = _supervisor(tmp_path, _python("server", "import time; time.sleep(60)", port=port))
        sup.start()
        child = sup.children["server"]
        assert child.state == "restarting"
        assert child.proc is None  # not even started: it would only exit at once
        for _ in range(5):
            sup.tick()
            time.sleep(0.1)
        assert child.state == "restarting"
    try:
        _tick_until(sup, lambda: child.state == "running")
    finally:
        sup.stop()
    assert child.proc is not None


def test_probing_a_port_before_its_server_listens_never_takes_the_port() -> None:
    """CI saw the model service's port "in use" for a minute: a readiness poll had been handed
    that port as its own and connected to itself. The probe must not hold it, even then."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1] + 1  # even: the ports connect() hands out
    # connect() walks its ports for one destination, so this many tries meets the port itself
    attempts = 0
    while attempts < 40_000 and port_free("127.0.0.1", port):
        assert not listening("127.0.0.1", port)
        attempts += 1
    assert port_free("127.0.0.1", port), f"the port was taken after {attempts} probes"
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        assert listening("127.0.0.1", port)


def test_the_state_file_is_replaced_atomically_and_health_reads_it(tmp_path: Path) -> None:
    sup = _supervisor(
        tmp_path,
        _python("steady", "import time; time.sleep(60)", memory_limit_mb=4096),
        _python("crasher", "import time, sys; time.sleep(0.3); sys.exit(2)"),
    )
    path = tmp_path / "supervisor.json"
    seen: list[int] = []
    torn: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(raw)
                seen.append(1)
            except ValueError:
                torn.append(raw[:80].decode(errors="replace"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        sup.start()
        _tick_until(sup, lambda: sup.children["crasher"].state == "restarting")
        for _ in range(300):  # many rewrites while the reader reads
            sup.write_state()
        processes = read_processes(path)
    finally:
        stop.set()
        thread.join()
        sup.stop()
    _report(f"SUPERVISION state file: {len(seen)} whole reads, {len(torn)} torn")
    assert not torn
    assert set(processes) == {"steady", "crasher"}
    steady, crasher = processes["steady"], processes["crasher"]
    assert steady.ok
    assert steady.state == "running"
    assert steady.pid == sup.children["steady"].proc.pid  # type: ignore[union-attr]
    assert steady.memory_limit_mb == 4096
    assert not crasher.ok
    assert crasher.state == "restarting"
    assert crasher.pid is None
    assert crasher.last_exit == 2
    written_at = json.loads(path.read_bytes())["written_at"]
    assert read_processes(path, now=written_at + 10) == {}  # a stale file: no supervisor
    assert read_processes(tmp_path / "missing.json") == {}


@pytest.mark.anyio
async def test_health_shows_a_rewritten_state_file_at_once_and_a_stale_one_as_gone(
    tmp_path: Path,
) -> None:
    """/health keeps its answer's bytes while nothing it was made of changed: a restart
    written to the state file shows in the next answer, and a file that stops being
    rewritten reads as no supervisor once it is STATE_FRESH_SECONDS old."""
    from api.main import create_app
    from api.routers import health
    from shared import migrate
    from shared.settings import Settings

    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    app = create_app(settings)
    path = settings.supervisor_state_file

    def write(state: str, written_at: float) -> None:
        child = {"kind": "api", "state": state, "pid": 1 if state == "running" else None}
        child |= {"restarts": 0, "last_exit": None, "since": "2026-12-03T00:00:00Z"}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"written_at": written_at, "children": {"api": child}}))
        tmp.replace(path)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def processes() -> dict[str, Any]:
                resp = await client.get("/api/v1/health")
                assert resp.headers["content-type"] == "application/json"
                return resp.json()["processes"]  # type: ignore[no-any-return]

            write("running", time.time())
            first = await processes()
            again = await processes()
            write("restarting", time.time())
            restarted = await processes()
            write("running", time.time() - health.STATE_FRESH_SECONDS + 0.4)
            fresh = await processes()
            time.sleep(0.6)  # not rewritten: stale now
            stale = await processes()
    _report(
        f"HEALTH state: {first['api']['state']}, {again['api']['state']}, "
        f"{restarted['api']['state']}, then {len(stale)} processes once stale"
    )
    assert first["api"]["state"] == again["api"]["state"] == "running"
    assert restarted["api"]["state"] == "restarting"
    assert restarted["api"]["ok"] is False
    assert fresh["api"]["state"] == "running"
    assert stale == {}


def test_stop_sends_sigterm_then_sigkills_what_ignores_it(tmp_path: Path) -> None:
    marker = tmp_path / "graceful"
    graceful = (
        "import signal, sys, time, pathlib\n"
        "def bye(*_):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('saved'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    sup = _supervisor(
        tmp_path, _python("graceful", graceful), _python("stubborn", stubborn), stop_timeout=1.5
    )
    sup.start()
    time.sleep(1.0)  # both have installed their handlers
    stubborn_proc = psutil.Process(sup.children["stubborn"].proc.pid)  # type: ignore[union-attr]
    grandchildren = stubborn_proc.children()
    assert len(grandchildren) == 1
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    _report(f"SUPERVISION stop with one child ignoring SIGTERM took {took:.2f}s (timeout 1.5 s)")
    assert marker.read_text() == "saved"
    assert sup.children["graceful"].last_exit == 0
    assert sup.children["stubborn"].last_exit == -signal.SIGKILL
    _gone, alive = psutil.wait_procs(grandchildren, timeout=5)
    assert not alive  # the whole process group went
    assert all(c.state == "stopped" for c in sup.children.values())
    assert json.loads((tmp_path / "supervisor.json").read_bytes())["stopping"] is True


def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from cli.supervisor import Backoff, ChildSpec, Supervisor\n"
        "argv = (sys.executable, '-c', 'import time; time.sleep(60)')\n"
        "spec = ChildSpec('sleeper', 'api', argv)\n"
        f"sup = Supervisor([spec], env=os.environ, state_file=Path({str(tmp_path)!r}) / 's.json',\n"
        "                 backoff=Backoff(), stop_timeout=5)\n"
        "sup.start()\n"
        "print(sup.children['sleeper'].proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([PY, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    with parent.stdout:
        child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    started = time.monotonic()
    while time.monotonic() - started < 10 and _running(child):
        time.sleep(0.01)
    _report(f"SUPERVISION orphan stopped {time.monotonic() - started:.2f}s after its supervisor")
    assert not _running(child)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


BOMB = """
import json, resource, sys
soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
if soft == resource.RLIM_INFINITY:
    sys.exit(3)  # never run the bomb without the limit: it would take the host
chunks = []
try:
    while True:
        chunks.append(b"x" * (16 << 20))  # written, so really resident
except MemoryError:
    held = len(chunks) * 16
chunks.clear()
# the peak of this program's own memory: VmHWM starts afresh at exec, while ru_maxrss keeps
# the forking parent's (a pytest process with torch loaded read 807 MB)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"limit_mb": soft >> 20, "held_mb": held, "max_rss_mb": hwm >> 10}))
"""


def test_an_allocation_bomb_in_a_limited_child_fails_with_memory_error(tmp_path: Path) -> None:
    available = psutil.virtual_memory().available >> 20
    spec = ChildSpec("bomb", "api", (PY, "-c", BOMB), memory_limit_mb=256)
    out = tmp_path / "bomb.out"
    # the child's stderr is pytest's (captured, shown on failure); a crash there says where
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    with open(out, "wb") as sink:
        proc = spawn(spec, env, stdout=sink)
        proc.wait(timeout=60)
    text = out.read_text(errors="replace")
    ours = resource.getrlimit(resource.RLIMIT_DATA)
    _report(
        f"SUPERVISION allocation bomb: rc {proc.returncode}, output {text[-500:]!r}, "
        f"host had {available} MiB available, the test's own RLIMIT_DATA {ours}"
    )
    assert proc.returncode == 0, f"the bomb did not run under its limit: {text[-2000:]}"
    figures = json.loads(text)
    assert figures["limit_mb"] == 256
    assert 0 < figures["held_mb"] <= 256
    # RLIMIT_DATA leaves out file-backed pages (the interpreter's code, shared libraries)
    assert figures["max_rss_mb"] <= 256 + 32, figures


@dataclass
class Up:
    """A running `digits up` and what the test learned about it."""

    proc: subprocess.Popen[bytes]
    url: str
    data: Path
    token: str = ""

    def log(self) -> str:
        return (self.data / "up.log").read_text(errors="replace")[-8000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"digits up exited {self.proc.returncode}:\n{self.log()}"

    def child(self, match: Callable[[list[str]], bool]) -> psutil.Process | None:
        """The direct child of `digits up` whose command line matches."""
        for proc in psutil.Process(self.proc.pid).children():
            try:
                if match(proc.cmdline()):
                    return proc
            except psutil.Error:
                continue
        return None

    def successor(
        self, match: Callable[[list[str]], bool], old: psutil.Process
    ) -> psutil.Process | None:
        """The matching child when it is a new process, not `old`."""
        found = self.child(match)
        return found if found is not None and found.pid != old.pid else None

    def worker_pid(self, name: str) -> int | None:
        """The pid a live worker registered under `name` (None until it has)."""
        try:
            resp = httpx.get(
                self.url + "/api/v1/workers",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=5,
            )
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        for worker in resp.json():
            if worker["name"] == name and worker["alive"]:
                return int(worker["pid"])
        return None


def _is_model_server(argv: list[str]) -> bool:
    return "model-server" in argv


def _is_dataset_worker(argv: list[str]) -> bool:
    return "worker" in argv and "--queues" in argv and "cpu" in argv


def _is_train_worker(argv: list[str]) -> bool:
    return "worker" in argv and "--cpu" in argv


def _until(what: str, check: Callable[[], Any], up: Up, timeout: float = 60) -> Any:
    """Poll `check` until it returns something truthy, while `digits up` stays alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up.alive()
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not after {timeout}s:\n{up.log()}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`digits up` on the embedded default (SQLite, filesystem broker), ready to train."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update({"DIGITS_DATA_DIR": str(data), "DIGITS_PORT": str(port)})
    with open(data / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Up(proc, f"http://127.0.0.1:{port}", data)
    try:
        _until("the admin token", lambda: (data / "admin-token").is_file(), running, 60)
        running.token = (data / "admin-token").read_text().strip()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class HealthPoller:
    """GET /health every 50 ms in a thread: every answer, and every failure to get one."""

    url: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    resp = client.get(self.url + "/api/v1/health")
                    self.answers.append((now, resp.status_code, resp.json().get("status", "")))
                except (httpx.HTTPError, ValueError) as exc:
                    self.failures.append((now, type(exc).__name__))
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def non_2xx(self) -> int:
        return sum(1 for _, code, _ in self.answers if not 200 <= code < 300)

    def degraded_between(self, start: float, end: float) -> int:
        return sum(1 for t, _, status in self.answers if start <= t <= end and status == "degraded")


def _health_status(url: str) -> str:
    try:
        return str(httpx.get(url + "/api/v1/health", timeout=5).json()["status"])
    except (httpx.HTTPError, ValueError, KeyError):
        return ""


def test_killed_children_come_back_while_the_api_keeps_answering(up: Up, tmp_path: Path) -> None:
    """SIGKILL the model service, then the dataset worker, then the training worker."""
    started = time.monotonic()
    host = socket.gethostname()
    workers = {"dataset": f"cpu@{host}", "train": f"cpu-train@{host}"}
    model_server = _until("the model service", lambda: up.child(_is_model_server), up)
    model_url = model_server.environ()["DIGITS_MODEL_SERVER_URL"]

    model_port = int(model_url.rsplit(":", 1)[1])

    def model_ready() -> bool:
        try:
            return (
                listening("127.0.0.1", model_port)
                and httpx.get(model_url + "/health", timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    _until("the model service ready", model_ready, up, 90)
    for name in workers.values():
        _until(f"worker {name} registered", lambda n=name: up.worker_pid(n), up, 90)  # type: ignore[misc]
    _until("/health ok", lambda: _health_status(up.url) == "ok", up, 30)
    api = up.child(lambda argv: "api" in argv)
    assert api is not None
    limits = {
        label: child.rlimit(psutil.RLIMIT_DATA)[0] >> 20
        for label, match in (
            ("dataset-worker", _is_dataset_worker),
            ("train-worker", _is_train_worker),
            ("model-server", _is_model_server),
        )
        if (child := up.child(match)) is not None
    }
    _report(f"SUPERVISION RLIMIT_DATA of the children (MiB): {limits}")
    assert len(limits) == 3
    assert all(0 < mb < psutil.virtual_memory().total >> 20 for mb in limits.values())
    _report(f"SUPERVISION ready after {time.monotonic() - started:.1f}s")

    poller = HealthPoller(up.url)
    figures: dict[str, dict[str, float | int]] = {}
    cases: list[tuple[str, Callable[[list[str]], bool], Callable[[int], bool]]] = [
        ("model-server", _is_model_server, lambda _pid: model_ready()),
        (
            "dataset-worker",
            _is_dataset_worker,
            lambda pid: up.worker_pid(workers["dataset"]) == pid,
        ),
        ("train-worker", _is_train_worker, lambda pid: up.worker_pid(workers["train"]) == pid),
    ]
    try:
        for label, match, ready in cases:
            victim = up.child(match)
            assert victim is not None, f"no {label} child:\n{up.log()}"
            killed_at = time.monotonic()
            victim.kill()
            victim.wait(timeout=10)
            successor = _until(
                f"a new {label}", lambda m=match, v=victim: up.successor(m, v), up, 30
            )  # type: ignore[misc]
            respawned = time.monotonic() - killed_at
            _until(f"{label} ready", lambda r=ready, p=successor.pid: r(p), up, 30)  # type: ignore[misc]
            back = time.monotonic() - killed_at
            _until("/health ok again", lambda: _health_status(up.url) == "ok", up, 30)
            ok_again = time.monotonic() - killed_at
            figures[label] = {
                "respawned_s": round(respawned, 2),
                "ready_s": round(back, 2),
                "health_ok_s": round(ok_again, 2),
                "degraded_answers": poller.degraded_between(killed_at, killed_at + ok_again),
            }
            _report(f"SUPERVISION {label} {json.dumps(figures[label])}")
    finally:
        poller.stop()
    _report(
        f"SUPERVISION health answers={len(poller.answers)} non_2xx={poller.non_2xx()} "
        f"failures={len(poller.failures)}"
    )
    assert poller.non_2xx() == 0
    assert not poller.failures, poller.failures[:5]
    for label, figure in figures.items():
        assert figure["degraded_answers"] > 0, f"/health never said degraded while {label} was down"
    assert up.child(lambda argv: "api" in argv).pid == api.pid  # type: ignore[union-attr]

    # the restarted workers still do the work: a small import, then a 1-epoch LeNet
    images, labels = digits_arrays()
    folder = write_class_folders(tmp_path / "digits", images[:300], labels[:300])
    archive = zip_folder(folder, tmp_path / "digits.zip", prefix="digits/")
    headers = {"Authorization": f"Bearer {up.token}"}
    with httpx.Client(base_url=up.url + "/api/v1", timeout=60, headers=headers) as client:
        resp = post_dataset(
            client,
            {"name": "digits", "image_width": 28, "image_height": 28, "channels": 1},
            {"archive": ("digits.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        dataset = wait_for(client, f"/datasets/{resp.json()['id']}", timeout=60)
        assert dataset["status"] == "done", dataset["error"]
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": dataset["id"],
                "name": "after-restarts",
                "network": "lenet",
                "hyperparameters": {**LENET, "epochs": 1},
            },
        )
        assert resp.status_code == 202, resp.text
        job = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=90)
    assert job["status"] == "done", job["error"]
    _report(f"SUPERVISION total {time.monotonic() - started:.1f}s")


def test_health_says_degraded_with_200_when_a_child_or_the_model_service_is_down(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    model_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env.update({"DIGITS_DATA_DIR": str(tmp_path), "DIGITS_MODEL_SERVER_URL": model_url})
    api = Stack(env=env, logs=tmp_path / "logs")
    sup = _supervisor(
        tmp_path,
        _python("api", "import time; time.sleep(60)"),
        _python("model-server", "import sys; sys.exit(1)"),
    )
    sup.start()
    try:
        _tick_until(sup, lambda: sup.children["model-server"].state == "restarting")
        sup.stopping = True  # keep it down, and the state file fresh, while /health looks
        api.start_api()
        sup.tick()
        first = httpx.get(api.url + "/api/v1/health", timeout=10)
        second = httpx.get(api.url + "/api/v1/health", timeout=10)
    finally:
        api.stop()
        sup.stop()
    health = first.json()
    _report(f"SUPERVISION degraded /health: {first.status_code} {json.dumps(health)}")
    assert first.status_code == 200
    assert health["status"] == "degraded"
    assert health["database"]["ok"]
    assert health["broker"]["ok"]
    assert not health["model_service"]["ok"]
    assert model_url in health["model_service"]["detail"]
    assert health["processes"]["api"]["state"] == "running"
    assert health["processes"]["model-server"]["state"] == "restarting"
    assert health["processes"]["model-server"]["last_exit"] == 1
    # the second answer within a second reuses the first's checks
    assert second.json()["database"] == health["database"]
    assert second.json()["model_service"] == health["model_service"]
