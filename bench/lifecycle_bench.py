"""Long model work and imports under a 10 s lease, with one and two cpu workers.

For each kind of cpu work (inference, evaluation, import) that runs several leases long:
attempts and duplicate answers when nothing fails, and the recovery time when the worker
running it is killed mid-way (SIGKILL; the other worker takes over, or the one restarted).
Prints one JSON line per scenario; docs/reliability.md records them.

Usage: python -m bench.lifecycle_bench [--quick] [--workers 1 2] [--kinds inference ...]
                                        [--kill no|yes|both]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT  # noqa: F401  (puts the repo on sys.path)
from bench.stack import BenchStack
from tests.support import digits_arrays, post_dataset, wait_for, write_class_folders, zip_folder

LEASE = 10.0


def _heavy(blocks: int) -> dict[str, Any]:
    """A custom network whose cost per image is set by its number of 3x3x64 convolutions."""
    layers: list[dict[str, Any]] = []
    for _ in range(blocks):
        layers += [
            {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1},
            {"type": "relu"},
        ]
    return {
        "kind": "custom",
        "layers": [
            *layers,
            {"type": "adaptive_avgpool2d", "output_size": 1},
            {"type": "flatten"},
            {"type": "linear"},
        ],
    }


def _worker_pid(client: httpx.Client, name: str) -> int:
    return int(next(w["pid"] for w in client.get("/workers").json() if w["name"] == name))


def _running_on(client: httpx.Client, kind_path: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(kind_path).json()
        if body["status"] == "running" and body.get("worker"):
            return str(body["worker"])
        time.sleep(0.1)
    raise RuntimeError(f"{kind_path} never ran")


def scenario(
    bench: BenchStack,
    kind: str,
    submit: Any,
    workers: int,
    kill: bool,
    answers: Any,
) -> dict[str, Any]:
    stack = bench.stack
    with stack.client() as client:
        started = time.monotonic()
        path = submit(client)
        recovery = None
        if kill:
            worker = _running_on(client, path)
            time.sleep(3)  # well into the work
            pid = _worker_pid(client, worker)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            if workers == 1:  # its supervisor would restart it; here the bench does
                stack.start_worker(worker, "--queues", "cpu")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                body = client.get(path).json()
                if body["status"] == "running" and body["attempts"] >= 2:
                    recovery = time.monotonic() - killed
                    break
                if body["status"] in ("done", "error", "aborted"):
                    break
                time.sleep(0.1)
        if kill and workers > 1:  # the other worker took over; bring this one back for the next
            stack.start_worker(worker, "--queues", "cpu")
        final = wait_for(client, path, timeout=600)
        seconds = time.monotonic() - started
        answered, duplicates = answers(client, final)
    record = {
        "bench": "lifecycle",
        "kind": kind,
        "lease_s": LEASE,
        "cpu_workers": workers,
        "killed": kill,
        "status": final["status"],
        "attempts": final.get("attempts"),
        "seconds": round(seconds, 1),
        "leases": round(seconds / LEASE, 1),
        "answered": answered,
        "duplicates": duplicates,
        "recovery_s": round(recovery, 1) if recovery is not None else None,
    }
    print(json.dumps(record), flush=True)
    return record


def _results(client: httpx.Client, job: dict[str, Any]) -> tuple[int, int]:
    names: list[str] = []
    page = 1
    while True:
        body = client.get(f"/jobs/{job['id']}/results", params={"page": page, "per_page": 1000})
        if body.status_code != 200:
            return 0, 0
        data = body.json()
        names += [i["filename"] for i in data["items"]]
        if page * 1000 >= data["total"]:
            break
        page += 1
    return len(names), sum(n - 1 for n in Counter(names).values() if n > 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--kinds", nargs="*", default=["inference", "evaluation", "import"], help="which work"
    )
    parser.add_argument("--kill", choices=["no", "yes", "both"], default="both")
    args = parser.parse_args()
    kills = {"no": (False,), "yes": (True,), "both": (False, True)}[args.kill]
    reps = 2 if args.quick else 12
    blocks = 2 if args.quick else 8
    images, labels = digits_arrays()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"lifecycle-bench-{os.getpid()}"
    big = zip_folder(
        write_class_folders(work / "big", images.repeat(reps, 0), labels.repeat(reps, 0)),
        work / "big.zip",
    )
    digits = zip_folder(write_class_folders(work / "d", images, labels), work / "d.zip")
    env = {
        "DIGITS_LEASE_TIMEOUT": str(LEASE),
        "DIGITS_HEARTBEAT_INTERVAL": "1",
        "DIGITS_REAPER_INTERVAL": "1",
        "DIGITS_WORKER_STALE_AFTER": "5",
    }
    for workers in args.workers:
        with BenchStack(extra_env=env) as bench:
            stack = bench.stack
            if workers == 2:
                stack.start_worker("bench-cpu-2", "--queues", "cpu")
            with stack.client() as client:
                shape = {"image_width": 28, "image_height": 28, "channels": 1, "seed": 1}
                resp = post_dataset(
                    client,
                    {"name": "d", **shape, "val_pct": 25},
                    {"archive": ("d.zip", digits.read_bytes(), "application/zip")},
                )
                dataset = wait_for(client, f"/datasets/{resp.json()['id']}")
                # the evaluation runs on the many copies, at the model's input size
                resp = post_dataset(
                    client,
                    {"name": "many", **shape, "val_pct": 0},
                    {"archive": ("big.zip", big.read_bytes(), "application/zip")},
                )
                many = wait_for(client, f"/datasets/{resp.json()['id']}", timeout=600)
                resp = client.post(
                    "/jobs",
                    json={
                        "dataset_id": dataset["id"],
                        "name": "heavy",
                        "network": _heavy(blocks),
                        "hyperparameters": {"epochs": 1, "batch_size": 16, "seed": 1},
                    },
                )
                if not resp.is_success:
                    raise RuntimeError(f"the model job was refused: {resp.status_code} {resp.text}")
                model = wait_for(client, f"/jobs/{resp.json()['jobs'][0]['id']}", timeout=900)

            def classify(client: httpx.Client, model: dict[str, Any] = model) -> str:
                resp = client.post(
                    f"/jobs/{model['id']}/classify",
                    files={"archive": ("big.zip", big.read_bytes(), "application/zip")},
                )
                return f"/jobs/{resp.json()['id']}"

            def evaluate(
                client: httpx.Client,
                model: dict[str, Any] = model,
                dataset: dict[str, Any] = many,
            ) -> str:
                resp = client.post(
                    f"/jobs/{model['id']}/evaluate",
                    data={"dataset_id": dataset["id"], "split": "train"},
                )
                return f"/jobs/{resp.json()['id']}"

            def imports(client: httpx.Client) -> str:
                resp = post_dataset(
                    client,
                    {"name": "big", "image_width": 160, "image_height": 160, "channels": 3},
                    {"archive": ("big.zip", big.read_bytes(), "application/zip")},
                )
                return f"/datasets/{resp.json()['id']}"

            def evaluated(client: httpx.Client, job: dict[str, Any]) -> tuple[int, int]:
                body = client.get(f"/jobs/{job['id']}/results").json()
                return int(body.get("images", 0)), 0

            def imported(_client: httpx.Client, ds: dict[str, Any]) -> tuple[int, int]:
                return int(ds.get("num_images", 0)), 0

            runs = {
                "inference": (classify, _results),
                "evaluation": (evaluate, evaluated),
                "import": (imports, imported),
            }
            for kill in kills:
                for kind in args.kinds:
                    submit, count = runs[kind]
                    scenario(bench, kind, submit, workers, kill, count)


if __name__ == "__main__":
    main()
