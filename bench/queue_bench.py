"""Queue latency: submit -> running over HTTP with an idle worker, against a raw Redis
push/pop round trip between two processes measured in the same run.

Usage: python bench/queue_bench.py [--jobs N] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from datetime import datetime

import redis

from bench.common import emit, percentile
from bench.stack import BenchStack
from tests.conftest import REDIS_URL


def _echo(key_in: str, key_out: str, n: int) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    for _ in range(n):
        _, value = r.brpop([key_in])
        r.lpush(key_out, value)


def redis_round_trips(n: int) -> list[float]:
    """Milliseconds of LPUSH -> BRPOP in another process -> LPUSH back -> BRPOP."""
    key_in, key_out = f"bench-rt-in-{time.time_ns()}", f"bench-rt-out-{time.time_ns()}"
    proc = multiprocessing.get_context("spawn").Process(target=_echo, args=(key_in, key_out, n))
    proc.start()
    r = redis.Redis.from_url(REDIS_URL)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r.lpush(key_in, b"x")
        r.brpop([key_out])
        out.append((time.perf_counter() - start) * 1000)
    proc.join()
    r.delete(key_in, key_out)
    return out


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # smoke: two jobs (the second one finds the worker idle again, as every later one does)
    jobs = 2 if args.quick else args.jobs
    baseline = redis_round_trips(20 if args.quick else 500)
    latencies = []
    with BenchStack() as bench:
        dataset = bench.digits_dataset(size=8, max_per_class=5)
        with bench.stack.client() as client:
            for i in range(jobs):
                resp = client.post(
                    "/jobs",
                    json={
                        "dataset_id": dataset["id"],
                        "name": f"q{i}",
                        "network": "lenet",
                        "hyperparameters": {"epochs": 1, "batch_size": 64},
                    },
                )
                job_id = resp.json()["jobs"][0]["id"]
                while True:  # the worker is idle again before the next submission
                    job = client.get(f"/jobs/{job_id}").json()
                    if job["status"] in ("done", "error", "aborted"):
                        break
                    time.sleep(0.05)
                history = {h["status"]: h["at"] for h in job["status_history"]}
                created = _ts(job["created_at"])
                running = _ts(history["running"])
                latencies.append((running - created).total_seconds() * 1000)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    base50 = percentile(baseline, 50)
    emit(
        {
            "benchmark": "queue_latency",
            "jobs": jobs,
            "submit_to_running_p50_ms": round(p50, 2),
            "submit_to_running_p99_ms": round(p99, 2),
            "baseline": "redis push/pop round trip between two processes",
            "baseline_p50_ms": round(base50, 3),
            "baseline_p99_ms": round(percentile(baseline, 99), 3),
            "ratio": round(p50 / base50, 1) if base50 else None,
            "goal": "p50 <= 15 ms, p99 <= 100 ms",
            "met": p50 <= 15 and p99 <= 100,
        }
    )


if __name__ == "__main__":
    main()
