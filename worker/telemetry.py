"""Samples the training process and its GPU about once a second, off the training thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import psutil

log = logging.getLogger("digits.worker.telemetry")


class _Gpu:
    """NVML handle of the GPU this process was pinned to (CUDA_VISIBLE_DEVICES), if any."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.uuid: str | None = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        first = visible.split(",")[0].strip()
        if not first:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            if first.startswith("GPU-"):
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
            raw = pynvml.nvmlDeviceGetUUID(self.handle)
            self.uuid = raw.decode() if isinstance(raw, bytes) else raw
            self._nvml = pynvml
        except Exception as exc:
            log.info("no GPU telemetry: %s", exc)
            self.handle = None

    def sample(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        nv = self._nvml
        out: dict[str, float] = {}
        try:
            util = nv.nvmlDeviceGetUtilizationRates(self.handle)
            mem = nv.nvmlDeviceGetMemoryInfo(self.handle)
            out["gpu.utilization"] = float(util.gpu)
            out["gpu.memory_utilization"] = float(util.memory)
            out["gpu.memory_used_bytes"] = float(mem.used)
            out["gpu.memory_total_bytes"] = float(mem.total)
            out["gpu.temperature_c"] = float(
                nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU)
            )
            out["gpu.power_w"] = nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        except Exception as exc:  # a sensor a board does not have
            log.debug("nvml sample: %s", exc)
        return out


class Sampler:
    """A daemon thread that samples once per `interval` and hands the values to `sink`."""

    def __init__(self, sink: Callable[[dict[str, float]], None], interval: float = 1.0) -> None:
        self.sink = sink
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._proc = psutil.Process()
        self._gpu = _Gpu()
        self.samples = 0

    @property
    def gpu_uuid(self) -> str | None:
        return self._gpu.uuid

    def sample(self) -> dict[str, float]:
        """One sample of the process (CPU %, RSS) and its GPU."""
        with self._proc.oneshot():
            values = {
                "process.cpu_percent": float(self._proc.cpu_percent(None)),
                "process.rss_bytes": float(self._proc.memory_info().rss),
                "process.threads": float(self._proc.num_threads()),
            }
        values.update(self._gpu.sample())
        return values

    def start(self) -> Sampler:
        self._proc.cpu_percent(None)  # the first call only sets the baseline
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sink(self.sample())
                self.samples += 1
            except Exception as exc:
                log.warning("telemetry sample failed: %s", exc)
