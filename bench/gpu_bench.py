"""GPU figures (run by bench/gpu.sh on a lent machine); every step is time-boxed and written
to the JSON file as soon as it is measured, so a cut run still reports what it got."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS: dict[str, Any] = {}


def save(out: Path, key: str, value: Any) -> None:
    RESULTS[key] = value
    out.write_text(json.dumps(RESULTS, indent=2, default=str))
    print(f"== {key}: {json.dumps(value, default=str)[:1500]}", flush=True)


def train_overhead(out: Path) -> None:
    import torch

    from bench.train_bench import CASES, Case, bench_case

    device = torch.device("cuda")
    cases = [*CASES, Case("resnet50", 224, 224, 3, 1536, batch_size=256)]
    for case in cases:
        started = time.perf_counter()
        try:
            result = bench_case(case, device, repeats=2, quick=False, profile=False, nchw=False)
        except Exception as exc:  # keep going: one case must not cost the others
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - started, 1)
        save(out, f"train_overhead_{case.model}", result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service(out: Path) -> None:
    """`digits up` on the GPU (embedded default), then the service-level figures."""
    import httpx
    from PIL import Image
    from sklearn.datasets import load_digits

    tmp = Path(tempfile.mkdtemp(prefix="digits-gpu-"))
    port = _free_port()
    env = {
        **os.environ,
        "DIGITS_DATA_DIR": str(tmp / "data"),
        "DIGITS_PORT": str(port),
        "DIGITS_TELEMETRY_INTERVAL": "0.5",
        "DIGITS_LOG_LEVEL": "WARNING",
    }
    log = open(tmp / "up.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        token = (tmp / "data" / "admin-token").read_text().strip()
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        while not any(
            w["kind"] in ("gpu", "cpu-train") and w["alive"] for w in client.get("/workers").json()
        ):
            time.sleep(0.5)
        save(
            out,
            "fleet",
            {"workers": client.get("/workers").json(), "gpus": client.get("/gpus").json()},
        )

        data = load_digits()
        images = np.clip(np.round(data.images * 255 / 16), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for i, (img, label) in enumerate(zip(images, data.target, strict=True)):
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                zf.writestr(f"{label}/{i:05d}.png", png.getvalue())
        datasets = {}
        for size in (28, 32):
            resp = client.post(
                "/datasets",
                data={
                    "name": f"digits-{size}",
                    "image_width": str(size),
                    "image_height": str(size),
                    "channels": "1",
                },
                files={"archive": ("d.zip", buf.getvalue(), "application/zip")},
            )
            ds_id = resp.json()["id"]
            while (ds := client.get(f"/datasets/{ds_id}").json())["status"] not in (
                "done",
                "error",
            ):
                time.sleep(0.2)
            datasets[size] = ds

        def run_job(body: dict[str, Any]) -> tuple[dict[str, Any], float]:
            start = time.perf_counter()
            job = client.post("/jobs", json=body).json()["jobs"][0]
            while (j := client.get(f"/jobs/{job['id']}").json())["status"] not in (
                "done",
                "error",
                "aborted",
            ):
                time.sleep(0.1)
            return j, time.perf_counter() - start

        # time to accuracy (LeNet, same recipe as bench/tta_bench.py)
        start = time.perf_counter()
        job = client.post(
            "/jobs",
            json={
                "dataset_id": datasets[28]["id"],
                "name": "tta",
                "network": "lenet",
                "hyperparameters": {
                    "epochs": 15,
                    "batch_size": 32,
                    "learning_rate": 0.05,
                    "lr_policy": "step",
                    "lr_params": {"step_size": 50, "gamma": 0.1},
                    "seed": 7,
                },
            },
        ).json()["jobs"][0]
        reached = None
        while reached is None:
            points = client.get(
                f"/jobs/{job['id']}/metrics", params={"names": "val.accuracy"}
            ).json()["items"]
            hit = [p for p in points if p["value"] >= 0.97]
            if hit:
                reached = (time.perf_counter() - start, hit[0]["epoch"])
                break
            if client.get(f"/jobs/{job['id']}").json()["status"] in ("done", "error"):
                break
            time.sleep(0.05)
        while client.get(f"/jobs/{job['id']}").json()["status"] not in ("done", "error"):
            time.sleep(0.1)
        lenet = client.get(f"/jobs/{job['id']}").json()
        save(
            out,
            "time_to_97pct_lenet",
            {
                "seconds": reached and round(reached[0], 2),
                "epoch": reached and reached[1],
                "final_val_accuracy": lenet["last"].get("val.accuracy"),
            },
        )

        # a ResNet-18 job with mixed precision: its GPU telemetry
        resnet, seconds = run_job(
            {
                "dataset_id": datasets[32]["id"],
                "name": "resnet18-amp",
                "network": "resnet18",
                "hyperparameters": {
                    "epochs": 8,
                    "batch_size": 128,
                    "learning_rate": 0.05,
                    "amp": True,
                    "lr_policy": "fixed",
                },
            }
        )
        metrics = client.get(f"/jobs/{resnet['id']}/metrics").json()["items"]
        gpu_series: dict[str, list[float]] = {}
        for p in metrics:
            if p["name"].startswith(("gpu.", "process.")) or p["name"] in (
                "train.images_per_second",
                "val.accuracy",
            ):
                gpu_series.setdefault(p["name"], []).append(p["value"])
        save(
            out,
            "resnet18_job",
            {
                "status": resnet["status"],
                "error": resnet["error"],
                "seconds": round(seconds, 1),
                "series": {
                    k: {"n": len(v), "min": min(v), "max": max(v), "last": v[-1]}
                    for k, v in gpu_series.items()
                },
            },
        )

        # classify latency, idle and with a training job running
        png = io.BytesIO()
        Image.fromarray(images[0]).save(png, format="PNG")

        def latency(job_id: str, n: int = 40) -> dict[str, float]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                resp = client.post(
                    f"/jobs/{job_id}/classify",
                    files=[("images", ("x.png", png.getvalue(), "image/png"))],
                )
                resp.raise_for_status()
                samples.append((time.perf_counter() - t0) * 1000)
            samples.sort()
            return {
                "p50_ms": round(samples[len(samples) // 2], 2),
                "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
            }

        idle = {"lenet": latency(lenet["id"]), "resnet18": latency(resnet["id"])}
        busy_job = client.post(
            "/jobs",
            json={
                "dataset_id": datasets[32]["id"],
                "name": "busy",
                "network": "resnet18",
                "hyperparameters": {"epochs": 200},
            },
        ).json()["jobs"][0]
        while client.get(f"/jobs/{busy_job['id']}").json()["status"] != "running":
            time.sleep(0.2)
        time.sleep(3)
        busy = {"lenet": latency(lenet["id"]), "resnet18": latency(resnet["id"])}
        client.post(f"/jobs/{busy_job['id']}/abort")
        save(out, "classify_latency", {"idle": idle, "while_training": busy})
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        tail = (tmp / "up.log").read_text(errors="replace")[-3000:]
        save(out, "service_log_tail", tail)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    import torch

    cuda = torch.cuda.is_available()
    save(
        out,
        "device",
        {
            "name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__,
            "bf16": cuda and torch.cuda.is_bf16_supported(),
        },
    )
    steps = ([] if args.skip_overhead else [train_overhead]) + (
        [] if args.skip_service else [service]
    )
    for step in steps:
        try:
            step(out)
        except Exception as exc:
            import traceback

            save(out, f"{step.__name__}_error", traceback.format_exc()[-3000:])
            print(exc, file=sys.stderr)


if __name__ == "__main__":
    main()
