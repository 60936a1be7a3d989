"""API throughput at concurrency 32 (health, get-job, list-jobs) against a bare Starlette
endpoint returning the same bytes, served by uvicorn with the same settings, in one run.

Usage: python bench/api_bench.py [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, emit, percentile
from tests.support import free_port

BARE_APP = """
import os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(os.environ["BARE_BODY"], "rb").read()
async def handler(request):
    return Response(body, media_type="application/json")
app = Starlette(routes=[Route("/bare", handler)])
"""


async def load(
    url: str, headers: dict[str, str], total: int, concurrency: int = 32, max_seconds: float = 60
) -> tuple[float, list[float], int]:
    """Requests/s, latencies (ms) and non-200 count for `total` GETs at `concurrency`."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent, errors
            while sent < total and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                resp = await client.get(url)
                latencies.append((time.perf_counter() - start) * 1000)
                if resp.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, errors


def _ms(text: str) -> float:
    value, unit = float(text[:-2] if text.endswith(("ms", "us")) else text[:-1]), text[-2:]
    if unit == "us":
        return value / 1000
    if unit == "ms":
        return value
    return value * 1000  # seconds


def wrk_load(
    url: str, headers: dict[str, str], seconds: int
) -> tuple[float, dict[str, float], int]:
    """Requests/s, latency percentiles (ms) and non-2xx count from wrk (one thread, 32 conns)."""
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {
        f"p{m.group(1)}": _ms(m.group(2))
        for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+[mu]?s)", out, flags=re.M)
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, pct, int(bad.group(1)) if bad else 0


def main() -> None:
    from bench.stack import BenchStack

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    total = 300 if args.quick else args.requests
    with BenchStack() as bench:
        dataset = bench.digits_dataset(size=8, max_per_class=5)
        headers = {"Authorization": f"Bearer {bench.stack.token}"}
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
            for i in range(20):
                client.post(
                    "/jobs",
                    json={
                        "dataset_id": dataset["id"],
                        "name": f"fill{i}",
                        "network": "lenet",
                        "hyperparameters": {"epochs": 1},
                    },
                )
        api = bench.stack.url + "/api/v1"
        job_bytes = httpx.get(f"{api}/jobs/{job['id']}", headers=headers).content
        with tempfile.TemporaryDirectory() as tmp:
            body = Path(tmp) / "body.json"
            body.write_bytes(job_bytes)
            app = Path(tmp) / "bare_app.py"
            app.write_text(BARE_APP)
            port = free_port()
            bare = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bare_app:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=tmp,
                env={"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin", "BARE_BODY": str(body)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                bare_url = f"http://127.0.0.1:{port}/bare"
                for _ in range(100):
                    try:
                        httpx.get(bare_url)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
            except Exception:
                bare.kill()
                raise
            try:
                targets = {
                    "health": f"{api}/health",
                    "get_job": f"{api}/jobs/{job['id']}",
                    "list_jobs": f"{api}/jobs?per_page=25",
                }
                results = {}
                use_wrk = shutil.which("wrk") is not None
                seconds = 2 if args.quick else 10
                for name, url in targets.items():
                    # paired: the bare endpoint right before each target
                    if use_wrk:
                        b_rps, _, _ = wrk_load(bare_url, {}, seconds)
                        rps, pct, errors = wrk_load(url, headers, seconds)
                        results[name] = (rps, pct, errors, b_rps, "wrk")
                    else:
                        b_rps, _, _ = asyncio.run(load(bare_url, {}, total))
                        rps, lat, errors = asyncio.run(load(url, headers, total))
                        pct = {f"p{q}": percentile(lat, q) for q in (50, 90, 99)}
                        results[name] = (rps, pct, errors, b_rps, "httpx")
            finally:
                bare.terminate()
                bare.wait()
    for name, (rps, pct, errors, b_rps, tool) in results.items():
        record = {
            "benchmark": f"api_{name}",
            "concurrency": 32,
            "load_generator": tool,
            "rps": round(rps, 1),
            "p50_ms": round(pct["p50"], 2),
            "p99_ms": round(pct["p99"], 2),
            "errors": errors,
            "baseline": "bare Starlette, same bytes, same uvicorn",
            "baseline_rps": round(b_rps, 1),
            "ratio": round(rps / b_rps, 3),
        }
        if name == "get_job":
            record["goal"] = "ratio >= 0.3, p99 <= 25 ms"
            record["met"] = rps / b_rps >= 0.3 and pct["p99"] <= 25
        emit(record)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
