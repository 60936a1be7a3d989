"""The UI's pure modules (smoothing, decimation, SSE parsing, sweeps, formatters) under Node."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_node_unit_tests_of_the_ui_modules_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the UI's unit tests (the machines have Node 20)")
    out = subprocess.run(
        [node, "--test", str(HERE / "js")], capture_output=True, text=True, timeout=120
    )
    summary = [
        ln for ln in out.stdout.splitlines() if ln.startswith(("# tests", "# pass", "# fail"))
    ]
    print("node --test:", ", ".join(s.lstrip("# ") for s in summary))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
