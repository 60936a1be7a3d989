"""Turn bench/results.jsonl into docs/benchmarks.md (the latest figure of each benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.jsonl"
DOC = ROOT / "docs" / "benchmarks.md"

SKIP = {"benchmark", "environment", "at", "goal", "met", "baseline", "ratio"}

HEADER = """# Benchmarks

Every figure is measured against a baseline run in the same script, because these machines
are noisy; ratios are medians of paired runs. `make bench` runs them all and rewrites this
file from `bench/results.jsonl`; `make bench-smoke` (run by the test suite) only checks that
each benchmark still runs. The GPU figures come from `bench/gpu.sh` on a lent machine.

"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_doc(extra: str = "") -> None:
    latest: dict[str, dict[str, Any]] = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                latest[record["benchmark"] + record.get("model", "") + record.get("device", "")] = (
                    record
                )
    lines = [HEADER]
    envs = {json.dumps(r.get("environment", {}), sort_keys=True) for r in latest.values()}
    for env in sorted(envs):
        lines.append(f"Machine: `{env}`\n")
    lines.append("| benchmark | figure | baseline | ratio | goal | met | measured |")
    lines.append("|---|---|---|---|---|---|---|")
    for key in sorted(latest):
        r = latest[key]
        figures = ", ".join(
            f"{k} {_fmt(v)}"
            for k, v in r.items()
            if k not in SKIP and not k.startswith("baseline_")
        )
        base = ", ".join(
            f"{k.removeprefix('baseline_')} {_fmt(v)}"
            for k, v in r.items()
            if k.startswith("baseline_")
        )
        if r.get("baseline"):
            base = f"{r['baseline']}: {base}"
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(
            f"| {key} | {figures} | {base} | {_fmt(r.get('ratio', ''))} | "
            f"{r.get('goal', '')} | {met} | {r.get('at', '')[:10]} |"
        )
    notes = ROOT / "docs" / "benchmarks-notes.md"
    if notes.exists():
        lines.append("\n" + notes.read_text())
    if extra:
        lines.append("\n" + extra)
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_doc()
