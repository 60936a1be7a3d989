"""Web UI benchmark in headless Chromium: a compare page of 100 runs x 2,000 points per
metric, a home page of 1,000 jobs, and the JavaScript the browser downloads.

    .venv/bin/python -m bench.ui_bench

Starts its own API on a fresh PostgreSQL database, writes the jobs and their metric points
straight into it (COPY), then measures in the browser from navigation start:
compare: the first chart drawn, and all five; home: the first table rows, and all 1,000 jobs
listed; JS: the compressed bytes of every script the pages loaded. Prints one
`UI_BENCH {...}` line per figure (docs/benchmarks.md collects them).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import REDIS_URL, create_pg_database, drop_pg_database  # noqa: E402
from tests.support import Stack  # noqa: E402
from tests.ui.conftest import CHROMIUM_ARGS, chromium_path  # noqa: E402

RUNS = 100
POINTS = 2000
JOBS = 1000
METRICS = ("train.loss", "val.loss", "val.accuracy", "val.top5", "train.lr")
REPEATS = 3

# records when the first uPlot canvas and the fifth appear, and when the jobs table fills
PROBE = """
(() => {
  const t = (window.__bench = {});
  new MutationObserver(() => {
    const charts = document.querySelectorAll('.uplot canvas').length;
    if (charts >= 1 && !t.firstChart) t.firstChart = performance.now();
    if (charts >= 5 && !t.allCharts) t.allCharts = performance.now();
    const rows = document.querySelectorAll('[data-testid=jobs-table] tbody tr').length;
    if (rows >= 1 && !t.firstRows) t.firstRows = performance.now();
    const sub = document.querySelector('[data-testid=home] .sub');
    const all = sub && sub.textContent.includes('1000 jobs') && rows >= 50;
    if (all && !t.allJobs) t.allJobs = performance.now();
  }).observe(document, { childList: true, subtree: true, characterData: true });
})();
"""


def report(name: str, **figures: Any) -> None:
    print("UI_BENCH " + json.dumps({"bench": name, **figures}), flush=True)


def seed(db_url: str, owner: uuid.UUID) -> str:
    """1,000 finished jobs; the 100 of group `bench` have 2,000 points of each metric."""
    import psycopg
    from sqlalchemy import text

    from shared.db import make_engine, make_session_factory, session_scope
    from shared.models import Job, MetricPoint
    from shared.settings import Settings

    rng = random.Random(7)
    engine = make_engine(Settings(database_url=db_url))
    ids: list[uuid.UUID] = []
    with session_scope(make_session_factory(engine)) as session:
        for i in range(JOBS):
            lr = 10 ** rng.uniform(-3, -1)
            in_group = i < RUNS
            job = Job(
                name=f"bench-{i:04d}",
                group_name="bench" if in_group else f"other-{i % 17}",
                owner_id=owner,
                request={
                    "name": f"bench-{i:04d}",
                    "network": {"kind": "standard", "name": "lenet"},
                    "hyperparameters": {
                        "learning_rate": round(lr, 5),
                        "batch_size": 32 * (1 + i % 3),
                        "epochs": 30,
                    },
                },
                best={
                    "val.accuracy": {"value": 0.9 + 0.09 * rng.random(), "step": 100, "epoch": 20.0}
                },
                last={"train.loss": {"value": rng.random(), "step": 200, "epoch": 30.0}},
            )
            if hasattr(Job, "status"):
                job.status = "done"  # type: ignore[assignment]
            session.add(job)
            session.flush()
            if in_group:
                ids.append(job.id)
        session.execute(text("SELECT 1"))
    engine.dispose()
    buf = io.StringIO()
    for n, job_id in enumerate(ids):
        lr = 0.001 + 0.0005 * n
        for name in METRICS:
            for k in range(POINTS):
                epoch = 30 * (k + 1) / POINTS
                if name.endswith("loss"):
                    v = 2.3 * math.exp(-epoch * (0.1 + lr)) + 0.05 * rng.random()
                elif name == "train.lr":
                    v = lr * 0.1 ** (epoch // 10)
                else:
                    v = 1 - 0.9 * math.exp(-epoch * (0.15 + lr)) - 0.02 * rng.random()
                buf.write(
                    f"{job_id}\t{name}\t{k * 10}\t{epoch}\t{v}\t2026-01-01 00:00:{k % 60:02d}+00\n"
                )
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                f"COPY {MetricPoint.__tablename__} (job_id, name, step, epoch, value, created_at)"
                " FROM STDIN"
            ) as copy,
        ):
            copy.write(buf.getvalue())
        conn.commit()
    return "bench"


def main() -> int:
    from playwright.sync_api import sync_playwright

    from shared import migrate
    from shared.settings import Settings

    db = create_pg_database()
    tmp = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    stack = Stack(
        env={
            **os.environ,
            "DIGITS_DATABASE_URL": db,
            "DIGITS_BROKER_URL": REDIS_URL,
            "DIGITS_BROKER_PREFIX": f"ui-bench-{uuid.uuid4().hex[:6]}:",
            "DIGITS_DATA_DIR": str(tmp / "data"),
            "DIGITS_LOG_LEVEL": "WARNING",
        },
        logs=tmp / "logs",
    )
    try:
        migrate.upgrade(Settings(database_url=db))
        stack.create_admin()
        stack.start_api()
        with stack.client() as client:
            owner = uuid.UUID(client.get("/users/me").json()["id"])
        group = seed(db, owner)
        with stack.client() as client:
            ids = [
                j["id"]
                for j in client.get("/jobs", params={"group": group, "per_page": 200}).json()[
                    "items"
                ]
            ]
            api_ms = {}
            for label, path, params in (
                (
                    "batch_metrics",
                    "/metrics",
                    {"jobs": ",".join(ids), "names": ",".join(METRICS), "max_points": 1000},
                ),
                ("jobs_page_200", "/jobs", {"per_page": 200}),
                (  # the compare page's first request for a chart (compare.js, MAX_POINTS)
                    "compare_first_metric",
                    "/metrics",
                    {
                        "jobs": ",".join(ids),
                        "names": METRICS[0],
                        "max_points": 400,
                        "columns": "epoch,value",
                    },
                ),
                ("jobs_group_page", "/jobs", {"group": group, "per_page": 200}),
                # the same first chart by group (what the page asks, from boot.js), kept
                (
                    "compare_first_metric_by_group",
                    "/metrics",
                    {
                        "group": group,
                        "names": METRICS[0],
                        "max_points": 400,
                        "columns": "epoch,value",
                    },
                ),
            ):
                t0 = time.perf_counter()
                resp = client.get(path, params=params)
                api_ms[label] = round((time.perf_counter() - t0) * 1000, 1)
                api_ms[f"{label}_kb"] = round(len(resp.content) / 1024, 1)
                assert resp.status_code == 200, resp.text[:300]
        report("server", **api_ms)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": 1440, "height": 960}, base_url=stack.url)
            ctx.request.post(
                "/api/v1/session", data={"token": stack.token}, headers={"Origin": stack.url}
            )
            ctx.add_init_script(PROBE)
            figures: dict[str, list[float]] = {"first": [], "all": [], "rows": [], "jobs": []}
            for run in range(REPEATS + 1):  # the first visit warms the caches; not counted
                page = ctx.new_page()
                page.goto(f"/compare?group={group}")
                page.wait_for_function("() => window.__bench.allCharts", timeout=60_000)
                t = page.evaluate("window.__bench")
                # where the first chart's time went: the scripts, the runs, its metric's answer
                marks = page.evaluate(
                    "(() => { const r = performance.getEntriesByType('resource');"
                    " const end = (f) => Math.max(0, ...r.filter(f).map(e => e.responseEnd));"
                    " const m = r.find(e => e.name.includes('/api/v1/metrics?'));"
                    " return { scripts: end(e => e.name.endsWith('.js')),"
                    " runs: end(e => e.name.includes('/api/v1/jobs?')),"
                    " metric_sent: m ? m.requestStart : null,"
                    " metric_received: m ? m.responseEnd : null,"
                    " contentful_paint: (performance.getEntriesByName('first-contentful-paint')"
                    "[0] || {}).startTime || null }; })()"
                )
                if run:
                    for key, value in marks.items():
                        if value is not None:
                            figures.setdefault(f"first_{key}", []).append(value)
                    figures["first"].append(t["firstChart"])
                    figures["all"].append(t["allCharts"])
                page.goto("/")
                page.wait_for_function("() => window.__bench.allJobs", timeout=60_000)
                t = page.evaluate("window.__bench")
                if run:
                    figures["rows"].append(t["firstRows"])
                    figures["jobs"].append(t["allJobs"])
                page.close()
            # bytes on a cold cache: a fresh context downloads every module once
            cold = browser.new_context(base_url=stack.url)
            cold.request.post(
                "/api/v1/session", data={"token": stack.token}, headers={"Origin": stack.url}
            )
            page = cold.new_page()
            page.goto(f"/compare?group={group}")  # main.js imports every page module
            page.wait_for_selector(".uplot canvas", timeout=60_000)
            # the other pages' modules follow when the browser is idle (main.js): all of them
            pages = len(list((ROOT / "api" / "ui" / "app" / "pages").glob("*.js")))
            page.wait_for_function(
                "n => performance.getEntriesByType('resource')"
                ".filter(r => r.name.includes('/ui/app/pages/')).length >= n",
                arg=pages,
                timeout=30_000,
            )
            entries = page.evaluate(
                "performance.getEntriesByType('resource').filter(r => r.name.endsWith('.js'))"
                ".map(r => [r.name, r.encodedBodySize, r.decodedBodySize])"
            )
            js_bytes = sum(e[1] for e in entries)
            js_raw = sum(e[2] for e in entries)
            browser.close()
        med = {k: round(statistics.median(v), 1) for k, v in figures.items()}
        report(
            "compare_100x2000",
            runs=RUNS,
            points_per_metric=POINTS,
            metrics=len(METRICS),
            first_chart_ms=med["first"],
            # from navigation start: last script loaded, the runs listed, the first metric's
            # request sent and its answer received (the rest is parsing and drawing)
            **{f"{k}_ms": v for k, v in med.items() if k.startswith("first_")},
            all_charts_ms=med["all"],
            goal_first_paint_ms=500,
        )
        report(
            "home_1000_jobs",
            jobs=JOBS,
            first_rows_ms=med["rows"],
            all_jobs_listed_ms=med["jobs"],
            goal_ms=300,
        )
        report(
            "js_download",
            files=len(entries),
            gzipped_kb=round(js_bytes / 1024, 1),
            raw_kb=round(js_raw / 1024, 1),
            goal_kb=150,
        )
    finally:
        stack.stop()
        drop_pg_database(db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
