"""GPU discovery through NVML (pynvml); an empty list without NVIDIA hardware or driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("digits.gpus")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it."""

    index: int
    name: str
    uuid: str
    memory_total: int
    compute_capability: str


def detect_gpus() -> list[GpuInfo]:
    """The GPUs of this host, or [] when NVML is missing (no driver, no hardware)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        log.debug("no NVML: %s", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else name,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    memory_total=int(mem.total),
                    compute_capability=f"{major}.{minor}",
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()
