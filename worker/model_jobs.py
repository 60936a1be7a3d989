"""Inference and evaluation jobs: the work itself; `worker.lifecycle` claims, leases, finishes."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from shared import archives, artifacts, dataset_store, images, storage
from shared.db import session_scope
from shared.models import Checkpoint, Status
from worker import context, lifecycle

log = logging.getLogger("digits.worker.models")


def _checkpoint_path(running: lifecycle.Running) -> Path:
    """The source job's checkpoint file, looked up now (requests never carry server paths)."""
    ctx = context.get()
    request = running.row.request
    with session_scope(ctx.sessions) as session:
        row = session.scalar(
            select(Checkpoint).where(
                Checkpoint.job_id == uuid.UUID(request["source_job_id"]),
                Checkpoint.name == request["checkpoint"],
            )
        )
        ref = row.path if row is not None else None
    store = artifacts.get_store(ctx.settings)
    try:
        if ref is None:
            raise FileNotFoundError
        return store.fetch(ref)  # with a bucket, this host's cached copy
    except (FileNotFoundError, artifacts.InvalidKey):
        raise ModelJobError(
            f"the checkpoint {request['checkpoint']!r} of job {request['source_job_id']} "
            "is gone (was the job deleted?)"
        ) from None


def _inputs(job_id: uuid.UUID) -> Path:
    """The job's folder here, holding what the API stored for it (with a bucket, fetched)."""
    ctx = context.get()
    folder = storage.job_dir(ctx.settings, job_id)
    store = artifacts.get_store(ctx.settings)
    if not store.local:
        storage.remove_tree(folder)
        store.fetch_tree(artifacts.job_prefix(job_id), folder)
    return folder


def _store_results(job_id: uuid.UUID, folder: Path, names: list[str]) -> None:
    """Put the result files where the API reads them (already there in the data folder)."""
    store = artifacts.get_store(context.get().settings)
    if not store.local:
        for name in names:
            store.put_file(f"{artifacts.job_prefix(job_id)}/{name}", folder / name)
        storage.remove_tree(folder)


class ModelJobError(lifecycle.WorkError, ValueError):
    """A model job that cannot run; the message is for the person who asked for it."""


def _progress(running: lifecycle.Running, done: int, total: int) -> None:
    running.progress(done / max(total, 1))
    running.check()


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in images.IMAGE_EXTENSIONS
        and not p.name.startswith(".")
    )


def run_inference(running: lifecycle.Running) -> lifecycle.Outcome:
    """Classify every uploaded image (and archive member); results as JSON lines, one per input."""
    from worker.training import inference

    ctx = context.get()
    request = running.row.request
    folder = _inputs(running.id)
    dense = request.get("task", "classification") != "classification"
    if not dense:
        model = inference.load_checkpoint(_checkpoint_path(running), "cpu")
    running.check()
    sources: list[tuple[str, Path]] = []
    inputs = folder / "inputs"
    if inputs.is_dir():
        sources += [(p.name.split("-", 1)[-1], p) for p in _images_in(inputs)]
    archive = folder / "input.archive"
    if archive.exists():
        extracted = folder / "extracted"
        storage.remove_tree(extracted)
        extracted.mkdir()
        try:
            archives.extract_archive(
                archive, extracted, archives.ArchiveLimits.from_settings(ctx.settings)
            )
        except archives.UnsafeArchive as exc:
            return lifecycle.Outcome(Status.ERROR, f"archive: {exc}")
        sources += [(str(p.relative_to(extracted)), p) for p in _images_in(extracted)]
    running.check()
    if not sources:
        return lifecycle.Outcome(
            Status.ERROR, "no images to predict" if dense else "no images to classify"
        )
    if dense:
        return _predict_dense(running, folder, sources)
    k = int(request.get("top_k", 5))
    tmp = folder / ".results.jsonl.tmp"
    failed = 0
    with open(tmp, "w") as fh:
        for start in range(0, len(sources), 256):
            chunk = sources[start : start + 256]
            arrays, names, errors = [], [], []
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
                    errors.append({"filename": name, "top": [], "error": str(exc)})
                except Exception as exc:  # one image that cannot be converted fails alone
                    log.warning("job=%s %s: %s", running.id, name, type(exc).__name__)
                    errors.append(
                        {"filename": name, "top": [], "error": f"{name}: cannot be converted"}
                    )
            if arrays:
                probs = model.predict(np.stack(arrays))
                for name, top in zip(names, inference.top_k(probs, model.classes, k), strict=True):
                    fh.write(json.dumps({"filename": name, "top": top}) + "\n")
            for item in errors:
                fh.write(json.dumps(item) + "\n")
            failed += len(errors)
            _progress(running, start + len(chunk), len(sources))
    os.replace(tmp, folder / "results.jsonl")
    storage.remove_tree(folder / "extracted")
    _store_results(running.id, folder, ["results.jsonl"])
    point = {"step": 0, "epoch": 0.0}
    return lifecycle.Outcome(
        Status.DONE,
        values={
            "last": {
                "inference.images": {"value": float(len(sources)), **point},
                "inference.failed": {"value": float(failed), **point},
            }
        },
    )


