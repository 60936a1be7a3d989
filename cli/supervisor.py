"""`digits up`: run the API, the model service and the workers, and keep them running.

A child that exits is started again after a backoff (doubling from
DIGITS_RESTART_BACKOFF_INITIAL to DIGITS_RESTART_BACKOFF_MAX, afresh once it stayed up
DIGITS_RESTART_RESET_AFTER seconds); one that keeps crashing is retried forever at the longest
wait, so a broken model service never takes the API or the workers down with it. The state of
every child is written to `supervisor.json` in the data directory, which /health reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from shared.settings import Settings

log = logging.getLogger("digits.supervisor")

ChildState = Literal["running", "restarting", "stopped"]

# the memory-limit kinds (keys of DIGITS_CHILD_MEMORY_LIMITS_MB)
KINDS = ("api", "model-server", "dataset-worker", "train-worker", "train-gpu")
TICK = 0.1  # seconds between looks at the children: a crash is noticed within this
MODEL_WAIT = 60.0  # the longest the API's start waits for the model service (s)
STATE_INTERVAL = 1.0  # the state file is rewritten at least this often (it is also a heartbeat)
_MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    """One process to keep running."""

    name: str
    kind: str
    argv: tuple[str, ...]
    memory_limit_mb: int | None = None  # RLIMIT_DATA; None: no limit
    port: int | None = None  # a listener that must be free before it starts
    host: str = "127.0.0.1"  # the address of that listener


@dataclass(frozen=True)
class Backoff:
    """How long to wait before starting a child that exited."""

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 30.0

    def next_delay(self, previous: float | None, uptime: float) -> float:
        """Double the previous wait up to the maximum; start afresh after a long enough run."""
        if previous is None or uptime >= self.reset_after:
            return self.initial
        return min(previous * 2, self.maximum)


@dataclass
class Child:
    """A supervised process and what happened to it."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    state: ChildState = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    since: float = field(default_factory=time.time)
    started_at: float = 0.0  # monotonic
    delay: float | None = None  # the last backoff, doubled on the next quick exit
    restart_at: float = 0.0  # monotonic

    def set_state(self, state: ChildState) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.spec.kind,
            "pid": self.proc.pid if self.proc is not None and self.state == "running" else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "memory_limit_mb": self.spec.memory_limit_mb,
        }


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal={signal.Signals(-code).name}"
        except ValueError:
            return f"signal={-code}"
    return f"code={code}"


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_setup(limit_bytes: int | None, parent: int, prctl: Callable[..., int] | None) -> None:
    """Runs in the child between fork and exec: die with the supervisor, cap the memory."""
    if prctl is not None:
        # a SIGKILLed supervisor still stops its children (gracefully: workers requeue)
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the line above
            os._exit(1)
    if limit_bytes is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def spawn(
    spec: ChildSpec,
    env: Mapping[str, str],
    cwd: Path | None = None,
    stdout: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child the supervisor's way: own process group, memory limit, dies with us.

    RLIMIT_DATA (private writable memory: heap, anonymous mmaps, thread stacks) rather than
    RLIMIT_AS, which also counts shared libraries and reserved-but-unused address space: torch
    alone maps about 3.3 GiB of address space for 0.8 GiB of data on the CPU. A larger
    allocation then fails with MemoryError in that process instead of exhausting the host.
    """
    limit = None
    if spec.memory_limit_mb is not None:
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        limit = spec.memory_limit_mb * _MIB
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
    parent, prctl = os.getpid(), _libc_prctl()
    return subprocess.Popen(
        list(spec.argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        # its own group: a terminal's Ctrl-C reaches only the supervisor, which stops the
        # children in order; and a dead child's leftovers can be killed as one group
        process_group=0,
        preexec_fn=lambda: _child_setup(limit, parent, prctl),
    )


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a server accepts connections on host:port.

    A client that polls a local port nothing listens on yet can be handed that very port as
    its own (an ephemeral port), connect to itself and hold the port, so that the server's
    bind fails. This probe notices that, and closes with a reset (no TIME_WAIT left behind).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return bool(sock.getsockname() != sock.getpeername())


def any_free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Starts the children, restarts those that exit, stops them all on request."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        env: Mapping[str, str],
        state_file: Path,
        backoff: Backoff,
        stop_timeout: float,
        cwd: Path | None = None,
    ) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self.env = env
        self.state_file = state_file
        self.backoff = backoff
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.stopping = False
        self._written_at = 0.0
        self._write_failed = False

    def start(self, names: Sequence[str] | None = None) -> None:
        """Start these children (every child when None)."""
        for name, child in self.children.items():
            if names is None or name in names:
                self._start(child, first=True)
        self.write_state()

    def tick(self) -> None:
        """Reap the children that exited and start those whose backoff is over."""
        changed = False
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is not None and child.state == "running":
                code = child.proc.poll()
                if code is not None:
                    self._exited(child, code, now)
                    changed = True
            if child.state == "restarting" and now >= child.restart_at and not self.stopping:
                self._start(child, first=False)
                changed = True
        if changed or time.monotonic() - self._written_at >= STATE_INTERVAL:
            self.write_state()

    def stop(self, force: Callable[[], bool] = lambda: False) -> None:
        """SIGTERM every child, wait up to the stop timeout (or until `force`), then SIGKILL."""
        self.stopping = True
        live = [c for c in self.children.values() if c.proc is not None and c.state == "running"]
        for child in self.children.values():
            if child.state == "restarting":
                child.set_state("stopped")
        for child in live:
            assert child.proc is not None
            log.info("event=stopping child=%s pid=%d", child.spec.name, child.proc.pid)
            # the leader only: Celery stops its training child itself, after a checkpoint
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and not force():
            if all(c.proc is not None and c.proc.poll() is not None for c in live):
                break
            time.sleep(TICK)
        for child in live:
            assert child.proc is not None
            if child.proc.poll() is None:
                log.warning(
                    "event=killed child=%s pid=%d reason=%s",
                    child.spec.name,
                    child.proc.pid,
                    "second signal" if force() else f"still running after {self.stop_timeout}s",
                )
            _kill_group(child.proc.pid, signal.SIGKILL)  # the leader, and anything it left
            code = child.proc.wait()
            child.last_exit = code
            child.set_state("stopped")
            log.info(
                "event=stopped child=%s pid=%d %s",
                child.spec.name,
                child.proc.pid,
                _exit_text(code),
            )
        self.write_state()

    def write_state(self) -> None:
        """Write every child's state atomically (a reader never sees half a file)."""
        doc = {
            "supervisor_pid": os.getpid(),
            "written_at": time.time(),
            "stopping": self.stopping,
            "children": {name: c.as_json() for name, c in self.children.items()},
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.state_file)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:  # once per failure streak, not every second
                log.warning("event=state_write_failed path=%s error=%s", tmp, exc)
            self._write_failed = True
        self._written_at = time.monotonic()

    def _start(self, child: Child, *, first: bool) -> None:
        spec = child.spec
        if spec.port is not None and not port_free(spec.host, spec.port):
            self._failed_start(child, f"port {spec.port} is in use")
            return
        try:
            child.proc = spawn(spec, self.env, self.cwd)
        except (OSError, subprocess.SubprocessError) as exc:
            self._failed_start(child, str(exc))
            return
        if not first:
            child.restarts += 1
        child.started_at = time.monotonic()
        child.set_state("running")
        log.info(
            "event=%s child=%s pid=%d restarts=%d memory_limit_mb=%s",
            "started" if first else "restarted",
            spec.name,
            child.proc.pid,
            child.restarts,
            spec.memory_limit_mb if spec.memory_limit_mb is not None else "none",
        )

    def _failed_start(self, child: Child, reason: str) -> None:
        child.delay = self.backoff.next_delay(child.delay, 0.0)
        child.restart_at = time.monotonic() + child.delay
        child.set_state("restarting")
        log.warning(
            "event=start_failed child=%s reason=%r restart_in_s=%.2f",
            child.spec.name,
            reason,
            child.delay,
        )

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.proc is not None
        uptime = now - child.started_at
        _kill_group(child.proc.pid, signal.SIGKILL)  # leftovers would hold a port or a GPU
        child.last_exit = code
        child.delay = self.backoff.next_delay(child.delay, uptime)
        child.restart_at = now + child.delay
        child.set_state("restarting")
        looping = child.delay >= self.backoff.maximum
        log.log(
            logging.ERROR if looping else logging.WARNING,
            "event=exited child=%s pid=%d %s uptime_s=%.1f restarts=%d restart_in_s=%.2f%s",
            child.spec.name,
            child.proc.pid,
            _exit_text(code),
            uptime,
            child.restarts,
            child.delay,
            " crash_loop=true (retried forever at this interval)" if looping else "",
        )


def machine_memory_mb() -> int:
    """Physical memory, or the cgroup's limit when that is lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            total = min(total, int(raw))
    except OSError:
        pass
    return int(total // _MIB)


def memory_limit_mb(settings: Settings, kind: str, *, uses_cuda: bool) -> int | None:
    """The RLIMIT_DATA of a child of this kind, in MiB (None: no limit).

    The default, half the machine's memory (at least 2 GiB), stops one runaway process from
    taking the host while leaving room for a large import or CPU training. Processes that use
    CUDA get no default limit: the runtime maps host memory for the driver, pinned buffers and
    unified addressing outside anything Python can account for, and running out there is a
    CUDA error in the middle of a job rather than a MemoryError; cap a GPU host with a cgroup
    (`docker run --memory`, systemd `MemoryMax=`) instead.
    """
    if kind in settings.child_memory_limits_mb:
        value = settings.child_memory_limits_mb[kind]
    elif uses_cuda:
        return None
    elif settings.child_memory_limit_mb is not None:
        value = settings.child_memory_limit_mb
    else:
        value = max(2048, machine_memory_mb() // 2)
    return value or None


def up_specs(
    settings: Settings, host: str, port: int, model_port: int | None, gpus: Sequence[int]
) -> list[ChildSpec]:
    """The children of `digits up`: API, model service, a dataset worker, training workers."""
    me = (sys.executable, "-m", "cli")
    model_on_gpu = bool(gpus) and settings.model_server_device != "cpu"

    def limit(kind: str, uses_cuda: bool = False) -> int | None:
        return memory_limit_mb(settings, kind, uses_cuda=uses_cuda)

    specs = [
        ChildSpec(
            "api",
            "api",
            (*me, "api", "--host", host, "--port", str(port)),
            limit("api"),
            port=port,
            host=host,
        ),
        ChildSpec(
            "model-server",
            "model-server",
            (*me, "model-server"),
            limit("model-server", model_on_gpu),
            port=model_port,
        ),
        ChildSpec(
            "dataset-worker",
            "dataset-worker",
            (*me, "worker", "--queues", "cpu", "--name", f"cpu@{socket.gethostname()}"),
            limit("dataset-worker"),
        ),
    ]
    for index in gpus:
        specs.append(
            ChildSpec(
                f"train-gpu{index}",
                "train-gpu",
                (*me, "worker", "--gpu", str(index)),
                limit("train-gpu", True),
            )
        )
    if not gpus:
        specs.append(
            ChildSpec(
                "train-worker", "train-worker", (*me, "worker", "--cpu"), limit("train-worker")
            )
        )
    return specs


def _wait_ready(
    supervisor: Supervisor, url: str, stopped: Callable[[], bool], timeout: float
) -> None:
    """Supervise until `url` answers 200, a stop is asked for, or `timeout` runs out."""
    import httpx

    where = urllib.parse.urlsplit(url)
    host, port = (
        where.hostname or "127.0.0.1",
        where.port or (443 if where.scheme == "https" else 80),
    )
    started = time.monotonic()
    while not stopped() and time.monotonic() - started < timeout:
        supervisor.tick()
        try:
            if listening(host, port) and httpx.get(url, timeout=1).status_code == 200:
                log.info("event=ready url=%s after_s=%.1f", url, time.monotonic() - started)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    if not stopped():
        log.warning("event=not_ready url=%s after_s=%.0f; starting the API anyway", url, timeout)


def run_up(
    settings: Settings, host: str, port: int, first_start: Callable[[Settings], None]
) -> int:
    """Migrate, then run and supervise the API, the model service and the workers until stopped."""
    from shared import migrate
    from shared.gpus import detect_gpus

    unknown = sorted(set(settings.child_memory_limits_mb) - set(KINDS))
    if unknown:
        print(
            f"error: DIGITS_CHILD_MEMORY_LIMITS_MB names unknown kinds {', '.join(unknown)} "
            f"(known: {', '.join(KINDS)})",
            file=sys.stderr,
        )
        return 2
    if not port_free(host, port):
        print(
            f"error: {host}:{port} is in use; set DIGITS_PORT or stop what uses it", file=sys.stderr
        )
        return 2
    migrate.upgrade(settings)
    first_start(settings)
    env = {**os.environ, "DIGITS_DATA_DIR": str(settings.resolved_data_dir)}
    model_port = None
    if not settings.model_server_url:
        # port+1 by default; another free port when something already listens there
        model_port = port + 1 if port_free("127.0.0.1", port + 1) else any_free_port()
        env["DIGITS_MODEL_SERVER_URL"] = f"http://127.0.0.1:{model_port}"
    gpus = [gpu.index for gpu in detect_gpus()]
    supervisor = Supervisor(
        up_specs(settings, host, port, model_port, gpus),
        env=env,
        state_file=settings.supervisor_state_file,
        backoff=Backoff(
            settings.restart_backoff_initial,
            settings.restart_backoff_max,
            settings.restart_reset_after,
        ),
        stop_timeout=settings.stop_timeout,
    )
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    url = f"http://{host}:{port}"
    print(
        f"digits is starting at {url}  (API docs: {url}/docs; Ctrl-C stops everything)", flush=True
    )
    try:
        # the API last: when it first answers, classify works too (or the wait ran out)
        supervisor.start([name for name in supervisor.children if name != "api"])
        model_url = env.get("DIGITS_MODEL_SERVER_URL") or settings.resolved_model_server_url
        _wait_ready(supervisor, model_url + "/health", lambda: bool(signals), MODEL_WAIT)
        if not signals:
            supervisor.start(["api"])
        while not signals:
            supervisor.tick()
            time.sleep(TICK)
    finally:
        # a second Ctrl-C while the children stop kills them at once
        supervisor.stop(force=lambda: len(signals) > 1)
    print("digits stopped", flush=True)
    return 0
