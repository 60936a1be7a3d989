"""Model insight: int8 against fp32 ONNX (latency per image and file size, in one run) for
ResNet-18, and the latency of explaining one 28x28 image on LeNet through the API and the
model service, against classifying the same image the same way.

Usage: python bench/insight_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import emit, median, percentile
from bench.stack import BenchStack
from worker.training import inference, quantize
from worker.training.models import build_model

# latency does not depend on accuracy: one epoch (97 % on the digits) is enough
LENET_RECIPE = {"epochs": 1, "batch_size": 64, "learning_rate": 0.05, "seed": 1}


def _resnet18(side: int, channels: int) -> inference.LoadedModel:
    """ResNet-18 with seeded random weights: speed and size do not depend on training (the
    accuracy of int8 is checked in tests/worker/test_quantize.py on a trained one)."""
    torch.manual_seed(0)
    network = {"kind": "standard", "name": "resnet18"}
    net = build_model(network, 10, channels, side, side)
    return inference.from_parts(
        network,
        [str(i) for i in range(10)],
        net.state_dict(),
        height=side,
        width=side,
        channels=channels,
        mean=None,
        crop=None,
    )


def edge(
    side: int, channels: int, rounds: int, batch: int, most_images: int = 256
) -> dict[str, Any]:
    """fp32 and int8 ONNX of ResNet-18 at side x side: sizes, and latencies paired per round
    (calibrated on at most most_images random images)."""
    import onnxruntime

    model = _resnet18(side, channels)
    rng = np.random.default_rng(0)
    count = max(quantize.MIN_CALIBRATION_IMAGES, quantize.CALIBRATION_PIXELS // (side * side))
    calibration = rng.integers(
        0, 256, (min(most_images, count), side, side, channels), dtype=np.uint8
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        inference.export_onnx(model, fp32)
        started = time.perf_counter()
        quantize.quantize_int8(fp32, int8, calibration)
        quantize_s = time.perf_counter() - started
        sessions = {
            name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in (("fp32", fp32), ("int8", int8))
        }
        one = calibration[0]
        many = {"images": np.ascontiguousarray(calibration[:batch])}
        times: dict[str, list[float]] = {"fp32": [], "int8": [], "fp32_b": [], "int8_b": []}
        for _ in range(rounds):  # alternating, so both see the same machine
            for name, session in sessions.items():
                times[name].append(quantize.latency_ms(session, one, runs=20))
                started = time.perf_counter()
                session.run(None, many)
                times[f"{name}_b"].append((time.perf_counter() - started) * 1000 / batch)
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    ratios = [i / f for f, i in zip(times["fp32"], times["int8"], strict=True)]
    return {
        "benchmark": f"onnx_int8_resnet18_{side}px",
        "input": f"{side}x{side}x{channels} uint8",
        "int8_ms": round(median(times["int8"]), 3),
        "int8_ms_per_image_batch": round(median(times["int8_b"]), 3),
        "int8_mb": round(sizes["int8"] / 1e6, 2),
        "size_ratio": round(sizes["int8"] / sizes["fp32"], 3),
        "quantize_s": round(quantize_s, 1),
        "baseline": "fp32 ONNX of the same network, same session options, alternating rounds",
        "baseline_ms": round(median(times["fp32"]), 3),
        "baseline_ms_per_image_batch": round(median(times["fp32_b"]), 3),
        "baseline_mb": round(sizes["fp32"] / 1e6, 2),
        "ratio": round(median(ratios), 3),
        "goal": "int8 file <= 0.3x fp32 (latency: reported, it depends on the CPU's int8 support)",
        "met": sizes["int8"] <= 0.3 * sizes["fp32"],
        "batch": batch,
    }


def _lenet_job(bench: BenchStack, per_class: int | None = None) -> tuple[str, bytes]:
    """A LeNet trained on the digits at 28 px through the API, and one validation PNG."""
    from tests.support import wait_for

    dataset = bench.digits_dataset(size=28, max_per_class=per_class)
    with bench.stack.client() as client:
        job = client.post(
            "/jobs",
            json={
                "dataset_id": dataset["id"],
                "name": "insight",
                "network": "lenet",
                "hyperparameters": LENET_RECIPE,
            },
        ).json()["jobs"][0]
        done = wait_for(client, f"/jobs/{job['id']}", timeout=600)
        assert done["status"] == "done", done
        page = client.get(
            f"/datasets/{dataset['id']}/samples", params={"split": "val", "per_page": 1}
        ).json()
        png = client.get(page["items"][0]["image_url"]).content
    return job["id"], png


def explain_latency(
    bench: BenchStack, runs: int, methods: list[str], per_class: int | None = None
) -> dict[str, Any]:
    """p50 of explain and of classify for one 28x28 image, alternating, end to end."""
    job_id, png = _lenet_job(bench, per_class)
    files = [("images", ("digit.png", png, "image/png"))]
    wall: dict[str, list[float]] = {m: [] for m in [*methods, "classify"]}
    service: dict[str, list[float]] = {m: [] for m in wall}
    with bench.stack.client() as client:

        def call(method: str) -> None:
            path, data = (
                ("classify", {}) if method == "classify" else ("explain", {"method": method})
            )
            started = time.perf_counter()
            resp = client.post(f"/jobs/{job_id}/{path}", files=files, data=data)
            elapsed = (time.perf_counter() - started) * 1000
            resp.raise_for_status()
            wall[method].append(elapsed)
            service[method].append(float(resp.json()["milliseconds"]))

        for method in wall:  # warm: the model is loaded, the layer found, torch's pools up
            for _ in range(3):
                call(method)
            wall[method].clear()
            service[method].clear()
        for _ in range(runs):
            for method in wall:
                call(method)
    record: dict[str, Any] = {
        "benchmark": "explain_lenet_28px",
        "method": methods[0],
        "p50_ms": round(percentile(wall[methods[0]], 50), 2),
        "p90_ms": round(percentile(wall[methods[0]], 90), 2),
        "service_p50_ms": round(percentile(service[methods[0]], 50), 2),
        "runs": runs,
    }
    for method in methods[1:]:
        record[f"{method}_p50_ms"] = round(percentile(wall[method], 50), 2)
    record.update(
        {
            "baseline": "classify of the same image, same API and model service",
            "baseline_p50_ms": round(percentile(wall["classify"], 50), 2),
            "baseline_service_p50_ms": round(percentile(service["classify"], 50), 2),
            "ratio": round(percentile(wall[methods[0]], 50) / percentile(wall["classify"], 50), 3),
            "goal": "reported (interactive: well under a second)",
            "met": percentile(wall[methods[0]], 50) < 1000,
        }
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [(28, 1)] if args.quick else [(28, 1), (224, 3)]
    for side, channels in sizes:
        # smoke: one round, calibrated on the fewest images quantize takes (also the batch)
        most = quantize.MIN_CALIBRATION_IMAGES if args.quick else 256
        emit(edge(side, channels, rounds=1 if args.quick else 7, batch=32, most_images=most))
    methods = ["gradcam"] if args.quick else ["gradcam", "integrated_gradients", "occlusion"]
    # smoke: the LeNet learns from 20 digits a class (latency does not depend on accuracy)
    per_class = 20 if args.quick else None
    with BenchStack(model_server=True) as bench:
        emit(
            explain_latency(
                bench, runs=3 if args.quick else 50, methods=methods, per_class=per_class
            )
        )


if __name__ == "__main__":
    main()
