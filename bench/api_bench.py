"""API throughput at concurrency 32 (health, get-job, list-jobs) against a bare Starlette
endpoint returning the same bytes, served by uvicorn with the same settings, in one run.

Usage: python bench/api_bench.py [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, emit, percentile
from tests.support import free_port

BARE_APP = """
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(sys.argv[1], "rb").read()
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
                env={"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"},
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
                bare_rps = []
                for name, url in targets.items():
                    # paired: the bare endpoint right before each target
                    b_rps, _, _ = asyncio.run(load(bare_url, {}, total))
                    bare_rps.append(b_rps)
                    rps, lat, errors = asyncio.run(load(url, headers, total))
                    results[name] = (rps, lat, errors, b_rps)
            finally:
                bare.terminate()
                bare.wait()
    for name, (rps, lat, errors, b_rps) in results.items():
        record = {
            "benchmark": f"api_{name}",
            "concurrency": 32,
            "requests": len(lat),
            "rps": round(rps, 1),
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "errors": errors,
            "baseline": "bare Starlette, same bytes, same uvicorn",
            "baseline_rps": round(b_rps, 1),
            "ratio": round(rps / b_rps, 3),
        }
        if name == "get_job":
            record["goal"] = "ratio >= 0.3, p99 <= 25 ms"
            record["met"] = rps / b_rps >= 0.3 and percentile(lat, 99) <= 25
        emit(record)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
