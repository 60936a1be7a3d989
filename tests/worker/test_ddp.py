"""DistributedDataParallel on the CPU: two gloo processes train LeNet on digits like one does."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch.multiprocessing as mp

from tests.support import digits_arrays, write_class_folders


class _Recorder:
    """Keeps what rank 0 reports."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float, dict[str, float]]] = []

    def metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        self.points.append((step, epoch, dict(values)))

    def progress(self, *_args: Any) -> None:
        return None

    def checkpoint_saved(self, *_args: Any) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def log(self, *_args: Any) -> None:
        return None


HYPER = {
    "epochs": 8,
    "batch_size": 32,
    "learning_rate": 0.05,
    "lr_policy": "step",
    "lr_params": {"step_size": 50, "gamma": 0.1},
    "seed": 7,
}


def _spec(dataset: Path, out: Path, rank: int = 0, world: int = 1) -> Any:
    from shared.schemas.jobs import Hyperparameters
    from worker.training.engine import TrainSpec

    return TrainSpec(
        dataset_dir=dataset,
        network={"kind": "standard", "name": "lenet"},
        hyper=Hyperparameters(**HYPER),
        out_dir=out,
        device="cpu",
        rank=rank,
        world_size=world,
    )


def _rank(rank: int, world: int, port: int, dataset: str, out: str, results: Any) -> None:
    import torch
    import torch.distributed as dist

    from worker.training.engine import train

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    recorder = _Recorder()
    result = train(_spec(Path(dataset), Path(out), rank, world), recorder)
    if rank == 0:
        results.put({"points": recorder.points, "last": result.last, "steps": result.steps})
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.datasets.importer import ImportOptions, Source, import_dataset

    images, labels = digits_arrays()
    root = write_class_folders(tmp_path_factory.mktemp("ddp") / "digits", images, labels)
    out = tmp_path_factory.mktemp("ddp-ds")
    import_dataset(
        Source(kind="folder", root=root),
        ImportOptions(width=28, height=28, channels=1, val_pct=25, seed=1),
        out,
    )
    return out


def test_two_gloo_processes_reach_the_single_process_accuracy(
    dataset: Path, tmp_path: Path
) -> None:
    from worker.training.engine import train

    single = _Recorder()
    alone = train(_spec(dataset, tmp_path / "single"), single)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(r, 2, port, str(dataset), str(tmp_path / "ddp"), results))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    together = results.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert alone.last["val.accuracy"] >= 0.97
    assert together["last"]["val.accuracy"] >= 0.97
    assert together["steps"] == alone.steps

    # the same series, at the same steps
    def shape(points: list[tuple[int, float, dict[str, float]]]) -> list[tuple[int, tuple]]:
        return [(step, tuple(sorted(values))) for step, _epoch, values in points]

    assert shape(together["points"]) == shape(single.points)
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()
