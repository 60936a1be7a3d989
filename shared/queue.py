"""The Celery app and task names. The API sends tasks by name; it never imports worker code."""

from __future__ import annotations

import re
import uuid
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from shared.settings import Settings

CPU_QUEUE = "cpu"
TRAIN_QUEUE = "train"

IMPORT_DATASET = "digits.import_dataset"
TRAIN = "digits.train"
INFER = "digits.infer"
EVALUATE = "digits.evaluate"

TASK_ROUTES = {
    IMPORT_DATASET: {"queue": CPU_QUEUE},
    TRAIN: {"queue": TRAIN_QUEUE},
    INFER: {"queue": CPU_QUEUE},
    EVALUATE: {"queue": CPU_QUEUE},
}


def worker_queue(worker_name: str) -> str:
    """The private queue of one worker, for jobs that ask for a specific GPU."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name)  # every transport accepts these
    return f"worker.{safe}"


def broker_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for these settings."""
    if settings.is_embedded_broker:
        folder = settings.broker_dir
        for sub in ("out", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
            "polling_interval": 0.2,
        }
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
    if settings.visibility_timeout < 3600:
        # a short visibility timeout (tests, chaos runs) only means something if the
        # transport sweeps for expired messages about as often
        options["unacked_restore_interval"] = max(1, settings.visibility_timeout // 2)
        options["unacked_restore_throttle"] = 1
    if settings.broker_prefix:
        options["global_keyprefix"] = settings.broker_prefix
    return settings.broker_url, options


def create_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app: JSON only, acks_late, prefetch 1, named queues."""
    url, transport_options = broker_settings(settings)
    app = Celery("digits", broker=url, include=include or [], set_as_current=True)
    exchange = Exchange("digits", type="direct")
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CPU_QUEUE,
        task_default_exchange="digits",
        task_queues=[
            Queue(CPU_QUEUE, exchange, routing_key=CPU_QUEUE),
            Queue(TRAIN_QUEUE, exchange, routing_key=TRAIN_QUEUE),
        ],
        task_routes=TASK_ROUTES,
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


def send_import(app: Celery, dataset_id: uuid.UUID) -> None:
    """Ask a cpu worker to import a dataset (the task carries only the id)."""
    app.send_task(IMPORT_DATASET, args=[str(dataset_id)], queue=CPU_QUEUE, routing_key=CPU_QUEUE)


def train_queue(devices: int) -> str:
    """The shared queue of jobs needing `devices` devices (1: plain `train`)."""
    return TRAIN_QUEUE if devices <= 1 else f"{TRAIN_QUEUE}.x{devices}"


def send_train(app: Celery, job_id: uuid.UUID, worker: str | None = None, devices: int = 1) -> None:
    """Queue training: the shared queue for its device count, or a worker's own queue."""
    target = worker_queue(worker) if worker else train_queue(devices)
    app.send_task(TRAIN, args=[str(job_id)], queue=target, routing_key=target)


def send_task(app: Celery, name: str, job_id: uuid.UUID) -> None:
    """Queue a model job (inference, evaluation) on its route's queue."""
    target = TASK_ROUTES[name]["queue"]
    app.send_task(name, args=[str(job_id)], queue=target, routing_key=target)
