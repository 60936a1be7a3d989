"""docker-compose.yml, proven complete without Docker.

The harness reads the file, builds the image's files the way the Dockerfile does (its COPY
lines, then `pip install .` into a folder), and starts every service's command with that
service's environment, one process per service: the database and broker services map to the
local PostgreSQL (a fresh database) and Redis (a fresh key prefix), volumes to temporary folders,
service names and container ports to 127.0.0.1 and free ports, GPU services to CPU workers.
Then import -> train -> classify -> export -> evaluate runs through exactly those processes, so a
service missing from the file makes the flow fail (the second flow test removes one in a copy).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
import yaml

from tests.support import free_port, post_dataset

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
LOCAL_REDIS = os.environ.get("DIGITS_TEST_REDIS", "redis://127.0.0.1:6379/0")
# what the local machine stands in for: these images are not run, their services are mapped
MAPPED_IMAGES = ("postgres", "redis")


def _compose() -> dict[str, Any]:
    return load_compose(COMPOSE, example_env())


# -- reading the compose file and the Dockerfile -------------------------------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))")
_EXPR = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>.*))?$", re.S)


class ComposeError(Exception):
    """The file would not start under `docker compose up` (a required variable is unset)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""

    def sub(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        expr = match.group("braced") if match.group("braced") is not None else match["plain"]
        parsed = _EXPR.match(expr)
        if parsed is None:
            raise ComposeError(f"bad substitution ${{{expr}}}")
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and unset:
            raise ComposeError(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return value or ""

    return _VAR.sub(sub, text)


def _walk(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def load_compose(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file with its anchors merged and its variables substituted."""
    return dict(_walk(yaml.safe_load(path.read_text()), env))


def example_env() -> dict[str, str]:
    """The variables an operator sets by copying .env.example to .env."""
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return {**env, "HOSTNAME": "compose-test"}


@dataclass
class Dockerfile:
    """What the harness needs of the Dockerfile: ENV, COPY, WORKDIR, the install, HEALTHCHECK."""

    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    workdir: str = "/"
    healthcheck: list[str] | None = None

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        found = cls()
        text = re.sub(r"\\\n", " ", path.read_text())
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            word = word.upper()
            if word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    found.env[key] = value
            elif word == "COPY":
                *sources, dest = shlex.split(rest)
                found.copies.append((sources, dest))
            elif word == "RUN":
                found.runs.append(rest.strip())
            elif word == "WORKDIR":
                found.workdir = rest.strip()
            elif word == "HEALTHCHECK":
                command = rest.split(" CMD ", 1)[1].strip()
                found.healthcheck = ["CMD-SHELL", command]
        return found


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: from the context root, `**` any folders."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if token.startswith("**"):
            out += "(.*/)?" if token.endswith("/") else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Excluded when the path or a folder above it matches (patterns are not recursive)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_pattern(p).fullmatch(prefix) for p in patterns for prefix in prefixes)


def build_image(tmp: Path) -> Path:
    """The image's installed files: the Dockerfile's COPY lines into a build context (as
    `docker build` sends it, less .dockerignore), then its `pip install .` into a folder."""
    docker = Dockerfile.parse(DOCKERFILE)
    installs = [r for r in docker.runs if re.fullmatch(r"pip install (--\S+ )*\.", r)]
    assert installs, f"the Dockerfile must `pip install .` the project: {docker.runs}"
    ignore_file = ROOT / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    context = tmp / "context"
    for sources, dest in docker.copies:
        for source in sources:
            src = ROOT / source
            target = context / (
                (dest.rstrip("/") + "/" + src.name) if dest.endswith("/") else dest
            ).removeprefix("./")
            if src.is_dir():
                for path in src.rglob("*"):
                    relative = path.relative_to(ROOT).as_posix()
                    if path.is_file() and not _ignored(relative, patterns):
                        out = target / path.relative_to(src)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, out)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    site = tmp / "site"
    started = time.perf_counter()
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-deps", "--target", str(site), str(context)]
    # the virtualenv's setuptools builds in seconds; where it cannot (an old one without
    # `wheel`), an isolated build as `docker build` runs it, its setuptools from the index
    how = "the virtualenv's setuptools"
    if subprocess.run([*pip, "--no-build-isolation"], cwd=tmp, check=False).returncode != 0:
        shutil.rmtree(site, ignore_errors=True)
        subprocess.run(pip, check=True, cwd=tmp)
        how = "an isolated build"
    print(f"\n[compose] image files built by pip ({how}) in {time.perf_counter() - started:.1f}s")
    return site


# -- running the services -------------------------------------------------------------------


class FlowFailed(AssertionError):
    """A step of import -> train -> classify -> export -> evaluate did not work."""

    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"{step}: {why}")
        self.step = step


@dataclass
class Deployment:
    """The compose services as local processes."""

    compose: dict[str, Any]
    site: Path
    tmp: Path
    pg_url: str
    prefix: str
    docker: Dockerfile = field(default_factory=lambda: Dockerfile.parse(DOCKERFILE))
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return dict(self.compose["services"])

    def mapped(self, name: str) -> bool:
        image = str(self.services[name].get("image", ""))
        return image.split(":")[0] in MAPPED_IMAGES and "build" not in self.services[name]

    def container_ports(self, name: str) -> list[int]:
        svc = self.services[name]
        ports = [int(p) for p in svc.get("expose", [])]
        for item in svc.get("ports", []):
            ports.append(int(str(item).rsplit(":", 1)[-1].split("/")[0]))
        return ports

    def __post_init__(self) -> None:
        for name in self.services:
            if not self.mapped(name):
                for port in self.container_ports(name):
                    self.ports[(name, port)] = free_port()

    def _rewrite(self, name: str, value: str) -> str:
        """A value as this machine runs it: services, mounts and listen addresses mapped."""
        url = urlparse(value) if "://" in value else None
        if url is not None and url.hostname in self.services and self.mapped(url.hostname):
            image = str(self.services[url.hostname]["image"]).split(":")[0]
            return self.pg_url if image == "postgres" else LOCAL_REDIS  # local Redis: no AUTH
        for (service, port), local in self.ports.items():
            value = value.replace(f"{service}:{port}", f"127.0.0.1:{local}")
        for volume in self.services[name].get("volumes", []):
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if value == target or value.startswith(target + "/"):
                value = str(self.tmp / "volumes" / source) + value[len(target) :]
        return value.replace("0.0.0.0", "127.0.0.1")

    def environment(self, name: str) -> dict[str, str]:
        """The image's ENV, then the service's environment, mapped to this machine."""
        raw = self.services[name].get("environment", {}) or {}
        if isinstance(raw, list):
            raw = dict(item.partition("=")[::2] for item in raw)
        env = {**self.docker.env, **{k: "" if v is None else str(v) for k, v in raw.items()}}
        env = {k: self._rewrite(name, v) for k, v in env.items()}
        for (service, port), local in self.ports.items():
            if service == name and env.get("DIGITS_PORT") == str(port):
                env["DIGITS_PORT"] = str(local)
        if any(self.mapped(s) and "redis" in str(self.services[s]["image"]) for s in self.services):
            env["DIGITS_BROKER_PREFIX"] = self.prefix
        home = self.tmp / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")},
            **env,
            "PYTHONPATH": str(self.site),
            "PATH": f"{self.site / 'bin'}{os.pathsep}{Path(sys.executable).parent}"
            f"{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "CUDA_VISIBLE_DEVICES": "",
        }

    def gpu(self, name: str) -> bool:
        devices = (
            self.services[name]
            .get("deploy", {})
            .get("resources", {})
            .get("reservations", {})
            .get("devices", [])
        )
        return any("gpu" in d.get("capabilities", []) for d in devices)

    def argv(self, name: str, command: list[str] | str | None = None) -> list[str]:
        """The service's command as a local process (GPU workers become CPU workers)."""
        raw = self.services[name].get("command") if command is None else command
        args = shlex.split(raw) if isinstance(raw, str) else [str(a) for a in raw or []]
        if self.gpu(name):
            out: list[str] = []
            skip = False
            for arg in args:
                if skip:
                    skip = False
                elif arg in ("--gpu", "--gpus"):
                    out.append("--cpu")
                    skip = True
                else:
                    out.append(arg)
            args = out
        args = [self._rewrite(name, a) for a in args]
        for (service, port), local in self.ports.items():
            if service == name:
                args = [str(local) if a == str(port) else a for a in args]
        if args and args[0] == "digits":
            args[0] = str(self.site / "bin" / "digits")
        return args

    def workdir(self, name: str) -> Path:
        path = self.tmp / "workdir" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, name: str) -> subprocess.Popen[bytes]:
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                self.argv(name),
                env=self.environment(name),
                cwd=self.workdir(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.procs)

    def healthcheck(self, name: str) -> list[str] | None:
        """The service's healthcheck (or the image's), as a local command."""
        test = self.services[name].get("healthcheck", {}).get("test") or self.docker.healthcheck
        if not test or test[0] == "NONE":
            return None
        if test[0] == "CMD-SHELL":
            command = ["sh", "-c", " ".join(test[1:])]
        else:
            command = list(test[1:] if test[0] == "CMD" else test)
        for (service, port), local in self.ports.items():
            if service == name:
                command = [
                    c.replace(f"127.0.0.1:{port}", f"127.0.0.1:{local}").replace(
                        f"localhost:{port}", f"127.0.0.1:{local}"
                    )
                    for c in command
                ]
        return command

    def healthy(self, name: str) -> bool:
        command = self.healthcheck(name)
        if command is None:
            return self.procs[name].poll() is None
        env = self.environment(name)
        done = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
        return done.returncode == 0

    def one_shot(self, name: str) -> bool:
        """A service others wait to complete (the migration), not one that keeps running."""
        for other in self.services.values():
            deps = other.get("depends_on") or {}
            if isinstance(deps, dict) and (deps.get(name) or {}).get("condition") == (
                "service_completed_successfully"
            ):
                return True
        return False

    def up(self, timeout: float = 180) -> dict[str, float]:
        """Start the services in dependency order, as `docker compose up` does: a one-shot
        service must exit 0 first, a `service_healthy` one pass its healthcheck. Returns the
        seconds at which each one started."""
        began: dict[str, float] = {}
        pending = [n for n in self.services if not self.mapped(n)]
        started = time.monotonic()
        while pending:
            progressed = False
            for name in list(pending):
                deps = self.services[name].get("depends_on", {}) or {}
                if isinstance(deps, list):
                    deps = {d: {"condition": "service_started"} for d in deps}
                missing = [d for d in deps if d not in self.services]
                if missing:
                    raise FlowFailed("up", f"{name} depends on services not in the file: {missing}")
                if not all(self.mapped(d) or d in began for d in deps):
                    continue
                for dep, rule in deps.items():
                    if not self.mapped(dep) and rule.get("condition") == "service_healthy":
                        self.wait_healthy([dep], timeout)
                proc = self.start(name)
                began[name] = round(time.monotonic() - started, 2)
                if self.one_shot(name):
                    try:
                        code = proc.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        raise FlowFailed(
                            "up", f"{name} did not finish:\n{self.log(name)}"
                        ) from None
                    if code != 0:
                        raise FlowFailed("up", f"{name} exited {code}:\n{self.log(name)}")
                pending.remove(name)
                progressed = True
            if not progressed:
                raise FlowFailed("up", f"a dependency cycle among {pending}")
        return began

    def wait_healthy(
        self, names: list[str] | None = None, timeout: float = 180
    ) -> dict[str, float]:
        """Each long-running service passes its healthcheck; seconds from now for each."""
        started = time.monotonic()
        waiting = set(names or [n for n in self.procs if not self.one_shot(n)])
        healthy: dict[str, float] = {}
        while waiting and time.monotonic() - started < timeout:
            for name in sorted(waiting):
                if self.procs[name].poll() is not None:
                    raise FlowFailed("up", f"{name} exited:\n{self.log(name)}")
                if self.healthy(name):
                    healthy[name] = round(time.monotonic() - started, 2)
                    waiting.discard(name)
            time.sleep(0.5)
        if waiting:
            raise FlowFailed("up", f"not healthy: {sorted(waiting)}\n{self.logs()}")
        return healthy

    def run_once(self, name: str, command: list[str]) -> str:
        """`docker compose run --rm <name> <command>`: a one-off process in its environment."""
        done = subprocess.run(
            self.argv(name, command),
            env=self.environment(name),
            cwd=self.workdir(name),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def down(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("image"))


@contextlib.contextmanager
def deployed(compose: dict[str, Any], site: Path, tmp: Path) -> Iterator[Deployment]:
    """The compose services up against a fresh database and Redis prefix; down afterwards."""
    from tests.conftest import create_pg_database, drop_pg_database

    pg_url = create_pg_database()
    prefix = f"digits-compose-{uuid.uuid4().hex[:8]}:"
    deployment = Deployment(compose, site, tmp, pg_url, prefix)
    try:
        yield deployment
    finally:
        deployment.down()
        drop_pg_database(pg_url)
        client = redis.Redis.from_url(LOCAL_REDIS)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _api_url(deployment: Deployment) -> str:
    ports = [p for (s, _), p in deployment.ports.items() if s == "api"]
    if not ports:
        raise FlowFailed("up", "the file has no api service publishing a port")
    return f"http://127.0.0.1:{ports[0]}/api/v1"


def _until(client: httpx.Client, path: str, step: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if body.get("status") in ("done", "error", "aborted"):
            break
        time.sleep(0.3)
    if body.get("status") != "done":
        raise FlowFailed(step, f"{path} ended {body.get('status')}: {body.get('status_reason')}")
    return body


def run_flow(deployment: Deployment, digits_zip: Path) -> dict[str, float]:
    """import -> train -> classify -> export -> evaluate through the services; seconds each."""
    seconds: dict[str, float] = {}
    if "api" not in deployment.services:
        raise FlowFailed("up", "the file has no api service")
    seconds.update({f"up:{k}": v for k, v in deployment.up().items()})
    seconds.update({f"healthy:{k}": v for k, v in deployment.wait_healthy().items()})
    out = deployment.run_once("api", ["digits", "user", "create", "admin", "--admin"])
    token = re.search(r"token: (\S+)", out)
    assert token, out
    headers = {"Authorization": f"Bearer {token[1]}"}
    with httpx.Client(base_url=_api_url(deployment), headers=headers, timeout=120) as client:
        clock = time.perf_counter()
        resp = post_dataset(
            client,
            {"name": "digits", "image_width": 16, "image_height": 16, "channels": 1,
             "val_pct": 25, "seed": 1},
            {"archive": ("digits.zip", digits_zip.read_bytes(), "application/zip")},
        )  # fmt: skip
        if resp.status_code != 202:
            raise FlowFailed("import", f"{resp.status_code} {resp.text[:300]}")
        dataset = _until(client, f"/datasets/{resp.json()['id']}", "import", 120)
        seconds["import"] = round(time.perf_counter() - clock, 2)

        clock = time.perf_counter()
        resp = client.post(
            "/jobs",
            json={"dataset_id": dataset["id"], "name": "lenet", "network": "lenet",
                  "hyperparameters": {"epochs": 1, "batch_size": 32, "learning_rate": 0.05}},
        )  # fmt: skip
        if resp.status_code != 202:
            raise FlowFailed("train", f"{resp.status_code} {resp.text[:300]}")
        job = _until(client, f"/jobs/{resp.json()['jobs'][0]['id']}", "train", 300)
        workers = {w["name"]: w for w in client.get("/workers").json()}
        seconds["train"] = round(time.perf_counter() - clock, 2)

        clock = time.perf_counter()
        page = client.get(f"/datasets/{dataset['id']}/samples", params={"per_page": 2}).json()
        pngs = [client.get(item["image_url"]).content for item in page["items"]]
        resp = client.post(
            f"/jobs/{job['id']}/classify",
            files=[("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
        )
        if resp.status_code != 200:
            raise FlowFailed("classify", f"{resp.status_code} {resp.text[:300]}")
        seconds["classify"] = round(time.perf_counter() - clock, 2)

        clock = time.perf_counter()
        resp = client.get(f"/jobs/{job['id']}/download", params={"export": "onnx"}, timeout=300)
        if resp.status_code != 200:
            raise FlowFailed("export", f"{resp.status_code} {resp.text[:300]}")
        with tarfile.open(fileobj=io.BytesIO(resp.content)) as tf:
            if "model.onnx" not in tf.getnames():
                raise FlowFailed("export", f"no model.onnx in {tf.getnames()}")
        seconds["export"] = round(time.perf_counter() - clock, 2)

        clock = time.perf_counter()
        resp = client.post(f"/jobs/{job['id']}/evaluate", data={"split": "val"})
        if resp.status_code != 202:
            raise FlowFailed("evaluate", f"{resp.status_code} {resp.text[:300]}")
        evaluation = _until(client, f"/jobs/{resp.json()['id']}", "evaluate", 120)
        results = client.get(f"/jobs/{evaluation['id']}/results").json()
        if not 0 < results.get("top1", 0) <= 1:
            raise FlowFailed("evaluate", f"results: {results}")
        seconds["evaluate"] = round(time.perf_counter() - clock, 2)
    # the work ran on the compose workers, by their compose names
    assert job["worker"] in workers, (job["worker"], sorted(workers))
    assert evaluation["worker"] in workers
    return seconds


# -- the tests --------------------------------------------------------------------------------


def test_variables_are_substituted_as_compose_does() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate("${SET}-${EMPTY:-d}-${EMPTY-d}-${UNSET:-d}-$$SET-$SET", env) == "x-d--d-$SET-x"
    )
    with pytest.raises(ComposeError, match="needed"):
        interpolate("${EMPTY:?needed}", env)
    assert example_env()["POSTGRES_PASSWORD"]  # every required variable has an example


def test_database_and_broker_are_unpublished_and_password_protected() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis"):
        assert "ports" not in services[name], f"{name} must not be published"
    assert "POSTGRES_PASSWORD" in services["postgres"]["environment"]
    assert "--requirepass" in services["redis"]["command"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][-1] == example_env()["REDIS_PASSWORD"]


def test_digits_services_wait_for_healthy_dependencies_and_run_unprivileged() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        if name in ("postgres", "redis"):
            continue
        assert svc.get("user") not in (None, "root", "0", "0:0"), name
        deps = svc.get("depends_on", {})
        if name == "model-server":  # it reads checkpoints, never the database or the broker
            assert not deps
            continue
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert deps["redis"]["condition"] == "service_healthy", name
            assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_gpu_workers_are_pinned_to_distinct_devices() -> None:
    services = _compose()["services"]
    devices = []
    for name, svc in services.items():
        if name.startswith("worker-gpu"):
            reservation = svc["deploy"]["resources"]["reservations"]["devices"]
            assert len(reservation) == 1
            assert len(reservation[0]["device_ids"]) == 1
            devices.append(reservation[0]["device_ids"][0])
            assert "--gpu" in svc["command"], name
    assert devices
    assert len(devices) == len(set(devices))


def test_the_image_holds_every_package_and_the_web_ui(image: Path) -> None:
    """What `pip install -e .` gives `make run`, the image's `pip install .` gives too."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert (image / package / "__init__.py").is_file(), f"{package} is not in the image"
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        for glob in globs:
            matched = (p for p in (ROOT / package).glob(glob) if p.is_file())
            for path in sorted(p.relative_to(ROOT) for p in matched):
                assert (image / path).is_file(), f"{path} is not in the image"
    assert (image / "api" / "ui" / "index.html").is_file()
    assert (image / "bin" / "digits").is_file()


def test_the_compose_services_import_train_classify_export_and_evaluate(
    image: Path, digits_zip: Path, tmp_path: Path
) -> None:
    with deployed(_compose(), image, tmp_path) as deployment:
        try:
            seconds = run_flow(deployment, digits_zip)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{deployment.logs()}") from exc
    print(f"\n[compose] services {sorted(deployment.procs)}; seconds: {seconds}")
    assert {"api", "model-server", "worker-cpu", "worker-gpu0", "migrate"} <= set(deployment.procs)


def test_a_compose_file_without_the_model_service_fails_the_flow(
    image: Path, digits_zip: Path, tmp_path: Path
) -> None:
    """The flow proves the file complete: a copy lacking one service fails it, at the step
    that service serves (what a file without the model service did in production)."""
    copy = tmp_path / "docker-compose.yml"
    data = yaml.safe_load(COMPOSE.read_text())
    del data["services"]["model-server"]
    copy.write_text(yaml.safe_dump(data))
    with (
        deployed(load_compose(copy, example_env()), image, tmp_path) as deployment,
        pytest.raises(FlowFailed) as failed,
    ):
        run_flow(deployment, digits_zip)
    print(f"\n[compose] without model-server the flow fails at: {failed.value}")
    assert failed.value.step == "classify"
