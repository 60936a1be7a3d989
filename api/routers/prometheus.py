"""GET /metrics in the Prometheus text format, computed from the database at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from api.deps import get_current_user
from shared import queue as queues
from shared.models import Dataset, Job, Status
from shared.services import fleet

router = APIRouter(tags=["health"], dependencies=[Depends(get_current_user)])

BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class _FleetCollector(Collector):
    def __init__(self, request: Request) -> None:
        self.request = request

    def collect(self) -> Iterator[Metric]:
        app = self.request.app
        stale = app.state.settings.worker_stale_after
        with app.state.session_factory() as session:
            by_state = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            jobs = GaugeMetricFamily("digits_jobs", "Jobs by state", labels=["state"])
            for state in Status:
                jobs.add_metric([state.value], float(by_state.get(state.value, 0)))
            yield jobs

            waiting = session.execute(
                select(Job.requested_worker).where(Job.status == Status.WAITING.value)
            ).all()
            lengths = Counter(
                queues.worker_queue(w) if w else queues.TRAIN_QUEUE for (w,) in waiting
            )
            lengths[queues.CPU_QUEUE] = int(
                session.scalar(
                    select(func.count())
                    .select_from(Dataset)
                    .where(Dataset.status == Status.WAITING.value)
                )
                or 0
            )
            lengths.setdefault(queues.TRAIN_QUEUE, 0)
            queue_len = GaugeMetricFamily(
                "digits_queue_length", "Waiting work per queue", labels=["queue"]
            )
            for name, count in sorted(lengths.items()):
                queue_len.add_metric([name], float(count))
            yield queue_len

            finished = session.execute(
                select(Job.started_at, Job.finished_at).where(
                    Job.status.in_([Status.DONE.value, Status.ERROR.value, Status.ABORTED.value]),
                    Job.started_at.is_not(None),
                    Job.finished_at.is_not(None),
                )
            ).all()
            durations = [(f - s).total_seconds() for s, f in finished]
            counts = [sum(1 for d in durations if d <= b) for b in BUCKETS]
            buckets = [(str(b), float(c)) for b, c in zip(BUCKETS, counts, strict=True)]
            buckets.append(("+Inf", float(len(durations))))
            yield HistogramMetricFamily(
                "digits_job_duration_seconds",
                "Run time of finished jobs",
                buckets=buckets,
                sum_value=float(sum(durations)),
            )

            workers = fleet.list_workers(session)
            alive = GaugeMetricFamily(
                "digits_worker_up",
                "1 when the worker's heartbeat is fresh",
                labels=["worker", "kind"],
            )
            for w in workers:
                alive.add_metric([w.name, w.kind], 1.0 if fleet.is_alive(w, stale) else 0.0)
            yield alive

            gauges = {
                "utilization": GaugeMetricFamily(
                    "digits_gpu_utilization_percent", "GPU utilisation", labels=["gpu", "worker"]
                ),
                "memory_used_bytes": GaugeMetricFamily(
                    "digits_gpu_memory_used_bytes", "GPU memory used", labels=["gpu", "worker"]
                ),
                "temperature_c": GaugeMetricFamily(
                    "digits_gpu_temperature_celsius", "GPU temperature", labels=["gpu", "worker"]
                ),
            }
            for row in fleet.gpu_rows(workers, stale):
                for key, family in gauges.items():
                    if row.get(key) is not None:
                        family.add_metric([row["uuid"], row["worker"]], float(row[key]))
            yield from gauges.values()


@router.get(
    "/metrics",
    operation_id="get_prometheus_metrics",
    include_in_schema=True,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    """Jobs by state, queue lengths, job durations, worker and GPU gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(request))
    return Response(
        generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