DENSE_CHUNK = 32  # images per forward pass of a prediction job


def _predict_dense(
    running: lifecycle.Running, folder: Path, sources: list[tuple[str, Path]]
) -> lifecycle.Outcome:
    """Boxes or masks for every image, as JSON lines (POST /predict's rows, without the
    drawings; masks as PNGs inline)."""
    from worker.training import predict
    from worker.training.inference import ModelFileError

    ctx = context.get()
    request = running.row.request
    try:
        model = predict.load(_checkpoint_path(running), "cpu")
    except ModelFileError as exc:
        return lifecycle.Outcome(Status.ERROR, str(exc))

    def describe(name: str, exc: Exception) -> str:
        if isinstance(exc, images.ImageError):
            return f"{name}: {exc.message}"
        log.warning("job=%s %s: %s", running.id, name, type(exc).__name__)
        return f"{name}: cannot be converted"

    threshold = request.get("threshold")  # detection's; segmentation has none
    tmp = folder / ".results.jsonl.tmp"
    failed = found = 0
    with open(tmp, "w") as fh:
        for start in range(0, len(sources), DENSE_CHUNK):
            chunk = sources[start : start + DENSE_CHUNK]
            rows = predict.prediction_rows(
                model,
                [(name, path.read_bytes()) for name, path in chunk],
                resize_mode=request["resize_mode"],
                threshold=0.5 if threshold is None else float(threshold),
                max_pixels=ctx.settings.max_image_pixels,
                describe=describe,
                drawn=False,
            )
            for row in rows:
                fh.write(json.dumps(row) + "\n")
                failed += "error" in row
                found += len(row.get("boxes") or ())
            _progress(running, start + len(chunk), len(sources))
    os.replace(tmp, folder / "results.jsonl")
    storage.remove_tree(folder / "extracted")
    _store_results(running.id, folder, ["results.jsonl"])
    point = {"step": 0, "epoch": 0.0}
    values = {
        "inference.images": {"value": float(len(sources)), **point},
        "inference.failed": {"value": float(failed), **point},
    }
    if model.task == "detection":
        values["inference.boxes"] = {"value": float(found), **point}
    return lifecycle.Outcome(Status.DONE, values={"last": values})


def run_evaluation(running: lifecycle.Running) -> lifecycle.Outcome:
    """Accuracy, confusion matrix, precision/recall and top-N images of a model on labelled data."""
    from worker.training import inference

    ctx = context.get()
    request = running.row.request
    folder = _inputs(running.id)
    folder.mkdir(parents=True, exist_ok=True)
    if request.get("task", "classification") != "classification":
        return _evaluate_dense(running, folder)
    model = inference.load_checkpoint(_checkpoint_path(running), "cpu")
    running.check()
    split = request.get("split", "val")
    dataset_id = request.get("dataset_id")
    if dataset_id:
        dataset_dir = artifacts.local_dataset(ctx.settings, uuid.UUID(dataset_id))
    else:
        from worker.datasets.importer import ImportAborted

        try:
            dataset_dir = _import_archive(folder, model, request["resize_mode"], running)
        except archives.UnsafeArchive as exc:
            return lifecycle.Outcome(Status.ERROR, f"archive: {exc}")
        except ImportAborted:
            raise lifecycle.Stopped from None
        split = "train"
    reader = dataset_store.open_split(dataset_dir, split)
    data_classes = dataset_store.read_classes(dataset_dir)
    unknown = [c for c in data_classes if c not in model.classes]
    if unknown:
        return lifecycle.Outcome(
            Status.ERROR, f"the data has classes the model does not know: {unknown[:5]}"
        )
    shape = tuple(int(v) for v in reader.images(np.arange(min(1, len(reader)))).shape[1:])
    if len(reader) and shape != (model.height, model.width, model.channels):
        return lifecycle.Outcome(
            Status.ERROR,
            f"the data's images are {shape[1]}x{shape[0]}x{shape[2]}; the model takes "
            f"{model.width}x{model.height}x{model.channels}",
        )
    mapping = np.array([model.classes.index(c) for c in data_classes], dtype=np.int64)
    labels = mapping[np.asarray(reader.labels, dtype=np.int64)]
    n = len(labels)
    probs = np.zeros((n, len(model.classes)), dtype=np.float32)
    for start in range(0, n, 512):
        idx = np.arange(start, min(n, start + 512))
        probs[idx] = model.predict(reader.images(idx))
        _progress(running, start + len(idx), n)
    result = summarize(probs, labels, model.classes, int(request.get("top_n", 9)))
    base = f"/api/v1/datasets/{dataset_id}/samples/{split}/" if dataset_id else None
    for items in result["top_images"].values():
        for item in items:
            item["image_url"] = f"{base}{item['index']}" if base else None
    result.update(checkpoint=request["checkpoint"], dataset_id=dataset_id, split=split)
    storage.atomic_write(folder / "evaluation.json", json.dumps(result).encode())
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    cells = {
        "true": labels.tolist(),
        "pred": pred.tolist(),
        "probability": [round(float(p), 6) for p in probs[np.arange(n), pred]] if n else [],
        "image_base": base,
    }
    storage.atomic_write(folder / "predictions.json", json.dumps(cells).encode())
    _store_results(running.id, folder, ["evaluation.json", "predictions.json"])
    point = {"step": 0, "epoch": 0.0}
    return lifecycle.Outcome(
        Status.DONE,
        values={
            "last": {
                "eval.top1": {"value": result["top1"], **point},
                "eval.top5": {"value": result["top5"], **point},
            }
        },
    )


