"""Benchmark: a tuning study run by the service against a plain Optuna loop, in one run.

The same study both ways: LeNet on the digits at 28x28 (the very arrays the service imported),
the same search space, N trials, TPE with the same seed, the same ASHA pruner reporting
validation top-1 each epoch. The service runs it as queued training jobs on W training workers
(two trials at once with W=2); the baseline is `study.optimize` with W threads over a
hand-written PyTorch trainer (no checkpoints, no metrics database, no queue). Printed: wall
time and best value side by side, trials pruned and epochs trained on each side ("ratio" is
the service's wall time over the loop's).

Usage: python -m bench.tune_bench [--quick] [--trials N] [--epochs E] [--workers W]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit
from bench.stack import BenchStack

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
}


def service_study(bench: BenchStack, dataset: dict[str, Any], args: argparse.Namespace) -> dict:
    """The study through the API; returns its figures."""
    with bench.stack.client() as client:
        t0 = time.monotonic()
        resp = client.post(
            "/studies",
            json={
                "name": "bench",
                "dataset_id": dataset["id"],
                "network": "lenet",
                "hyperparameters": {"epochs": args.epochs, "seed": 1},
                "search_space": SPACE,
                "sampler": {"type": "tpe", "seed": 1},
                "pruner": {"type": "asha", "min_epochs": 1, "reduction_factor": 3},
                "max_trials": args.trials,
                "max_concurrent": args.workers,
            },
        )
        resp.raise_for_status()
        study_id = resp.json()["id"]
        while True:
            study = client.get(f"/studies/{study_id}").json()
            if study["finished_at"]:
                break
            time.sleep(0.5)
        return {
            "seconds": time.monotonic() - t0,
            "best": study["best_value"],
            "pruned": study["counts"]["pruned"],
            "complete": study["counts"]["complete"],
            "epochs": study["epochs_used"],
            "status": study["status"],
        }


def _arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from shared import dataset_store as store

    reader = store.open_split(folder, split)
    images = np.asarray(reader._raw)  # raw uint8 (HWC) at 28x28: what the service trains on
    return images, np.asarray(reader.labels)


def plain_study(arrays: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
    """The same study as a plain Optuna loop over a hand-written trainer."""
    import optuna
    import torch
    import torch.nn.functional as F

    from worker.training.models import build_model

    train_x, train_y, val_x, val_y = (arrays[k] for k in ("tx", "ty", "vx", "vy"))
    mean = train_x.astype(np.float32).mean(axis=0)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x.astype(np.float32) - mean) / 255.0).permute(0, 3, 1, 2)

    tx, ty = tensor(train_x), torch.from_numpy(train_y).long()
    vx, vy = tensor(val_x), torch.from_numpy(val_y).long()
    epochs_trained = [0]

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-3, 0.3, log=True)
        momentum = trial.suggest_float("momentum", 0.5, 0.99)
        batch = trial.suggest_categorical("batch_size", [32, 64, 128])
        torch.manual_seed(1)
        model = build_model({"kind": "standard", "name": "lenet"}, 10, 1, 28, 28)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=lr / 100)
        steps = math.ceil(len(tx) / batch) * args.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: 0.1 ** math.floor(100 * s / steps / 33),  # DIGITS's step policy
        )
        best = 0.0
        for epoch in range(args.epochs):
            model.train()
            for idx in torch.randperm(len(tx)).split(batch):
                loss = F.cross_entropy(model(tx[idx]), ty[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            with torch.inference_mode():
                accuracy = float((model(vx).argmax(1) == vy).float().mean())
            epochs_trained[0] += 1
            best = max(best, accuracy if math.isfinite(float(loss)) else 0.0)
            trial.report(accuracy, epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=1, constant_liar=True),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        )
        t0 = time.monotonic()
        study.optimize(objective, n_trials=args.trials, n_jobs=args.workers)
    seconds = time.monotonic() - t0
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return {
        "seconds": seconds,
        "best": max(t.value for t in complete) if complete else None,
        "pruned": states.count("PRUNED"),
        "complete": len(complete),
        "epochs": epochs_trained[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.workers = 2, 1, 1
    # smoke: 20 digits a class (200, not 1,797): both studies train on the same arrays anyway
    per_class = 20 if args.quick else None
    with BenchStack(train_workers=args.workers) as bench:
        dataset = bench.digits_dataset(28, max_per_class=per_class)
        folder = Path(bench.stack.env["DIGITS_DATA_DIR"]) / "datasets" / dataset["id"]
        (tx, ty), (vx, vy) = _arrays(folder, "train"), _arrays(folder, "val")
        arrays = {"tx": tx.copy(), "ty": ty.copy(), "vx": vx.copy(), "vy": vy.copy()}
        service = service_study(bench, dataset, args)
    plain = plain_study(arrays, args)  # after the stack stopped: the machine is the loop's
    emit(
        {
            "benchmark": "tune_study",
            "trials": args.trials,
            "epochs_per_trial": args.epochs,
            "workers": args.workers,
            "seconds": round(service["seconds"], 1),
            "best": service["best"],
            "pruned": service["pruned"],
            "epochs": service["epochs"],
            "status": service["status"],
            "baseline": "plain Optuna loop (same sampler, pruner, space, data; W threads)",
            "baseline_seconds": round(plain["seconds"], 1),
            "baseline_best": plain["best"],
            "baseline_pruned": plain["pruned"],
            "baseline_epochs": plain["epochs"],
            "ratio": round(service["seconds"] / plain["seconds"], 2),
        }
    )


if __name__ == "__main__":
    main()
