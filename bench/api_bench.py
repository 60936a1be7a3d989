"""API throughput at concurrency 32 (health, get-job, list-jobs with 10,000 jobs) against a
bare Starlette endpoint returning the same bytes on the same uvicorn, in one run; and the
latency of a metrics read of 100,000 points decimated to 2,000.

Usage: python -m bench.api_bench [--seconds N] [--repeats N] [--quick] [--profile DIR]

wrk (Debian's package; installed here when missing and we are root) is the load generator,
else a Python one (httpx). Each target is paired with its bare endpoint right before it.
Besides requests/s and latency, each figure has the API process's CPU time per request,
which the other processes on a shared machine do not change much. `--profile DIR` samples
the API with py-spy during each run and writes the top entries (py-spy from PyPI).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import ROOT, emit, median, percentile
from tests.support import free_port

JOBS = 10_000
NULL = "\\N"  # COPY's null
HISTORY = ((NULL, "initialized"), ("initialized", "waiting"), ("waiting", "running"))
HISTORY += (("running", "done"),)
POINTS = 100_000
CONCURRENCY = 32
QUIET = ("--log-level", "warning", "--no-access-log")

BARE_APP = """
import json, os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
bodies = json.load(open(os.environ["BARE_BODIES"]))
def handler(body):
    body = body.encode()
    async def endpoint(request):
        return Response(body, media_type="application/json")
    return endpoint
app = Starlette(routes=[Route(f"/bare/{name}", handler(b)) for name, b in bodies.items()])
"""

GOALS = {
    "get_job": ("ratio >= 0.1, p99 <= 50 ms", 0.1, 50.0),
    "list_jobs": ("10,000 jobs, 25 per page: ratio >= 0.05, p99 <= 100 ms", 0.05, 100.0),
    "health": ("p99 <= 20 ms", None, 20.0),
}


async def load(
    url: str, headers: dict[str, str], seconds: float
) -> tuple[float, dict[str, float], int]:
    """Requests/s, latency percentiles (ms) and non-200 count for `seconds` of GETs."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                resp = await client.get(url)
                latencies.append((time.perf_counter() - start) * 1000)
                if resp.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    pct = {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)}
    return len(latencies) / elapsed, pct, errors


def _ms(text: str) -> float:
    value, unit = float(text[:-2] if text.endswith(("ms", "us")) else text[:-1]), text[-2:]
    if unit == "us":
        return value / 1000
    if unit == "ms":
        return value
    return value * 1000  # seconds


def wrk_load(
    url: str, headers: dict[str, str], seconds: float
) -> tuple[float, dict[str, float], int]:
    """Requests/s, latency percentiles (ms) and non-2xx count from wrk (one thread, 32 conns)."""
    cmd = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    pct = {
        f"p{m.group(1)}": _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+[mu]?s)", out, flags=re.M)
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(found.group(1)), pct, int(bad.group(1)) if bad else 0


def ensure_wrk() -> bool:
    """wrk on the PATH, installed from Debian's packages when missing (as root)."""
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=300)
    return shutil.which("wrk") is not None


