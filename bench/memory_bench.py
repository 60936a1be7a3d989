"""Memory: the API process (no torch), an idle training worker against a bare `import torch`,
and the worker's RSS growth over ten jobs.

Usage: python bench/memory_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import emit
from bench.stack import BenchStack


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _family_rss(pid: int) -> int:
    """A process and its children (the worker and its forkserver)."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    jobs = 2 if args.quick else 10  # smoke: a first and a last job, the growth between them
    bare = subprocess.Popen([sys.executable, "-c", "import torch, time; time.sleep(60)"])
    started = time.monotonic()
    with BenchStack() as bench:
        # the bare process settles while the stack starts (its own process, nothing shared)
        time.sleep(max(0.0, (8 if not args.quick else 5) - (time.monotonic() - started)))
        bare_rss = _rss(bare.pid)
        bare.kill()
        dataset = bench.digits_dataset(size=8, max_per_class=5)
        api_pid = next(p.pid for p in bench.stack.procs if "api" in p.args)
        worker = next(p for p in bench.stack.procs if "bench-train-0" in p.args)
        time.sleep(2)
        api_rss = _rss(api_pid)
        api_has_torch = "libtorch" in _maps(api_pid)
        idle_parent = _rss(worker.pid)
        idle_family = _family_rss(worker.pid)
        cuda_before = "libcuda" in _maps(worker.pid)
        rss_after = []
        with bench.stack.client() as client:
            for i in range(jobs):
                job = client.post(
                    "/jobs",
                    json={
                        "dataset_id": dataset["id"],
                        "name": f"m{i}",
                        "network": "lenet",
                        "hyperparameters": {"epochs": 1},
                    },
                ).json()["jobs"][0]
                while client.get(f"/jobs/{job['id']}").json()["status"] not in (
                    "done",
                    "error",
                    "aborted",
                ):
                    time.sleep(0.1)
                rss_after.append(_rss(worker.pid))
    growth = (rss_after[-1] - rss_after[0]) / rss_after[0] if rss_after else 0.0
    emit(
        {
            "benchmark": "memory_api",
            "rss_mb": round(api_rss / 2**20, 1),
            "torch_loaded": api_has_torch,
            "goal": "no torch, under 150 MB",
            "met": not api_has_torch and api_rss < 150 * 2**20,
        }
    )
    emit(
        {
            "benchmark": "memory_idle_worker",
            "worker_rss_mb": round(idle_parent / 2**20, 1),
            "worker_with_forkserver_rss_mb": round(idle_family / 2**20, 1),
            "baseline": "python -c 'import torch'",
            "baseline_rss_mb": round(bare_rss / 2**20, 1),
            "ratio": round(idle_parent / bare_rss, 3),
            "ratio_with_forkserver": round(idle_family / bare_rss, 3),
            "cuda_context_before_a_job": cuda_before,
            "goal": "<= 1.15x, no CUDA context",
            # the worker and the forkserver that holds torch ready for the next job
            "met": idle_family / bare_rss <= 1.15 and not cuda_before,
        }
    )
    emit(
        {
            "benchmark": "memory_growth_after_jobs",
            "jobs": jobs,
            "rss_first_mb": round(rss_after[0] / 2**20, 1),
            "rss_last_mb": round(rss_after[-1] / 2**20, 1),
            "growth": round(growth, 4),
            "goal": "<= 5%",
            "met": growth <= 0.05,
        }
    )


if __name__ == "__main__":
    main()
