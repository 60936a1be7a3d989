"""A full disk while checkpointing: the previous checkpoint stays intact and the job fails
with a reason a person can act on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import digits_arrays, write_class_folders


class _Quiet:
    def metrics(self, *_a: Any) -> None: ...
    def progress(self, *_a: Any) -> None: ...
    def checkpoint_saved(self, *_a: Any) -> None: ...
    def should_stop(self) -> bool:
        return False

    def log(self, *_a: Any) -> None: ...


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 9 MiB tmpfs: room for the first checkpoints of LeNet, not for the next ones."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_fails_with_the_reason(
    small_disk: Path, tmp_path: Path
) -> None:
    from shared.schemas.jobs import Hyperparameters
    from worker.datasets.importer import ImportOptions, Source, import_dataset
    from worker.training import checkpoint as ckpt
    from worker.training.engine import TrainingError, TrainSpec, train

    images, labels = digits_arrays()
    root = write_class_folders(tmp_path / "digits", images[:400], labels[:400])
    dataset = tmp_path / "dataset"
    import_dataset(
        Source(kind="folder", root=root),
        ImportOptions(width=28, height=28, channels=1, val_pct=25, seed=1, workers=1),
        dataset,
    )
    spec = TrainSpec(
        dataset_dir=dataset,
        network={"kind": "standard", "name": "lenet"},
        hyper=Hyperparameters(epochs=10, batch_size=32, seed=1),
        out_dir=small_disk / "job",
        device="cpu",
    )
    with pytest.raises(TrainingError, match="no space left on the disk") as failure:
        train(spec, _Quiet())
    assert "previous checkpoint is intact" in str(failure.value)
    last = small_disk / "job" / "checkpoints" / "last.pt"
    data = ckpt.load(last)  # loads: not a half-written file
    assert data["step"] > 0
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
