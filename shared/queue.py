"""The Celery app and task names. The API sends tasks by name; it never imports worker code."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue  # where they live; `kombu` re-exports them lazily

from shared.settings import Settings

CPU_QUEUE = "cpu"
TRAIN_QUEUE = "train"

IMPORT_DATASET = "digits.import_dataset"
TRAIN = "digits.train"
INFER = "digits.infer"
EVALUATE = "digits.evaluate"
EXPLAIN = "digits.explain"

TASK_ROUTES = {
    IMPORT_DATASET: {"queue": CPU_QUEUE},
    TRAIN: {"queue": TRAIN_QUEUE},
    INFER: {"queue": CPU_QUEUE},
    EVALUATE: {"queue": CPU_QUEUE},
    EXPLAIN: {"queue": CPU_QUEUE},
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


@dataclass(frozen=True)
class Message:
    """One "go look at row X" for the broker: a task name, the row's id, and its queue."""

    task: str
    id: uuid.UUID
    queue: str

    @property
    def subject(self) -> str:
        """Which table the id is in."""
        return "dataset" if self.task == IMPORT_DATASET else "job"


def train_queue(devices: int) -> str:
    """The shared queue of jobs needing `devices` devices (1: plain `train`)."""
    return TRAIN_QUEUE if devices <= 1 else f"{TRAIN_QUEUE}.x{devices}"


def training_message(job_id: uuid.UUID, worker: str | None = None, devices: int = 1) -> Message:
    """Training goes to the shared queue for its device count, or to one worker's own queue."""
    return Message(TRAIN, job_id, worker_queue(worker) if worker else train_queue(devices))


def cpu_message(task: str, row_id: uuid.UUID) -> Message:
    """Imports, inference, evaluation and explanations go to the cpu queue."""
    return Message(task, row_id, str(TASK_ROUTES[task]["queue"]))


def send(app: Celery, message: Message) -> None:
    """Put one message on the broker (raises when the broker is unreachable)."""
    app.send_task(
        message.task, args=[str(message.id)], queue=message.queue, routing_key=message.queue
    )


# Remove queued messages whose only argument is one of ARGV[2..] from the lists in KEYS, in one
# pass over each list (kombu's Redis transport keeps a queue as a list of JSON envelopes whose
# headers carry `argsrepr`). ARGV[1] is unused; ids are looked up in a table, so N messages and
# M ids cost O(N + M).
_DROP_SCRIPT = """
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local removed = 0
for _, key in ipairs(KEYS) do
  local items = redis.call('LRANGE', key, 0, -1)
  for _, item in ipairs(items) do
    local id = string.match(item, [["argsrepr": "%['([%w%-]+)'%]"]])
    if id and wanted[id] then
      removed = removed + redis.call('LREM', key, 1, item)
    end
  end
end
return removed
"""


def drop(app: Celery, settings: Settings, messages: list[Message]) -> int:
    """Remove still-queued messages of aborted work, so workers do not wade through them.

    Best effort: a message already taken by a worker finds nothing to claim. Returns how many
    were removed.
    """
    if not messages:
        return 0
    ids = sorted({str(m.id) for m in messages})
    queues = sorted({m.queue for m in messages})
    if settings.is_embedded_broker:
        return _drop_files(settings, queues, ids)
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=3)
    try:
        keys = [settings.broker_prefix + q for q in queues]
        return int(client.eval(_DROP_SCRIPT, len(keys), *keys, "", *ids))
    finally:
        client.close()


def _drop_files(settings: Settings, queues: list[str], ids: list[str]) -> int:
    """The filesystem transport keeps one file per message: `<time>_<uuid>.<queue>.msg`."""
    folder = settings.broker_dir / "out"
    wanted = set(ids)
    removed = 0
    for queue in queues:
        for path in folder.glob(f"*.{queue}.msg"):
            try:
                envelope = json.loads(path.read_text())
                argsrepr = envelope.get("headers", {}).get("argsrepr", "")
            except (OSError, ValueError, AttributeError):
                continue
            if argsrepr.strip("[]'\"") in wanted:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed
