"""The telemetry sampler measures the process (and its GPU when it has one)."""

from __future__ import annotations

import threading
import time

from worker.telemetry import Sampler


def test_sampler_reports_process_cpu_and_memory_about_once_a_second() -> None:
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def sink(values: dict[str, float]) -> None:
        samples.append(values)
        if len(samples) >= 3:
            done.set()

    sampler = Sampler(sink, interval=0.2).start()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # some work to measure
        sum(i * i for i in range(10_000))
    assert done.wait(5)
    sampler.stop()
    first = samples[0]
    assert first["process.rss_bytes"] > 10 * 1024 * 1024
    assert first["process.threads"] >= 1
    assert any(s["process.cpu_percent"] > 0 for s in samples)
    if sampler.gpu_uuid is None:
        assert not any(k.startswith("gpu.") for k in first)
