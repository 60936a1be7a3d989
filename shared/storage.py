"""Where things live on disk, and how files are written safely."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from shared.settings import Settings


def datasets_root(settings: Settings) -> Path:
    """Folder holding one sub-folder per dataset."""
    return settings.resolved_data_dir / "datasets"


def dataset_dir(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """The folder of one dataset: its stored splits, mean image and source uploads."""
    return datasets_root(settings) / str(dataset_id)


def dataset_uploads_dir(settings: Settings, dataset_id: uuid.UUID) -> Path:
    """Uploaded archives and list files of a dataset, removed once it is imported."""
    return dataset_dir(settings, dataset_id) / "uploads"


def uploads_tmp_dir(settings: Settings) -> Path:
    """Scratch space for uploads being received."""
    path = settings.resolved_data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_under(path: Path, roots: list[Path]) -> bool:
    """True when the real path of `path` is inside one of the real paths of `roots`."""
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return True
    return False


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a part (temp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it, if it exists."""
    shutil.rmtree(path, ignore_errors=True)


def tree_size(path: Path) -> int:
    """Bytes used by the regular files under path."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def job_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    """The folder of one job: its log and checkpoints."""
    return settings.resolved_data_dir / "jobs" / str(job_id)


def pretrained_dir(settings: Settings, model_id: uuid.UUID) -> Path:
    """The folder of one pretrained model."""
    return settings.resolved_data_dir / "pretrained" / str(model_id)