def _evaluate_dense(running: lifecycle.Running, folder: Path) -> lifecycle.Outcome:
    """mAP and per-class AP with PR curves, or IoU per class, on a stored split."""
    import torch

    from worker.training import dense, predict
    from worker.training.inference import ModelFileError

    ctx = context.get()
    request = running.row.request
    try:
        model = predict.load(_checkpoint_path(running), "cpu")
    except ModelFileError as exc:
        return lifecycle.Outcome(Status.ERROR, str(exc))
    running.check()
    split = request.get("split", "val")
    dataset_id = request.get("dataset_id")
    skipped: dict[str, Any] = {}
    if dataset_id:
        dataset_dir = artifacts.local_dataset(ctx.settings, uuid.UUID(dataset_id))
    else:
        from worker.datasets.importer import DatasetImportError, ImportAborted

        try:
            dataset_dir, skipped = _import_annotated_archive(
                folder, model, request["resize_mode"], running
            )
        except (archives.UnsafeArchive, DatasetImportError) as exc:
            return lifecycle.Outcome(Status.ERROR, f"archive: {exc}")
        except ImportAborted:
            raise lifecycle.Stopped from None
        finally:
            storage.remove_tree(folder / "extracted")
        split = "train"
    if dataset_store.read_classes(dataset_dir) != model.classes:
        storage.remove_tree(folder / "eval-data")
        return lifecycle.Outcome(Status.ERROR, "the data's classes are not the model's")
    reader = dataset_store.open_split(dataset_dir, split)
    if reader.shape != (model.height, model.width, model.channels):
        return lifecycle.Outcome(Status.ERROR, "the data's images are not the model's size")
    result = dense.evaluate_split(
        model.model,
        model.task,
        model.classes,
        reader,
        torch.device("cpu"),
        progress=lambda done, total: _progress(running, done, total),
    )
    result.update(
        task=model.task,
        checkpoint=request["checkpoint"],
        dataset_id=dataset_id,
        split=split,
        classes=model.classes,
        **skipped,
    )
    storage.remove_tree(folder / "eval-data")
    storage.atomic_write(folder / "evaluation.json", json.dumps(result).encode())
    _store_results(running.id, folder, ["evaluation.json"])
    point = {"step": 0, "epoch": 0.0}
    return lifecycle.Outcome(
        Status.DONE,
        values={"last": {f"eval.{k}": {"value": v, **point} for k, v in result["metrics"].items()}},
    )


def _extracted(folder: Path) -> tuple[Path, Path]:
    """The uploaded labelled archive, extracted (within the archive limits), and where its
    import goes."""
    src = folder / "extracted"
    storage.remove_tree(src)
    src.mkdir()
    archives.extract_archive(
        folder / "input.archive", src, archives.ArchiveLimits.from_settings(context.get().settings)
    )
    out = folder / "eval-data"
    storage.remove_tree(out)
    return src, out


def _import_annotated_archive(
    folder: Path, model: Any, resize_mode: str, running: lifecycle.Running
) -> tuple[Path, dict[str, Any]]:
    """Import an uploaded detection or segmentation archive (any format the dataset import
    reads) with the model's geometry and classes; what it skipped (unknown classes among it)."""
    from worker.datasets.annotated import AnnotatedOptions, import_annotated
    from worker.datasets.importer import ImportOptions, Source

    ctx = context.get()
    src, out = _extracted(folder)
    result = import_annotated(
        Source(kind="folder", root=src),
        ImportOptions(
            width=model.width,
            height=model.height,
            channels=model.channels,
            resize_mode=resize_mode,
            val_pct=0,
            test_pct=0,
            encoding="raw",
            max_image_pixels=ctx.settings.max_image_pixels,
        ),
        AnnotatedOptions(task=model.task, format="auto", classes=list(model.classes)),
        out,
        should_abort=running.should_stop,
    )
    storage.remove_tree(src)
    return out, {"skipped": result.skipped, "skipped_samples": result.skipped_samples[:20]}


