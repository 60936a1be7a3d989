"""Runs one dataset import: resolve the sources, import, and publish the result atomically."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from shared import archives, artifacts, storage
from shared.schemas.datasets import DatasetOptions
from shared.schemas.work import ArchiveInput, FolderSource, PathInput, TextfileSource
from shared.settings import Settings
from worker.datasets.annotated import AnnotatedOptions, import_annotated
from worker.datasets.importer import ImportOptions, ImportResult, Source, import_dataset

log = logging.getLogger("digits.worker.import")

WORK_DIR = ".import"


def run_import(
    settings: Settings,
    dataset_id: uuid.UUID,
    options: DatasetOptions,
    source: FolderSource | TextfileSource,
    *,
    progress: Callable[[float], None] | None = None,
    should_abort: Callable[[], bool] | None = None,
) -> ImportResult:
    """Import a dataset into its folder; on any failure nothing of it is left but the folder.

    With a bucket for storage, the uploads come from it, and the result goes to it (files,
    then the manifest) and into this host's dataset cache; the folder here is scratch.
    """
    store = artifacts.get_store(settings)
    prefix = artifacts.dataset_prefix(dataset_id)
    root = storage.dataset_dir(settings, dataset_id)
    work = root / WORK_DIR
    storage.remove_tree(work)
    work.mkdir(parents=True)
    limits = archives.ArchiveLimits.from_settings(settings)
    try:
        if not store.local:
            store.fetch_tree(f"{prefix}/uploads", root / "uploads")
        train, val, test = _sources(root, work, source, limits)
        opts = import_options(options, settings)
        out = work / "out"
        if options.task == "classification":
            result = import_dataset(
                train, opts, out, val=val, test=test, progress=progress, should_abort=should_abort
            )
        else:
            extra = AnnotatedOptions(
                task=options.task,
                format=options.annotation_format,
                classes=options.class_names.split(",") if options.class_names else None,
            )
            result = import_annotated(
                train,
                opts,
                extra,
                out,
                val=val,
                test=test,
                progress=progress,
                should_abort=should_abort,
            )
        if store.local:
            for item in out.iterdir():
                os.replace(item, root / item.name)
        else:
            manifest = artifacts.publish_dataset(store, dataset_id, out)
            artifacts.adopt_dataset(settings, manifest, out)
            result.size_bytes = sum(int(f["size"]) for f in manifest["files"].values())
    except BaseException:
        _clear_outputs(root)
        raise
    finally:
        storage.remove_tree(work)
        storage.remove_tree(root / "uploads")
    if store.local:
        result.size_bytes = storage.tree_size(root)
    else:
        store.delete_prefix(f"{prefix}/uploads")
        storage.remove_tree(root)
    return result


def import_options(options: DatasetOptions, settings: Settings) -> ImportOptions:
    """The importer's options from the stored request and the service's limits."""
    return ImportOptions(
        width=options.image_width,
        height=options.image_height,
        channels=options.channels,
        resize_mode=options.resize_mode.value,
        val_pct=options.val_pct,
        test_pct=options.test_pct,
        min_per_class=options.min_per_class,
        max_per_class=options.max_per_class,
        encoding=options.encoding,
        seed=options.seed or 0,
        shuffle=options.shuffle,
        max_image_pixels=settings.max_image_pixels,
        workers=settings.import_workers,
    )


def _clear_outputs(root: Path) -> None:
    """Remove whatever an import may have published, leaving the folder empty."""
    if root.is_dir():
        for item in root.iterdir():
            if item.name not in ("uploads", WORK_DIR):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)


def _sources(
    root: Path,
    work: Path,
    source: FolderSource | TextfileSource,
    limits: archives.ArchiveLimits,
) -> tuple[Source, Source | None, Source | None]:
    """Turn the stored source description into local folders and list files."""

    def folder(item: ArchiveInput | PathInput, name: str) -> Path:
        if isinstance(item, ArchiveInput):
            dest = work / "src" / name
            dest.mkdir(parents=True)
            started = time.perf_counter()
            info = archives.extract_archive(root / item.file, dest, limits)
            log.info(
                "extracted %s archive: %d files in %.2fs",
                name,
                info.members,
                time.perf_counter() - started,
            )
            return dest
        return Path(item.path)

    if isinstance(source, FolderSource):
        train = Source(kind="folder", root=folder(source.train, "train"))
        val = Source(kind="folder", root=folder(source.val, "val")) if source.val else None
        test = Source(kind="folder", root=folder(source.test, "test")) if source.test else None
        return train, val, test

    images = folder(source.images, "images")
    labels_file = root / source.labels

    def listed(split: str) -> Source | None:
        item = getattr(source, split)
        if item is None:
            return None
        return Source(
            kind="textfile", root=images, list_file=root / item.file, labels_file=labels_file
        )

    listed_train = listed("train")
    assert listed_train is not None  # train is required by the textfile source
    return listed_train, listed("val"), listed("test")
