"""Starting workers: a GPU that does not exist is refused with a clear message."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_a_worker_pinned_to_a_missing_gpu_refuses_to_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "worker", "--gpu", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "no GPU 7 on this host" in result.stderr
    assert "--cpu" in result.stderr


def test_gpu_discovery_without_nvidia_hardware_is_empty() -> None:
    from shared.gpus import detect_gpus

    assert detect_gpus() == [] or all(g.uuid.startswith("GPU-") for g in detect_gpus())
