"""Every benchmark still runs (smoke mode: figures are not checked against their goals)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.timeout(600)
def test_every_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    names = {r["benchmark"] for r in records}
    assert {
        "import_png_28",
        "train_overhead",
        "pipeline_vs_imagefolder",
        "queue_latency",
        "api_get_job",
        "time_to_accuracy",
        "memory_api",
        "tune_study",
        "detection_epoch",
    } <= names, names
    assert all("environment" in r or "python" in r for r in records)
