"""Celery tasks: thin wrappers that claim a row, run the work, and record the outcome."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from celery import shared_task
from sqlalchemy import select, update

from shared.archives import UnsafeArchive
from shared.db import session_scope, utcnow
from shared.models import Dataset, Status
from shared.queue import EVALUATE, IMPORT_DATASET, INFER, TRAIN
from shared.services.states import claim, finish
from worker import context
from worker.datasets.importer import DatasetImportError, ImportAborted

log = logging.getLogger("digits.worker")


@shared_task(name=IMPORT_DATASET, ignore_result=True)
def import_dataset(dataset_id: str) -> None:
    """Import one dataset; a duplicate delivery finds nothing to claim and returns."""
    ctx = context.get()
    ds_id = uuid.UUID(dataset_id)
    with session_scope(ctx.sessions) as session:
        dataset = claim(session, Dataset, ds_id, ctx.name)
        if dataset is None:
            log.info("dataset=%s nothing to claim (duplicate delivery or gone)", ds_id)
            return
        options, source = dict(dataset.options), dict(dataset.source)
    log.info("dataset=%s import started worker=%s", ds_id, ctx.name)

    last = {"progress": 0.0, "check": 0.0}

    def progress(fraction: float) -> None:
        now = time.monotonic()
        if now - last["progress"] < 0.5 and fraction < 1.0:
            return
        last["progress"] = now
        with session_scope(ctx.sessions) as s:
            s.execute(
                update(Dataset)
                .where(Dataset.id == ds_id, Dataset.status == Status.RUNNING.value)
                .values(progress=round(min(fraction, 0.99), 4))
            )

    def should_abort() -> bool:
        now = time.monotonic()
        if now - last["check"] < 0.5:
            return False
        last["check"] = now
        with session_scope(ctx.sessions) as s:
            status = s.scalar(select(Dataset.status).where(Dataset.id == ds_id))
        return status != Status.RUNNING.value

    from worker.datasets.job import run_import

    lease = _DatasetLease(ds_id, ctx.settings.lease_timeout / 4)
    try:
        result = run_import(
            ctx.settings, ds_id, options, source, progress=progress, should_abort=should_abort
        )
    except ImportAborted:
        lease.stop()
        log.info("dataset=%s import aborted", ds_id)
        return
    except (DatasetImportError, UnsafeArchive, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        log.warning("dataset=%s import failed: %s", ds_id, reason)
        _fail(ds_id, reason)
        return
    except Exception as exc:
        log.exception("dataset=%s import crashed", ds_id)
        _fail(ds_id, f"internal error during import: {type(exc).__name__}: {exc}")
        return
    finally:
        lease.stop()

    with session_scope(ctx.sessions) as session:
        done = finish(
            session,
            Dataset,
            ds_id,
            Status.DONE,
            values={
                "classes": result.classes,
                "counts": result.counts,
                "encoding": result.encoding,
                "num_images": result.num_images,
                "skipped": result.skipped,
                "skipped_samples": result.skipped_samples,
                "dropped_classes": result.dropped_classes,
                "size_bytes": result.size_bytes,
                "import_seconds": round(result.seconds, 3),
                "images_per_second": round(result.images_per_second, 1),
            },
        )
    if not done:
        # aborted or deleted while finishing: its files must not outlive it
        from shared import storage

        storage.remove_tree(storage.dataset_dir(ctx.settings, ds_id))
        log.info("dataset=%s finished after abort; files removed", ds_id)
        return
    log.info(
        "dataset=%s import done images=%d skipped=%d seconds=%.2f ips=%.0f",
        ds_id,
        result.num_images,
        result.skipped,
        result.seconds,
        result.images_per_second,
    )


class _DatasetLease:
    """Renews a running import's lease (its updated_at) so the reaper leaves it alone."""

    def __init__(self, ds_id: uuid.UUID, interval: float) -> None:
        self.ds_id = ds_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        ctx = context.get()
        while not self._stop.wait(interval):
            try:
                with session_scope(ctx.sessions) as s:
                    s.execute(
                        update(Dataset)
                        .where(Dataset.id == self.ds_id, Dataset.status == Status.RUNNING.value)
                        .values(updated_at=utcnow())
                    )
            except Exception as exc:
                log.warning("dataset=%s lease renewal failed: %s", self.ds_id, exc)

    def stop(self) -> None:
        self._stop.set()


def _fail(ds_id: uuid.UUID, reason: str) -> None:
    ctx = context.get()
    with session_scope(ctx.sessions) as session:
        finish(session, Dataset, ds_id, Status.ERROR, reason=reason[:2000])


@shared_task(name=TRAIN, ignore_result=True)
def train(job_id: str) -> None:
    """Train one job in a fresh child process; a duplicate delivery trains nothing."""
    from worker.runner import run_job

    run_job(uuid.UUID(job_id))


@shared_task(name=INFER, ignore_result=True)
def infer(job_id: str) -> None:
    """Classify a batch of images as a job."""
    from worker.model_jobs import run_inference

    run_inference(uuid.UUID(job_id))


@shared_task(name=EVALUATE, ignore_result=True)
def evaluate(job_id: str) -> None:
    """Evaluate a trained model on labelled data as a job."""
    from worker.model_jobs import run_evaluation

    run_evaluation(uuid.UUID(job_id))
