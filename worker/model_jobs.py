"""Inference and evaluation jobs: claim, run with the trained model, record the results."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from shared import archives, dataset_store, storage
from shared.db import session_scope
from shared.models import Dataset, Job, Status
from shared.services import jobs as job_service
from worker import context

log = logging.getLogger("digits.worker.models")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class _Progress:
    """Throttled progress updates and abort checks for a model job."""

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.last = 0.0

    def __call__(self, fraction: float) -> bool:
        """Record progress; True when the job was aborted."""
        now = time.monotonic()
        if now - self.last < 0.5:
            return False
        self.last = now
        ctx = context.get()
        with session_scope(ctx.sessions) as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(progress=round(min(fraction, 0.99), 4))
            )
            aborted = session.scalar(select(Job.abort_requested).where(Job.id == self.job_id))
        return bool(aborted)


def _run(job_id: uuid.UUID, work: Any) -> None:
    ctx = context.get()
    with session_scope(ctx.sessions) as session:
        job = job_service.claim_job(session, job_id, ctx.name)
        if job is None:
            log.info("job=%s nothing to claim", job_id)
            return
        request = dict(job.request)
        dataset_dir = None
        if request.get("dataset_id"):
            dataset = session.get(Dataset, uuid.UUID(request["dataset_id"]))
            dataset_dir = storage.dataset_dir(ctx.settings, dataset.id) if dataset else None
    folder = storage.job_dir(ctx.settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    status, reason, values = Status.DONE, None, {}
    try:
        values = work(request, folder, dataset_dir, _Progress(job_id)) or {}
    except _Aborted:
        status, reason = Status.ABORTED, "aborted by user"
    except (ValueError, OSError, archives.UnsafeArchive) as exc:
        status, reason = Status.ERROR, str(exc)
        log.warning("job=%s failed: %s", job_id, exc)
    except Exception as exc:
        status, reason = Status.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        log.exception("job=%s crashed", job_id)
    with session_scope(ctx.sessions) as session:
        job_service.finish_job(session, job_id, status, reason=reason, values=values)


class _Aborted(Exception):
    pass


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def run_inference(job_id: uuid.UUID) -> None:
    """Classify every uploaded image (and archive member); results as JSON lines."""

    def work(
        request: dict[str, Any], folder: Path, _dataset: Path | None, progress: _Progress
    ) -> dict[str, Any]:
        from worker.training import inference

        ctx = context.get()
        model = inference.load_checkpoint(Path(request["checkpoint_path"]), "cpu")
        sources: list[tuple[str, Path]] = []
        inputs = folder / "inputs"
        if inputs.is_dir():
            sources += [(p.name.split("-", 1)[-1], p) for p in _images_in(inputs)]
        archive = folder / "input.archive"
        if archive.exists():
            extracted = folder / "extracted"
            storage.remove_tree(extracted)
            extracted.mkdir()
            archives.extract_archive(archive, extracted)
            sources += [(str(p.relative_to(extracted)), p) for p in _images_in(extracted)]
        if not sources:
            raise ValueError("no images to classify")
        out = folder / "results.jsonl"
        k = int(request.get("top_k", 5))
        done = 0
        with open(out, "w") as fh:
            for start in range(0, len(sources), 256):
                chunk = sources[start : start + 256]
                arrays, names, failed = [], [], []
                for name, path in chunk:
                    try:
                        arrays.append(
                            inference.prepare_image(
                                path.read_bytes(),
                                name,
                                width=model.width,
                                height=model.height,
                                channels=model.channels,
                                resize_mode=request["resize_mode"],
                                max_pixels=ctx.settings.max_image_pixels,
                            )
                        )
                        names.append(name)
                    except inference.InferenceInputError as exc:
                        failed.append({"filename": name, "top": [], "error": str(exc)})
                if arrays:
                    probs = model.predict(np.stack(arrays))
                    for name, top in zip(
                        names, inference.top_k(probs, model.classes, k), strict=True
                    ):
                        fh.write(json.dumps({"filename": name, "top": top}) + "\n")
                for item in failed:
                    fh.write(json.dumps(item) + "\n")
                done += len(chunk)
                if progress(done / len(sources)):
                    raise _Aborted
        storage.remove_tree(folder / "extracted")
        return {
            "last": {"inference.images": {"value": float(len(sources)), "step": 0, "epoch": 0.0}}
        }

    _run(job_id, work)


def run_evaluation(job_id: uuid.UUID) -> None:
    """Accuracy, confusion matrix, precision/recall and top-N images of a model on labelled data."""

    def work(
        request: dict[str, Any], folder: Path, dataset_dir: Path | None, progress: _Progress
    ) -> dict[str, Any]:
        from worker.training import inference

        model = inference.load_checkpoint(Path(request["checkpoint_path"]), "cpu")
        split = request.get("split", "val")
        dataset_id = request.get("dataset_id")
        if dataset_dir is None:
            dataset_dir = _import_archive(folder, model, request["resize_mode"])
            split = "train"
        reader = dataset_store.open_split(dataset_dir, split)
        data_classes = dataset_store.read_classes(dataset_dir)
        unknown = [c for c in data_classes if c not in model.classes]
        if unknown:
            raise ValueError(f"the data has classes the model does not know: {unknown[:5]}")
        mapping = np.array([model.classes.index(c) for c in data_classes], dtype=np.int64)
        labels = mapping[np.asarray(reader.labels, dtype=np.int64)]
        n = len(labels)
        probs = np.zeros((n, len(model.classes)), dtype=np.float32)
        for start in range(0, n, 512):
            idx = np.arange(start, min(n, start + 512))
            probs[idx] = model.predict(reader.images(idx))
            if progress((start + len(idx)) / max(n, 1)):
                raise _Aborted
        result = summarize(probs, labels, model.classes, int(request.get("top_n", 9)))
        base = f"/api/v1/datasets/{dataset_id}/samples/{split}/" if dataset_id else None
        for items in result["top_images"].values():
            for item in items:
                item["image_url"] = f"{base}{item['index']}" if base else None
        result.update(checkpoint=request["checkpoint"], dataset_id=dataset_id, split=split)
        (folder / "evaluation.json").write_text(json.dumps(result))
        point = {"step": 0, "epoch": 0.0}
        return {
            "last": {
                "eval.top1": {"value": result["top1"], **point},
                "eval.top5": {"value": result["top5"], **point},
            }
        }

    _run(job_id, work)


def _import_archive(folder: Path, model: Any, resize_mode: str) -> Path:
    """Import an uploaded labelled archive with the model's input geometry."""
    from worker.datasets.importer import ImportOptions, Source, import_dataset

    src = folder / "extracted"
    storage.remove_tree(src)
    src.mkdir()
    archives.extract_archive(folder / "input.archive", src)
    out = folder / "eval-data"
    storage.remove_tree(out)
    import_dataset(
        Source(kind="folder", root=src),
        ImportOptions(
            width=model.width,
            height=model.height,
            channels=model.channels,
            resize_mode=resize_mode,
            val_pct=0,
            test_pct=0,
            min_per_class=1,
            encoding="raw",
        ),
        out,
    )
    storage.remove_tree(src)
    return out


def summarize(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], top_n: int
) -> dict[str, Any]:
    """Top-1/top-5, the confusion matrix, per-class precision and recall, top-N per class."""
    n, c = probs.shape
    pred = probs.argmax(axis=1)
    k = min(5, c)
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = []
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        predicted = int(confusion[:, i].sum())
        support = int(confusion[i].sum())
        per_class.append(
            {
                "label": name,
                "support": support,
                "precision": tp / predicted if predicted else 0.0,
                "recall": tp / support if support else 0.0,
            }
        )
    top_images: dict[str, list[dict[str, Any]]] = {}
    for i, name in enumerate(classes):
        order = np.argsort(-probs[:, i], kind="stable")[:top_n]
        top_images[name] = [
            {
                "index": int(j),
                "probability": float(probs[j, i]),
                "true_label": classes[int(labels[j])],
            }
            for j in order
        ]
    return {
        "images": int(n),
        "top1": float((pred == labels).mean()) if n else 0.0,
        "top5": float((topk == labels[:, None]).any(axis=1).mean()) if n else 0.0,
        "classes": classes,
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "top_images": top_images,
    }
