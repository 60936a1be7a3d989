"""Run every benchmark (or their smoke mode) and write docs/benchmarks.md from the results.

Usage: python bench/run_all.py [--quick] [--jobs N] [--only NAME ...] [--no-doc]

The smoke mode (`--quick`) runs two benchmarks at once by default: its figures are not
compared with anything, so sharing the cores costs nothing but halves the suite's wait. A full
run keeps one at a time (`--jobs 1`), as its ratios need the machine to themselves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [
    "import_bench",
    "train_bench",
    "pipeline_bench",
    "queue_bench",
    "api_bench",
    "tta_bench",
    "memory_bench",
    "insight_bench",
    "tune_bench",
    "dense_bench",
]
RESULTS = ROOT / "bench" / "results.jsonl"


def run(name: str, quick: bool) -> list[dict]:
    """Run one benchmark; print its figures (stdout) and a line about it (stderr)."""
    records = _measure(name, quick)
    for record in records:
        print(json.dumps(record))
    return records


def _measure(name: str, quick: bool) -> list[dict]:
    cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    records = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    if proc.returncode != 0 or not records:
        print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)
    print(f"{name}: {len(records)} figure(s) in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smoke mode: each bench runs")
    parser.add_argument("--jobs", type=int, default=None, help="benchmarks at once")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    jobs = max(1, args.jobs or (2 if args.quick else 1))
    names = args.only or BENCHES
    records = []
    if jobs == 1:
        for name in names:
            records += run(name, args.quick)
    else:  # figures printed in the list's order whichever finishes first
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for found in pool.map(lambda name: _measure(name, args.quick), names):
                for record in found:
                    print(json.dumps(record))
                records += found
    if not args.quick:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with RESULTS.open("a") as fh:
            for record in records:
                fh.write(json.dumps({"at": stamp, **record}) + "\n")
        if not args.no_doc:
            from bench.report import write_doc

            write_doc()


if __name__ == "__main__":
    main()
