"""mypy passes on the project with its own configuration, and shared/ stays strictly typed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a cold run (no .mypy_cache) takes about 20 s of CPU, most of it reading torch's types
MYPY_TIMEOUT = 500


def _mypy(*args: str) -> tuple[int, str, float]:
    """Run mypy from the repository root; its exit status, output and wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def test_mypy_reports_no_errors() -> None:
    rc, out, seconds = _mypy()
    lines = out.strip().splitlines()
    print(f"mypy: {seconds:.1f} s, {lines[-1] if lines else 'no output'}")
    assert rc == 0, out


def test_an_untyped_function_in_shared_is_an_error(tmp_path: Path) -> None:
    # mypy reads this text in place of shared/lr_policy.py (a module with no project imports);
    # the cache is private, so the project's cache never holds the probe
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import Any\n\n\n"
        "def untyped(x):\n    return x\n\n\n"
        "def leaks(x: Any) -> int:\n    return x\n",
        encoding="utf-8",
    )
    target = "shared/lr_policy.py"
    rc, out, seconds = _mypy(
        "--cache-dir", str(tmp_path / "cache"), "--shadow-file", target, str(probe), target
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    codes = sorted({line.rsplit("[", 1)[1].rstrip("]") for line in errors})
    print(f"mypy on the probe: {seconds:.1f} s, rc {rc}, codes {codes}")
    assert rc == 1, out
    assert "[no-untyped-def]" in out, out
    assert "[no-any-return]" in out, out
