"""Celery tasks: each names its work; `worker.lifecycle.run` claims, leases and finishes it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import shared_task

from shared import artifacts
from shared.archives import UnsafeArchive
from shared.models import Dataset, Job, Status
from shared.queue import EVALUATE, EXPLAIN, IMPORT_DATASET, INFER, TRAIN
from shared.schemas.datasets import DatasetOptions
from shared.schemas.work import IMPORT_SOURCE
from worker import context, lifecycle, trials
from worker.datasets.importer import DatasetImportError, ImportAborted

log = logging.getLogger("digits.worker")


def _import(running: lifecycle.Running) -> lifecycle.Outcome:
    """Import a dataset into its folder; a failure leaves nothing of it behind."""
    from worker.datasets.job import run_import

    ctx = context.get()
    options = DatasetOptions.model_validate(running.row.options)
    source = IMPORT_SOURCE.validate_python(running.row.source)
    try:
        result = run_import(
            ctx.settings,
            running.id,
            options,
            source,
            progress=running.progress,
            should_abort=running.should_stop,
        )
    except ImportAborted:
        return lifecycle.Outcome(Status.ABORTED, "aborted by user")
    except (DatasetImportError, UnsafeArchive, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        log.warning("dataset=%s import failed: %s", running.id, reason)
        return lifecycle.Outcome(Status.ERROR, reason)
    except OSError as exc:
        log.warning("dataset=%s import failed: %s", running.id, exc)
        return lifecycle.Outcome(
            Status.ERROR,
            f"the import could not read or write a file: {exc.strerror or type(exc).__name__}",
        )
    values: dict[str, Any] = {
        "classes": result.classes,
        "counts": result.counts,
        "encoding": result.encoding,
        "num_images": result.num_images,
        "skipped": result.skipped,
        "skipped_samples": result.skipped_samples,
        "dropped_classes": result.dropped_classes,
        "split_images": result.split_images,
        "annotation_format": result.annotation_format,
        "size_bytes": result.size_bytes,
        "import_seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 1),
    }
    log.info(
        "dataset=%s import done images=%d skipped=%d seconds=%.2f ips=%.0f",
        running.id,
        result.num_images,
        result.skipped,
        result.seconds,
        result.images_per_second,
    )
    return lifecycle.Outcome(Status.DONE, values=values)


@shared_task(name=IMPORT_DATASET, ignore_result=True)
def import_dataset(dataset_id: str) -> None:
    """Import one dataset; a duplicate delivery finds nothing to claim and returns."""
    ds_id = uuid.UUID(dataset_id)
    outcome = lifecycle.run(Dataset, ds_id, _import)
    if outcome is not None and outcome.status != Status.DONE and not outcome.lost:
        # aborted or failed: its files must not outlive it (a lost lease leaves them to the
        # worker that holds it now)
        artifacts.remove_dataset(context.get().settings, ds_id)


@shared_task(name=TRAIN, ignore_result=True)
def train(job_id: str) -> None:
    """Train one job in a fresh child process; a duplicate delivery trains nothing."""
    from worker.runner import train_job

    outcome = lifecycle.run(Job, uuid.UUID(job_id), train_job)
    if outcome is not None and not outcome.lost and outcome.status.is_final:
        trials.after(uuid.UUID(job_id))  # a study's trial: tell it, ask for the next


@shared_task(name=INFER, ignore_result=True)
def infer(job_id: str) -> None:
    """Classify a batch of images as a job."""
    from worker.model_jobs import run_inference

    lifecycle.run(Job, uuid.UUID(job_id), run_inference)


@shared_task(name=EVALUATE, ignore_result=True)
def evaluate(job_id: str) -> None:
    """Evaluate a trained model on labelled data as a job."""
    from worker.model_jobs import run_evaluation

    lifecycle.run(Job, uuid.UUID(job_id), run_evaluation)


@shared_task(name=EXPLAIN, ignore_result=True)
def explain(job_id: str) -> None:
    """Explain a batch of images (heat maps) as a job."""
    from worker.model_jobs import run_explanations

    lifecycle.run(Job, uuid.UUID(job_id), run_explanations)