class Profiler:
    """py-spy sampling one process while a load runs; the top entries, by self and total."""

    def __init__(self, pid: int, out: Path | None) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None

    def start(self, name: str, seconds: float) -> None:
        spy = Path(sys.executable).parent / "py-spy"
        if self.out is None or not spy.exists():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / f"{name}.folded"
        duration = str(max(1, int(seconds) - 1))
        sampling = ("-r", "200", "-f", "raw", "--nonblocking", "--gil")
        self.proc = subprocess.Popen(
            [
                str(spy),
                "record",
                "-p",
                str(self.pid),
                "-d",
                duration,
                *sampling,
                "-o",
                str(self.path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> dict[str, list[str]] | None:
        if self.proc is None or self.path is None:
            return None
        self.proc.wait(timeout=60)
        self.proc = None
        return top_entries(self.path)


def top_entries(path: Path, k: int = 12) -> dict[str, list[str]]:
    """The most sampled functions of a py-spy raw (folded) profile, self and inclusive."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        for frame in set(frames):
            total[frame] += n
        own[frames[-1]] += n
    if not samples:
        return {}
    pct = lambda n: f"{100 * n / samples:.1f}%"  # noqa: E731
    summary = {
        "self": [f"{pct(n)} {f}" for f, n in own.most_common(k)],
        "inclusive": [
            f"{pct(n)} {f}"
            for f, n in total.most_common(4 * k)
            if " (api/" in f or " (shared/" in f  # our own frames: where their time went
        ][:k],
    }
    (path.with_suffix(".top.json")).write_text(json.dumps(summary, indent=1))
    return summary


def seed(
    db_url: str,
    template: dict[str, Any],
    owner: uuid.UUID,
    job_count: int = JOBS,
    point_count: int = POINTS,
) -> tuple[uuid.UUID, int]:
    """job_count copies of a real job's row (with their status histories), and one more job
    with a point_count-point series; returns that job and how many jobs there are now."""
    import psycopg

    conn = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
    jobs, changes = io.StringIO(), io.StringIO()
    request = json.dumps(template["request"]).replace("\\", "\\\\")
    best = json.dumps(template["best"])
    last = json.dumps(template["last"])
    big = uuid.uuid4()
    for i in range(job_count + 1):
        job_id = big if i == job_count else uuid.uuid4()
        at = f"2026-01-01 00:00:00.{i:06d}+00"
        # the series' job runs: its reads are never kept, each one reads all its points
        status = "running" if job_id == big else "done"
        fields = [job_id, "train", owner, f"bench-{i}", f"g{i % 50}", request, status]
        fields += [template["epoch"], template["step"], template["total_steps"], best, last]
        fields += [1.0, "bench", 1, "f", "f", at, at, at, at]
        jobs.write("\t".join(str(f) for f in fields) + "\n")
        for before, after in HISTORY[:3] if job_id == big else HISTORY:
            worker = "bench" if after == "running" else NULL
            changes.write(f"job\t{job_id}\t{before}\t{after}\t{worker}\t{at}\n")
    points = io.StringIO()
    for k in range(point_count):
        value = math.exp(-k / 20_000) + 0.05 * math.sin(k * 0.37)
        points.write(f"{big}\ttrain.loss\t{k}\t{k / 1000}\t{value}\t2026-01-01 00:00:00+00\n")
    columns = (
        "id, kind, owner_id, name, group_name, request, status, epoch, step, total_steps, "
        "best, last, progress, worker, attempts, abort_requested, delete_requested, "
        "created_at, updated_at, started_at, finished_at"
    )
    with conn.cursor() as cur:
        with cur.copy(f"COPY job ({columns}) FROM STDIN") as copy:
            copy.write(jobs.getvalue())
        with cur.copy(
            "COPY status_change (subject, subject_id, from_status, to_status, worker, at) "
            "FROM STDIN"
        ) as copy:
            copy.write(changes.getvalue())
        with cur.copy(
            "COPY metric (job_id, name, step, epoch, value, created_at) FROM STDIN"
        ) as copy:
            copy.write(points.getvalue())
    conn.commit()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE job, status_change, metric")
    total = conn.execute("SELECT count(*) FROM job").fetchone()
    conn.close()
    return big, int(total[0]) if total else 0


def finish(db_url: str, job_id: uuid.UUID) -> None:
    """Mark the series' job done, as its worker would (the row's updated_at moves)."""
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("UPDATE job SET status = 'done', updated_at = now() WHERE id = %s", (job_id,))


def metrics_read(url: str, headers: dict[str, str], repeats: int) -> dict[str, Any]:
    """Sequential reads of one decimated series: median and worst latency, body size."""
    times: list[float] = []
    size = points = 0
    with httpx.Client(headers=headers, timeout=60) as client:
        for _ in range(repeats + 1):  # the first warms the caches; not counted
            start = time.perf_counter()
            resp = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
            resp.raise_for_status()
            size = len(resp.content)
            points = len(resp.json()["series"]["train.loss"]["value"])
    return {
        "median_ms": round(median(times[1:]), 1),
        "max_ms": round(max(times[1:]), 1),
        "kb": round(size / 1024, 1),
        "points_out": points,
    }


def paired(
    name: str,
    url: str,
    bare_url: str,
    headers: dict[str, str],
    seconds: float,
    use_wrk: bool,
    api_proc: psutil.Process,
    profiler: Profiler,
) -> dict[str, Any]:
    """One bare run and one run of the target right after it."""
    run = wrk_load if use_wrk else lambda u, h, s: asyncio.run(load(u, h, s))
    b_rps, _, _ = run(f"{bare_url}/{name}", {}, seconds)
    cpu0, started = api_proc.cpu_times(), time.perf_counter()
    profiler.start(name, seconds)
    rps, pct, errors = run(url, headers, seconds)
    elapsed = time.perf_counter() - started
    cpu1 = api_proc.cpu_times()
    profile = profiler.stop()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "rps": rps,
        "pct": pct,
        "errors": errors,
        "bare_rps": b_rps,
        "cpu_ms_per_request": 1000 * cpu / max(1.0, rps * elapsed),
        "tool": "wrk" if use_wrk else "httpx",
        "profile": profile,
        # what else ran on the machine (the figures depend on it)
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    from bench.stack import BenchStack

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=3, help="pairs per target (this machine's noise is 15%%)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output folder")
    args = parser.parse_args()
    seconds = 1 if args.quick else args.seconds
    pair_count = 1 if args.quick else args.repeats
    # smoke: a tenth of the rows, still 5x max_points, so the series is decimated all the same
    job_count, point_count = (JOBS // 10, POINTS // 10) if args.quick else (JOBS, POINTS)
    use_wrk = ensure_wrk()
    results: dict[str, dict[str, Any]] = {}
    with BenchStack() as bench:
        dataset = bench.digits_dataset(size=8, max_per_class=5)
        headers = {"Authorization": f"Bearer {bench.stack.token}"}
        api = bench.stack.url + "/api/v1"
        with bench.stack.client() as client:
            job = client.post(
                "/jobs",
                json={
                    "dataset_id": dataset["id"],
                    "name": "api",
                    "network": "lenet",
                    "hyperparameters": {"epochs": 1},
                },
            ).json()["jobs"][0]
            job = client.get(f"/jobs/{job['id']}").json()
            owner = uuid.UUID(client.get("/users/me").json()["id"])
        big, total = seed(bench.db, job, owner, job_count, point_count)
        targets = {
            "health": f"{api}/health",
            "get_job": f"{api}/jobs/{job['id']}",
            "list_jobs": f"{api}/jobs?per_page=25",
        }
        bodies = {name: httpx.get(url, headers=headers).text for name, url in targets.items()}
        api_proc = psutil.Process(bench.stack.procs[0].pid)
        profiler = Profiler(api_proc.pid, args.profile)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bodies.json").write_text(json.dumps(bodies))
            (Path(tmp) / "bare_app.py").write_text(BARE_APP)
            port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), *QUIET],
                cwd=tmp,
                env={
                    "PYTHONPATH": tmp,
                    "PATH": "/usr/bin:/bin",
                    "BARE_BODIES": str(Path(tmp) / "bodies.json"),
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                bare_url = f"http://127.0.0.1:{port}/bare"
                for _ in range(100):
                    try:
                        httpx.get(f"{bare_url}/health")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                for name, url in targets.items():
                    # paired: the bare endpoint with the same bytes right before each target;
                    # the pair with the median ratio of `repeats` stands for the target
                    pairs = [
                        paired(name, url, bare_url, headers, seconds, use_wrk, api_proc, profiler)
                        for _ in range(pair_count)
                    ]
                    pairs.sort(key=lambda r: r["rps"] / r["bare_rps"])
                    results[name] = pairs[len(pairs) // 2]
                    results[name]["ratios"] = [round(r["rps"] / r["bare_rps"], 3) for r in pairs]
            finally:
                bare.terminate()
                bare.wait()
        series_url = f"{api}/jobs/{big}/metrics?format=columnar&max_points=2000"
        repeats = 2 if args.quick else 20
        read = metrics_read(series_url, headers, repeats)
        # finished, its decimated series are kept (by the job row's updated_at): a re-read
        finish(bench.db, big)
        kept = metrics_read(series_url, headers, repeats)
    for name, r in results.items():
        goal, ratio_goal, p99_goal = GOALS[name]
        ratio = r["rps"] / r["bare_rps"]
        record: dict[str, Any] = {
            "benchmark": f"api_{name}",
            "concurrency": CONCURRENCY,
            "load_generator": r["tool"],
            "rps": round(r["rps"], 1),
            "p50_ms": round(r["pct"]["p50"], 2),
            "p99_ms": round(r["pct"]["p99"], 2),
            "errors": r["errors"],
            "api_cpu_ms_per_request": round(r["cpu_ms_per_request"], 3),
            "load_average": r["load"],
            "baseline": "bare Starlette, same bytes, same uvicorn",
            "baseline_rps": round(r["bare_rps"], 1),
            "ratio": round(ratio, 3),
            "ratios": r["ratios"],
            "goal": goal,
            "met": (ratio_goal is None or ratio >= ratio_goal) and r["pct"]["p99"] <= p99_goal,
        }
        if name == "list_jobs":
            record["jobs_in_database"] = total
        if r["profile"]:
            record["profile_top_self"] = r["profile"]["self"][:5]
        emit(record)
    emit(
        {
            "benchmark": "api_metrics_read",
            "points_in": point_count,
            "max_points": 2000,
            **read,
            "finished_job_median_ms": kept["median_ms"],
            "goal": "<= 100 ms (a running job's read: nothing kept)",
            "met": read["median_ms"] <= 100,
        }
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