def _import_archive(folder: Path, model: Any, resize_mode: str, running: lifecycle.Running) -> Path:
    """Import an uploaded labelled archive with the model's input geometry."""
    from worker.datasets.importer import ImportOptions, Source, import_dataset

    ctx = context.get()
    src, out = _extracted(folder)
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
            max_image_pixels=ctx.settings.max_image_pixels,
        ),
        out,
        should_abort=running.should_stop,
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


def _uploaded_images(folder: Path) -> list[tuple[str, Path]]:
    """The uploaded images of a model job and its archive's, as (name, path); the archive is
    extracted into `extracted` (raises UnsafeArchive)."""
    ctx = context.get()
    sources: list[tuple[str, Path]] = []
    if (folder / "inputs").is_dir():
        sources += [(p.name.split("-", 1)[-1], p) for p in _images_in(folder / "inputs")]
    archive = folder / "input.archive"
    if archive.exists():
        extracted = folder / "extracted"
        storage.remove_tree(extracted)
        extracted.mkdir()
        archives.extract_archive(
            archive, extracted, archives.ArchiveLimits.from_settings(ctx.settings)
        )
        sources += [(str(p.relative_to(extracted)), p) for p in _images_in(extracted)]
    return sources


def run_explanations(running: lifecycle.Running) -> lifecycle.Outcome:
    """Explain every uploaded image (and archive member), one at a time.

    `explanations.jsonl` holds one ImageExplanation per input (the PNG in base64), and
    `results.jsonl` its predictions, so the job's results read like an inference job's.
    """
    from worker.training import explain, inference

    ctx = context.get()
    request = running.row.request
    folder = _inputs(running.id)
    model = inference.load_checkpoint(_checkpoint_path(running), "cpu")
    explain.freeze(model)
    running.check()
    try:
        sources = _uploaded_images(folder)
    except archives.UnsafeArchive as exc:
        return lifecycle.Outcome(Status.ERROR, f"archive: {exc}")
    running.check()
    if not sources:
        return lifecycle.Outcome(Status.ERROR, "no images to explain")
    method = str(request.get("method", "gradcam"))
    raw = bool(request.get("raw", False))
    try:
        options = explain.ExplainOptions(
            method=method,  # type: ignore[arg-type]  # checked by the API
            target=explain.target_index(request.get("target"), model.classes),
            top_k=int(request.get("top_k", 5)),
            steps=int(request.get("steps") or explain.IG_STEPS),
            window=request.get("window"),
        )
        if method in explain.CAM_METHODS:
            explain.find_target_layer(model)  # a network without a feature map fails at once
    except explain.ExplainError as exc:
        return lifecycle.Outcome(Status.ERROR, str(exc))
    failed = 0
    tmp_explained, tmp_results = folder / ".explanations.jsonl.tmp", folder / ".results.jsonl.tmp"
    with open(tmp_explained, "w") as explained, open(tmp_results, "w") as results:
        for done, (name, path) in enumerate(sources, 1):
            item: dict[str, Any]
            try:
                image = inference.prepare_image(
                    path.read_bytes(),
                    name,
                    width=model.width,
                    height=model.height,
                    channels=model.channels,
                    resize_mode=request["resize_mode"],
                    max_pixels=ctx.settings.max_image_pixels,
                )
                item = explain.as_json(name, explain.explain_image(model, image, options), raw)
            except inference.InferenceInputError as exc:
                item = explain.failed_json(name, method, str(exc))
            except Exception as exc:  # one image that cannot be converted fails alone
                log.warning("job=%s %s: %s", running.id, name, type(exc).__name__)
                item = explain.failed_json(name, method, f"{name}: cannot be explained")
            failed += item["error"] is not None
            explained.write(json.dumps(item) + "\n")
            row = {"filename": name, "top": item["top"]}
            if item["error"] is not None:
                row["error"] = item["error"]
            results.write(json.dumps(row) + "\n")
            if done % 16 == 0 or done == len(sources):
                _progress(running, done, len(sources))
    os.replace(tmp_explained, folder / "explanations.jsonl")
    os.replace(tmp_results, folder / "results.jsonl")
    storage.remove_tree(folder / "extracted")
    _store_results(running.id, folder, ["explanations.jsonl", "results.jsonl"])
    point = {"step": 0, "epoch": 0.0}
    return lifecycle.Outcome(
        Status.DONE,
        values={
            "last": {
                "explain.images": {"value": float(len(sources)), **point},
                "explain.failed": {"value": float(failed), **point},
            }
        },
    )
